"""Soak: minutes of live load through the speed layer, with operator edits and the hourly batch.

    python -m bench.bench_soak [--minutes 15] [--rate 20000] [--trigger "1 second"] [--no-record]

A paced producer (its own process) sends `rate` events/s to a fresh topic, their event clock some
minutes behind the wall clock, so that an event hour closes a few minutes into the run (a backfill
replayed at a live pace). The speed layer runs in this process with its default configuration and
the processing-time trigger. Every minute an operator edits a user's quota through the operators'
page's store (audited, as the page does it). When the event hour closes, the hourly batch job runs
as the sensor would launch it: `dagster asset materialize` in its own process. A poller process reads
bytes_agg_antenna ten times a second for freshness. Recorded per minute: freshness p50/p99 (send ->
visible in bytes_agg_antenna), Kafka lag (topic end offsets minus the speed layer's applied offsets)
and the streaming process's RSS (driver + its Spark JVM); then the RSS slope, the batch run time,
and whether the lake, the three speed tables and the closed hour's four tables equal what was sent.

Not part of CI: it needs the stack (`antenna stack up`) and the machine to itself for the run.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import closing
from datetime import datetime
from pathlib import Path

import numpy as np
import psutil

from antenna_assets.hours import HOUR, partition_key, utc_from_epoch_seconds
from antenna_assets.jobs import hourly_batch_job
from antenna_assets.postgres import connect, transaction
from antenna_assets.serving.operators.schema import migrate_operators
from antenna_assets.serving.operators.store import get_user, update_user
from antenna_assets.serving.operators.validation import UserInput
from antenna_assets.serving.schema import (BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP, BYTES_AGG_APP_1H,
                                           BYTES_AGG_USER, BYTES_AGG_USER_1H)
from antenna_assets.settings import Settings, child_environment
from antenna_assets.sources.user_metadata import add_users
from antenna_assets.sources.users import APPS, antenna_id, synthetic_users, user_id
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, run_until_stopped
from antenna_assets_tests.truth import query, read_table
from bench.bench_speed_layer import (ANTENNAS, USERS, WINDOW_SECONDS, AntennaTablePoller, latencies, produce_paced,
                                     scratch_folder, scratch_topic, spark_session)
from bench.common import BackgroundLoop, fresh_database, record_run

SECTION = "## Soak"
SECTION_INTRO = (
    "`bench/bench_soak.py`: live load at a steady rate through the speed layer for many minutes, an operator\n"
    "edit every minute, the hourly batch when the event hour closes. Per-minute figures are listed in the\n"
    "row (minute: p50/p99 freshness s, Kafka lag messages, RSS GiB). Slopes are fitted after the first two\n"
    "minutes (warm-up); the JVM's live heap is read after a full GC once a minute (what a leak would grow). `exact` means the lake, the three speed tables and the closed hour's four tables\n"
    "equal what was sent.\n\n")
TABLE_HEADER = ("| date | machine | command | events | freshness p50 / p99 per minute (s) | Kafka lag per minute | "
                "RSS per minute (GiB) | RSS slope | batch | exact |\n|---|---|---|---|---|---|---|---|---|---|\n")
LEAD_IN_SECONDS = 90  # event time spent in the hour that closes during the run


def poll_freshness(url: str, sent_path: str, result_path: str, stop) -> None:
    """Child process: poll bytes_agg_antenna until `stop`, then write each event's latency (send order)."""
    with AntennaTablePoller(url) as poller:
        stop.wait()
        while not Path(sent_path).exists():
            time.sleep(0.5)
        time.sleep(5)  # the last events of the producer become visible
    np.save(result_path, latencies(Path(sent_path), poller.polls()))


