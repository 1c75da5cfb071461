"""Simulator throughput against Kafka's own producer benchmark, on the same running broker.

    python -m bench.bench_simulator [--messages N | --quick] [--processes P] [--no-record]

Runs the simulator as a backfill (contract shape, then 20,000 users / 500 antennas with one and
with P processes), then `org.apache.kafka.tools.ProducerPerformance` with the simulator's average
record size, each into a fresh topic deleted afterwards. Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import uuid
from dataclasses import dataclass

from antenna_assets.settings import Settings
from antenna_assets.sources.simulator import SimulatorConfig, simulate
from antenna_assets.sources.simulator.producer import PRODUCER_TUNING
from antenna_assets.stack import jars
from bench.common import delete_topic, fresh_topic, record_run
SECTION = "## Simulator"
TABLE_HEADER = (
    "| date | machine | command | messages | contract shape msg/s | scale, 1 process msg/s | scale, P processes msg/s "
    "| ProducerPerformance msg/s (default / tuned props) | ratio |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)
SECTION_INTRO = (
    "Backfill mode into a fresh 3-partition topic on the local single-node broker (same machine).\n"
    "Simulator msg/s: first message sent to last acknowledged. ProducerPerformance (Kafka's Java producer\n"
    "benchmark) sends records of the simulator's average JSON size; once with default producer properties,\n"
    "once with the simulator's (linger, batch size, lz4). Ratio: scale run with P processes / the faster\n"
    "ProducerPerformance run. Targets: >= 300,000 msg/s and ratio >= 0.5. Caveat: ProducerPerformance's\n"
    "payload is random letters, which lz4 barely shrinks, while the simulator's JSON repeats ids and field\n"
    "names and compresses several times over, so the simulator's batches are cheaper for the broker.\n\n"
)
# Java equivalents of the simulator's librdkafka tuning, so both sides batch and compress alike.
JAVA_TUNED_PROPS = (f"linger.ms={PRODUCER_TUNING['linger.ms']}", f"batch.size={PRODUCER_TUNING['batch.size']}",
                    f"compression.type={PRODUCER_TUNING['compression.type']}", "buffer.memory=268435456")


@dataclass
class SimulatorRun:
    label: str
    processes: int
    rate: float
    average_size: float


def average_message_size(settings: Settings, topic: str, sample: int = 5000) -> float:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    sizes: list[int] = []
    try:
        for _ in range(30):
            sizes += [len(m.value()) for m in consumer.consume(sample, timeout=1.0) if m.error() is None]
            if len(sizes) >= sample:
                break
    finally:
        consumer.close()
    return sum(sizes) / len(sizes)


def run_simulator(settings: Settings, label: str, messages: int, processes: int, users: int, antennas: int) -> SimulatorRun:
    topic = fresh_topic(settings, "sim")
    try:
        # Enough hours of one-minute ticks to hold the message count.
        hours = -(-messages // users) / 60 + 1
        result = simulate(SimulatorConfig(settings.kafka_bootstrap, topic, users=users, antennas=antennas,
                                          backfill_hours=hours, count=messages, seed=1, processes=processes,
                                          progress=False))
        size = average_message_size(settings, topic)
    finally:
        delete_topic(settings, topic)
    run = SimulatorRun(label, processes, result.rate, size)
    print(f"simulator {label}, {processes} process(es): {result.produced:,} messages in {result.seconds:.2f} s = "
          f"{result.rate:,.0f} msg/s (average message {size:.0f} bytes)", flush=True)
    return run


def run_producer_performance(settings: Settings, messages: int, record_size: int, props: tuple[str, ...]) -> float:
    classpath = f"{jars.kafka_jars(settings.jars_dir)[0].parent}/*"
    topic = fresh_topic(settings, "pp")
    command = ["java", "-Xmx1g", "-cp", classpath, "org.apache.kafka.tools.ProducerPerformance", "--topic", topic,
               "--num-records", str(messages), "--record-size", str(record_size), "--throughput", "-1",
               "--producer-props", f"bootstrap.servers={settings.kafka_bootstrap}", *props]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    finally:
        delete_topic(settings, topic)
    totals = re.findall(r"(\d+) records sent, ([\d.]+) records/sec", proc.stdout)
    if proc.returncode != 0 or not totals:
        sys.exit(f"ProducerPerformance failed ({shlex.join(command)}):\n{proc.stderr[-2000:]}")
    rate = float(totals[-1][1])
    print(f"ProducerPerformance ({' '.join(props) or 'default props'}): {int(totals[-1][0]):,} records of "
          f"{record_size} bytes = {rate:,.0f} msg/s", flush=True)
    return rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_simulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2_000_000, help="messages per run (default 2,000,000)")
    parser.add_argument("--quick", action="store_true", help="200,000 messages per run, for a check in a minute")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1, help="processes of the multi-process runs")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    n, p = (200_000 if args.quick else args.messages), args.processes
    contract = run_simulator(settings, "contract shape (20 users, 5 antennas)", n, p, 20, 5)
    scale_single = run_simulator(settings, "scale (20,000 users, 500 antennas)", n, 1, 20_000, 500)
    scale = run_simulator(settings, "scale (20,000 users, 500 antennas)", n, p, 20_000, 500)
    size = round(scale.average_size)
    reference_default = run_producer_performance(settings, n, size, ())
    reference_tuned = run_producer_performance(settings, n, size, JAVA_TUNED_PROPS)
    ratio = scale.rate / max(reference_default, reference_tuned)
    print(f"ratio (scale, {p} processes / best ProducerPerformance): {ratio:.2f}")
    record_run(SECTION, SECTION_INTRO, TABLE_HEADER, f"python -m bench.bench_simulator --messages {n} --processes {p}",
               [f"{n:,}", f"{contract.rate:,.0f} ({p} proc)", f"{scale_single.rate:,.0f}", f"{scale.rate:,.0f} ({p} proc)",
                f"{reference_default:,.0f} / {reference_tuned:,.0f} ({size} B records)", f"{ratio:.2f}"],
               dry_run=args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
