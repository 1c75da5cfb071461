"""A burst of large garbage through `antenna stream --available-now` (issue 28, case 3): time and memory.

    python -m bench.bench_dead_letters [--records N] [--record-bytes B] [--no-record]

Into a fresh topic (one partition of the local broker): 100 valid messages, N records of B bytes that
are not UTF-8, 100 valid messages. Then `antenna stream --available-now` in a process of its own, as a
user runs it, on a fresh serving database and lake folder, at the product's default driver heap. Wall
time from its start to its exit; peak RSS of that process and its descendants (the CLI's Python and the
Spark JVM), sampled every 200 ms. Checked after a run that exits 0: N dead letters whose raw_length
add up to N x B, and the 200 valid messages counted. Topic, database and lake folder are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from confluent_kafka import Producer

from antenna_assets.settings import Settings
from antenna_assets_tests.truth import query
from bench.common import PeakMemory, delete_topic, fresh_database, fresh_topic, record_run

VALID_AROUND = 100  # valid messages before the burst, and as many after
SECTION = "## Dead letters: a burst of large garbage"
SECTION_INTRO = (
    "Issue 28, case 3: 100 valid messages, then N records of B bytes that are not UTF-8, then 100 valid\n"
    "messages, in one partition of a fresh topic on the local broker; `antenna stream --available-now` in a\n"
    "process of its own on a fresh serving database and lake folder, Spark `local[2]`, the default driver heap\n"
    "(`ANTENNA_SPARK_DRIVER_MEMORY`: 1536m until 2026-12-06, 1280m since). Wall time: the process's start to\n"
    "its exit (Spark's start included). Peak RSS: that process and its descendants (the CLI's Python and the\n"
    "Spark JVM), sampled every 200 ms. Checked when it exits 0: N dead letters, their `raw_length` summing to\n"
    "N x B, 200 good messages.\n\n"
)
TABLE_HEADER = "| date | machine | command | records x bytes | exit | wall time | peak RSS | result |\n|---|---|---|---|---|---|---|---|\n"


def produce_burst(settings: Settings, topic: str, records: int, record_bytes: int) -> None:
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "message.max.bytes": record_bytes + 100_000,
                         "linger.ms": 20})
    now = int(time.time())
    valid = [json.dumps({"timestamp": now, "id": f"user-{n % 7}", "antenna_id": "a", "bytes": n, "app": "SKYPE"})
             .encode() for n in range(VALID_AROUND)]
    for value in valid:
        producer.produce(topic, value, partition=0)
    for n in range(records):
        producer.produce(topic, b"\xff" + random.Random(n).randbytes(record_bytes - 1), partition=0)
        producer.poll(0)
        if n % 100 == 99:
            producer.flush(60)  # the producer's queue holds ~1 GB by default
    for value in valid:
        producer.produce(topic, value, partition=0)
    if producer.flush(60):
        raise RuntimeError("the producer could not deliver the burst")


def run_stream(settings: Settings, topic: str, postgres_url: str, lake: Path) -> tuple[int, float, int, str]:
    """`antenna stream --available-now`: exit code, wall seconds, peak RSS (bytes), and the first line of its
    stderr naming an OutOfMemoryError (what this burst did to the driver), else the last one."""
    env = {**os.environ, "ANTENNA_TOPIC": topic, "ANTENNA_POSTGRES_URL": postgres_url, "ANTENNA_LAKE_ROOT": str(lake)}
    env.pop("ANTENNA_CHECKPOINT_ROOT", None)
    started = time.perf_counter()
    stream = subprocess.Popen([sys.executable, "-m", "antenna_assets.cli", "stream", "--available-now"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    with PeakMemory(include=lambda process: process.pid == stream.pid) as memory:
        _, stderr = stream.communicate(timeout=1800)
    seconds = time.perf_counter() - started
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if stream.returncode:
        print("\n".join(lines[-20:]), file=sys.stderr)
    error = next((line for line in lines if "OutOfMemoryError" in line), lines[-1] if lines else "")
    return stream.returncode, seconds, memory.peak.jvm, error


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dead_letters", description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=600, help="large records in the burst (default 600)")
    parser.add_argument("--record-bytes", type=int, default=900_000, help="bytes of each (default 900,000)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    topic = fresh_topic(settings, "dead-letters")
    lake = Path(tempfile.mkdtemp(prefix="antenna-bench-dead-letters-"))
    try:
        produce_burst(settings, topic, args.records, args.record_bytes)
        with fresh_database(settings) as url:
            code, seconds, peak, error = run_stream(settings, topic, url, lake)
            if code == 0:
                [(dead, raw_bytes)] = query(url, "SELECT count(*), sum(raw_length) FROM dead_letter")
                [(good,)] = query(url, "SELECT sum(good_messages) FROM streaming_batches")
                correct = (dead, raw_bytes, good) == (args.records, args.records * args.record_bytes, 2 * VALID_AROUND)
                result = f"{dead} dead letters, {good} good messages" + ("" if correct else " (WRONG)")
            else:
                result = error[:300].replace("|", "/")
    finally:
        delete_topic(settings, topic)
        shutil.rmtree(lake, ignore_errors=True)
    print(f"exit {code}, {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB: {result}", flush=True)
    command = "python -m bench.bench_dead_letters" + (
        f" --records {args.records} --record-bytes {args.record_bytes}" if (args.records, args.record_bytes) != (600, 900_000) else "")
    record_run(SECTION, SECTION_INTRO, TABLE_HEADER, command,
               [f"{args.records} x {args.record_bytes:,}", str(code), f"{seconds:.1f} s", f"{peak / 2**30:.2f} GiB", result],
               args.no_record)
    return 0 if code == 0 and "WRONG" not in result else 1


if __name__ == "__main__":
    sys.exit(main())