class Minutely(BackgroundLoop):
    """Once a minute: an operator edit, the Kafka lag and the streaming process's RSS."""

    def __init__(self, spark, settings: Settings, url: str, topic: str, query_name: str, started: float):
        super().__init__("soak-minutely")
        self.spark, self.settings, self.url, self.topic = spark, settings, url, topic
        self.query_name, self.started = query_name, started
        self.lag: list[int] = []
        self.rss: list[float] = []  # GiB: the driver and its Spark JVM
        self.python_rss: list[float] = []  # MiB: the driver's Python process alone
        self.heap_live: list[float] = []  # MiB: the JVM heap in use right after a full GC (what a leak grows)
        self.heap_committed: list[float] = []  # MiB: the heap the JVM holds from the OS (grows up to its -Xmx)
        self.edits = 0

    def _run(self, stop: threading.Event) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": "bench-soak-lag"})
        me = psutil.Process(os.getpid())
        minute = 1
        while not stop.wait(max(0.0, self.started + 60 * minute - time.time())):
            self._edit(minute)
            partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            ends = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] for p in partitions}
            applied = dict(query(self.url, "SELECT kafka_partition, applied_until FROM streaming_offsets "
                                           "WHERE query = %s AND topic = %s", (self.query_name, self.topic)))
            self.lag.append(sum(end - applied.get(p, 0) for p, end in ends.items()))
            # This driver and its own Spark JVM (with descendants): not the batch run's JVM, a grandchild.
            jvms = [c for c in me.children() if c.name() == "java"]
            members = [me, *jvms, *(d for jvm in jvms for d in jvm.children(recursive=True))]
            self.rss.append(sum(p.memory_info().rss for p in members) / 2**30)
            self.python_rss.append(me.memory_info().rss / 2**20)
            runtime = self.spark._jvm.java.lang.Runtime.getRuntime()
            runtime.gc()  # a full collection once a minute (~0.1-0.3 s): what survives it is live
            self.heap_live.append((runtime.totalMemory() - runtime.freeMemory()) / 2**20)
            self.heap_committed.append(runtime.totalMemory() / 2**20)
            print(f"  minute {minute}: Kafka lag {self.lag[-1]:,}, RSS {self.rss[-1]:.2f} GiB (Python "
                  f"{self.python_rss[-1]:.0f} MiB; JVM heap live {self.heap_live[-1]:.0f} MiB of "
                  f"{self.heap_committed[-1]:.0f} committed)", flush=True)
            minute += 1
        consumer.close()

    def _edit(self, minute: int) -> None:
        """The operators' page's own write path: validated, locked, audited."""
        with closing(connect(self.url)) as conn:
            user = get_user(conn, user_id(1 + minute % 20))
            update_user(conn, "soak-operator", UserInput(user.id, user.name, user.email, user.quota + 1000))
        self.edits += 1


def run_hourly_batch(settings: Settings, url: str, lake_root: str, hour: datetime, dagster_home: str) -> float:
    """The hourly batch job for `hour`, in its own process as the sensor would launch it; its seconds."""
    env = child_environment(ANTENNA_POSTGRES_URL=url, ANTENNA_LAKE_ROOT=lake_root, DAGSTER_HOME=dagster_home,
                            ANTENNA_KAFKA_BOOTSTRAP=settings.kafka_bootstrap)
    selection = ",".join(key.to_user_string() for key in _job_assets())
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dagster", "asset", "materialize", "-m", "antenna_assets.definitions",
                           "--select", selection, "--partition", partition_key(hour)],
                          env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"the hourly batch failed for {hour:%Y-%m-%d %H:00}:\n{proc.stderr[-3000:]}")
    return seconds


def _job_assets():
    from antenna_assets.definitions import defs

    return sorted(defs.resolve_job_def(hourly_batch_job.name).asset_layer.executable_asset_keys)


def expected_totals(sent: dict, hour: datetime | None = None) -> dict[str, dict[tuple[str, datetime], int]]:
    """What was sent, summed per antenna / user id / app and 5-minute window (or per hour, within `hour`)."""
    event_time = sent["event_time"]
    if hour is None:
        start = event_time // WINDOW_SECONDS * WINDOW_SECONDS
        chosen = np.ones(len(event_time), dtype=bool)
    else:
        first = int((hour - datetime(1970, 1, 1)).total_seconds())
        chosen = (event_time >= first) & (event_time < first + 3600)
        start = np.full(len(event_time), first)
    keys = {"antenna": [antenna_id(n) for n in range(ANTENNAS)], "user": [user_id(n) for n in range(USERS + 1)],
            "app": list(APPS)}
    totals = {}
    for per, codes in (("antenna", sent["antenna"]), ("user", sent["user"]), ("app", sent["app"])):
        sums: dict[tuple[str, datetime], int] = defaultdict(int)
        frame = np.stack([codes[chosen], start[chosen], sent["bytes"][chosen]])
        pairs, inverse = np.unique(frame[:2], axis=1, return_inverse=True)
        per_pair = np.bincount(inverse.ravel(), weights=frame[2]).astype(np.int64)
        for (code, epoch), total in zip(pairs.T.tolist(), per_pair.tolist()):
            sums[(keys[per][code], utc_from_epoch_seconds(epoch))] += total
        totals[per] = dict(sums)
    return totals


