"""Helpers shared by the benchmarks: the machine, BENCHMARKS.md sections, topics, databases, timing, memory."""

from __future__ import annotations

import os
import re
import statistics
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

from antenna_assets.settings import Settings
from antenna_assets.stack.kafka import ensure_topic
from antenna_assets_tests.databases import temporary_serving_database

BENCHMARKS = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
# Generated inputs, cached between runs (git-ignored).
DATA_DIR = Path(__file__).resolve().parent / "data"


def machine() -> str:
    meminfo = Path("/proc/meminfo").read_text()
    ram_kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
    return f"{os.cpu_count()} cores, {ram_kib / 1024 / 1024:.0f} GiB"


def record(section: str, intro: str, table_header: str, row: str) -> None:
    """Add the row under the last row of `section`'s table in BENCHMARKS.md (the section created with
    `intro` and `table_header` if missing), leaving other sections alone."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n\nMeasured on the machines named in each row.\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{intro}{table_header}"
    start = text.index(section)
    following = text.find("\n## ", start + len(section))
    end = len(text) if following < 0 else following + 1
    lines = text[start:end].rstrip("\n").split("\n")
    # Under the section's last row, above any notes written below its table.
    last_row = max(i for i, line in enumerate(lines) if line.startswith("|"))
    body = "\n".join([*lines[:last_row + 1], row, *lines[last_row + 1:]]) + "\n"
    BENCHMARKS.write_text(text[:start] + body + ("\n" + text[end:] if following >= 0 else ""))
    print(f"recorded in {BENCHMARKS}")


def record_run(section: str, intro: str, table_header: str, command: str, cells: list[str], dry_run: bool) -> None:
    """A result row (date, machine, command, then `cells`) added to `section`; printed only when `dry_run`."""
    row = f"| {date.today()} | {machine()} | `{command}` | " + " | ".join(cells) + " |"
    if dry_run:
        print(row)
    else:
        record(section, intro, table_header, row)


def cluster_settings(settings: Settings) -> str:
    """The settings that put a benchmark's Spark session on a standalone cluster, as the recorded command's
    prefix (bench_speed_layer.spark_session); empty for local[2]."""
    if not settings.spark_master.startswith("spark://"):
        return ""
    master = (f"ANTENNA_SPARK_WORKERS={settings.spark_workers}" if settings.spark_workers
              else f"ANTENNA_SPARK_MASTER={settings.spark_master}")
    return f"{master} ANTENNA_SPARK_APP_CORES={settings.spark_app_cores} "


def admin(settings: Settings):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": settings.kafka_bootstrap})


def fresh_topic(settings: Settings, purpose: str) -> str:
    name = f"bench-{purpose}-{uuid.uuid4().hex[:8]}"
    ensure_topic(settings.replace(topic=name))
    return name


def delete_topic(settings: Settings, topic: str) -> None:
    client = admin(settings)  # kept alive until the deletion is confirmed
    for future in client.delete_topics([topic]).values():
        future.result(60)


def fresh_database(settings: Settings):
    """A new serving database for one benchmark run; dropped afterwards."""
    return temporary_serving_database(settings, "bench")


@dataclass(frozen=True)
class Timings:
    """Seconds of repeated runs of the same work."""

    seconds: tuple[float, ...]

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def __str__(self) -> str:
        return f"best {self.best:.2f} s, median {self.median:.2f} s of {len(self.seconds)}"


def time_warm(work: Callable[[], object], repeats: int = 3) -> tuple[Timings, object]:
    """Run `work` once to warm caches and JIT, then `repeats` timed times; returns timings and the last result."""
    return time_interleaved({"work": work}, repeats)["work"]


def time_interleaved(works: dict[str, Callable[[], object]], repeats: int = 3) -> dict[str, tuple[Timings, object]]:
    """Each work once to warm up, then `repeats` rounds of each once, in turn (every other round backwards):
    timings and the last result per name. Ratios of works timed in the same rounds hold while the machine's
    speed drifts; one after the other, a shared host's slow minutes fell on one side (BENCHMARKS.md, Batch
    layer: the floor timed in a slow spell made the job 1.54x it, the next two runs said 1.94x and 2.14x)."""
    results = {name: work() for name, work in works.items()}
    seconds: dict[str, list[float]] = {name: [] for name in works}
    for round_number in range(repeats):
        for name in (list(works) if round_number % 2 == 0 else list(reversed(works))):
            started = time.perf_counter()
            results[name] = works[name]()
            seconds[name].append(time.perf_counter() - started)
    return {name: (Timings(tuple(seconds[name])), results[name]) for name in works}


class BackgroundLoop:
    """A daemon thread running `_run(stop)` between `with` entry and exit; `_run` returns once `stop` is set."""

    def __init__(self, name: str):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(self._stop,), name=name, daemon=True)

    def _run(self, stop: threading.Event) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass(frozen=True)
class RssPeak:
    """Peak RSS in bytes of a Python driver and its Spark JVM together, and of each alone (their peaks need
    not coincide). `own` is the benchmark's process, which also holds the benchmark's bookkeeping."""

    total: int
    jvm: int
    own: int

    def __str__(self) -> str:
        return f"{self.total / 2**30:.2f} GiB (JVM {self.jvm / 2**30:.2f}, Python {self.own / 2**30:.2f})"


class PeakMemory(BackgroundLoop):
    """Peak RSS of this process and chosen children with their descendants (a Python driver and its Spark JVM),
    sampled in a thread: `peak` once the `with` block is left."""

    def __init__(self, include: Callable[[object], bool] = lambda child: True, interval_seconds: float = 0.2):
        """Samples this process plus those of its children that `include` accepts (a psutil.Process), with
        their descendants, except a descendant still running its ancestor's executable: that is the child
        between fork and exec, and Java starts its commands (Hadoop's `chmod` of every file it writes,
        among others) with posix_spawn, whose child shares the JVM's memory until it execs. Counted, each
        such sample added the whole JVM's RSS a second time (BENCHMARKS.md, Memory). By executable, not
        name: the child is named after the JVM thread that spawned it ("Executor task l...")."""
        import psutil

        super().__init__("peak-memory")
        self._root = psutil.Process(os.getpid())
        self._include = include
        self._interval = interval_seconds
        self.peak = RssPeak(0, 0, 0)

    def _run(self, stop: threading.Event) -> None:
        import psutil

        while not stop.is_set():
            own = self._root.memory_info().rss
            children = 0
            for process in self._members()[1:]:
                try:
                    children += process.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = RssPeak(max(self.peak.total, own + children), max(self.peak.jvm, children),
                                max(self.peak.own, own))
            stop.wait(self._interval)

    def _members(self) -> list:
        import psutil

        members = [self._root]
        for child in self._root.children():
            try:
                if self._include(child):
                    program = _executable(child)
                    members += [child, *(p for p in child.children(recursive=True)
                                         if _executable(p) not in (program, None))]
            except psutil.NoSuchProcess:
                pass
        return members


def _executable(process) -> str | None:
    import psutil

    try:
        return process.exe()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