def check_exact(spark, url: str, landing: str, sent: dict, closed_hour: datetime) -> list[str]:
    problems = []
    speed = expected_totals(sent)
    for table, per in ((BYTES_AGG_ANTENNA, "antenna"), (BYTES_AGG_USER, "user"), (BYTES_AGG_APP, "app")):
        if read_table(url, table) != speed[per]:
            problems.append(f"{table.name} differs from what was sent")
    landed = spark.read.parquet(landing).count()
    if landed != len(sent["event_time"]):
        problems.append(f"the lake holds {landed:,} events, {len(sent['event_time']):,} were sent")
    hourly = expected_totals(sent, closed_hour)
    if not hourly["antenna"]:
        problems.append(f"no event was sent in {closed_hour:%H:00}: the closed hour was not exercised")
    snapshot = query(url, "SELECT id, email, quota FROM user_metadata_hourly WHERE date = %s", (closed_hour,))
    emails = {user: email for user, email, _ in snapshot}
    quotas = {email: quota for _, email, quota in snapshot}
    per_email: dict[tuple[str, datetime], int] = defaultdict(int)
    for (user, hour), total in hourly["user"].items():
        per_email[(emails[user], hour)] += total
    for table, wanted in ((BYTES_AGG_ANTENNA_1H, hourly["antenna"]), (BYTES_AGG_USER_1H, dict(per_email)),
                          (BYTES_AGG_APP_1H, hourly["app"])):
        if {k: v for k, v in read_table(url, table).items() if k[1] == closed_hour} != wanted:
            problems.append(f"{table.name} differs from what was sent in {closed_hour:%H:00}")
    over = {email for (email, _), total in per_email.items() if total > quotas[email]}
    got_over = {row[0] for row in query(url, "SELECT email FROM users_over_quota_1h WHERE date = %s", (closed_hour,))}
    if got_over != over:
        problems.append(f"users_over_quota_1h: {len(got_over)} users, expected {len(over)} from the hour's quotas")
    return problems


def _slope(per_minute: list[float]) -> float:
    """Per-minute growth of a series, fitted after the first two minutes (warm-up)."""
    steady = per_minute[2:] if len(per_minute) > 3 else per_minute
    return float(np.polyfit(np.arange(len(steady)), steady, 1)[0]) if len(steady) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15, help="minutes of load (default 15)")
    parser.add_argument("--rate", type=float, default=20_000, help="events/s (default 20,000)")
    parser.add_argument("--trigger", default=SpeedLayerConfig.model_fields["trigger_interval"].default,
                        help="processing-time trigger interval (default: the speed layer's)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    spawn = multiprocessing.get_context("spawn")
    lasts_until_closed = LEAD_IN_SECONDS + settings.hour_close_grace_minutes * 60 + 65
    if args.minutes * 60 < lasts_until_closed:
        sys.exit(f"--minutes must leave the hour time to close: at least {lasts_until_closed / 60:.1f}")
    spark = spark_session()
    with scratch_topic(settings, "soak") as topic, fresh_database(settings) as url, scratch_folder() as folder, \
            tempfile.TemporaryDirectory(prefix="antenna-soak-dagster-") as dagster_home:
        with transaction(url) as conn:
            add_users(conn, synthetic_users(USERS))
            with conn.cursor() as cur:
                migrate_operators(cur)
        query_name = topic.replace("-", "_")
        lake_root = str(folder / "lake")
        layer = SpeedLayer(spark, SpeedLayerConfig(trigger_interval=args.trigger, query_name=query_name),
                           SpeedLayerTargets(settings.kafka_bootstrap, topic, f"{lake_root}/landing/devices",
                                             str(folder / "checkpoint"), url))
        sent_path, latency_path = folder / "sent.npz", folder / "latency.npy"
        stop_polling = spawn.Event()
        poller = spawn.Process(target=poll_freshness, args=(url, str(sent_path), str(latency_path), stop_polling),
                               name="soak-poller", daemon=True)
        # The event clock, set as the load starts (set-up takes a while): LEAD_IN_SECONDS before an hour
        # boundary, so that hour has events and closes once the grace has passed.
        wall_start = time.time()
        boundary = wall_start // 3600 * 3600
        closed_hour = utc_from_epoch_seconds(int(boundary)) - HOUR
        batch_due = wall_start + lasts_until_closed - 60
        producer = spawn.Process(target=produce_paced, name="soak-producer", daemon=True,
                                 args=(settings.kafka_bootstrap, topic, args.rate, args.minutes * 60,
                                       str(folder / "sent"), wall_start - boundary + LEAD_IN_SECONDS))
        batch_seconds: list[float] = []
        batch_failure: list[BaseException] = []

        def hourly_batch() -> None:
            try:
                time.sleep(max(0.0, batch_due - time.time()))
                print(f"  event hour {closed_hour:%H:00} closed: running the hourly batch", flush=True)
                batch_seconds.append(run_hourly_batch(settings, url, lake_root, closed_hour, dagster_home))
                print(f"  hourly batch for {closed_hour:%H:00}: {batch_seconds[-1]:.1f} s", flush=True)
            except BaseException as exc:  # noqa: BLE001 - a thread's SystemExit would vanish silently
                batch_failure.append(exc)

        batch = threading.Thread(target=hourly_batch, name="soak-batch", daemon=True)
        stop_at: list[float] = []

        def should_stop() -> bool:
            if producer.exitcode is not None and not stop_at:
                stop_at.append(time.monotonic() + 10)
            return bool(stop_at) and time.monotonic() >= stop_at[0]

        poller.start()
        producer.start()
        batch.start()
        with Minutely(spark, settings, url, topic, query_name, time.time()) as minutely:
            run_until_stopped(layer, should_stop=should_stop, poll_seconds=0.5)
        batch.join()
        if batch_failure:
            sys.exit(f"the hourly batch failed: {batch_failure[0]}")
        stop_polling.set()
        poller.join()
        if producer.exitcode != 0 or poller.exitcode != 0:
            sys.exit(f"a load process failed (producer {producer.exitcode}, poller {poller.exitcode})")
        sent = dict(np.load(sent_path))
        latency = np.load(latency_path)
        problems = check_exact(spark, url, f"{lake_root}/landing/devices", sent, closed_hour)
    spark.stop()

    minute_of = ((sent["sent_at"] - sent["sent_at"][0]) // 60).astype(int)
    per_minute = []
    for minute in range(minute_of.max() + 1):
        seen = latency[(minute_of == minute) & np.isfinite(latency)]
        per_minute.append((np.percentile(seen, 50), np.percentile(seen, 99)) if len(seen) else (np.inf, np.inf))
    unseen = int(np.count_nonzero(~np.isfinite(latency)))
    slope = _slope([gib * 1024 for gib in minutely.rss])
    heap = (f"JVM live heap after GC {minutely.heap_live[0]:.0f} -> {minutely.heap_live[-1]:.0f} MiB "
            f"({_slope(minutely.heap_live):+.1f} MiB/min), committed {minutely.heap_committed[0]:.0f} -> "
            f"{minutely.heap_committed[-1]:.0f} MiB; driver Python {minutely.python_rss[0]:.0f} -> "
            f"{minutely.python_rss[-1]:.0f} MiB ({_slope(minutely.python_rss):+.1f} MiB/min)")
    print(f"soak: {len(latency):,} events at {args.rate:,.0f}/s, {minutely.edits} operator edits, {unseen} never seen; "
          f"RSS slope {slope:+.1f} MiB/min; {heap}; batch {', '.join(f'{s:.1f} s' for s in batch_seconds)}; "
          f"{'exact' if not problems else 'WRONG: ' + '; '.join(problems)}", flush=True)
    command = f"python -m bench.bench_soak --minutes {args.minutes:g} --rate {args.rate:g} --trigger '{args.trigger}'"
    record_run(SECTION, SECTION_INTRO, TABLE_HEADER, command, [
        f"{len(latency):,} ({unseen} unseen)",
        ", ".join(f"{m + 1}: {p50:.1f}/{p99:.1f}" for m, (p50, p99) in enumerate(per_minute)),
        ", ".join(f"{m + 1}: {lag:,}" for m, lag in enumerate(minutely.lag)),
        ", ".join(f"{m + 1}: {rss:.2f}" for m, rss in enumerate(minutely.rss)),
        f"{slope:+.1f} MiB/min; {heap}",
        f"{closed_hour:%H:00} in {', '.join(f'{s:.0f} s' for s in batch_seconds)}",
        "yes" if not problems else "NO: " + "; ".join(problems)], dry_run=args.no_record)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
