"""The highest input rate the speed layer sustains with its default settings, and where a batch's time goes.

    python -m bench.bench_sustained [--rates 20000,40000,60000,80000] [--seconds 180] [--settle 30]
                                    [--warm-up 60] [--quick] [--no-record]

For each rate, ascending, on a fresh topic, serving database and lake folder: a paced producer process
sends R events/s (2,000 users, 100 antennas, stamped with their send time) for `settle` + `seconds`
seconds into the real SpeedLayer with the default SpeedLayerConfig (processing-time trigger 500 ms, at most
1M offsets per trigger, 5-minute windows). Over the last `seconds` seconds:
- freshness p50/p99 of the events sent then: from their send to the first poll of bytes_agg_antenna
  (every 100 ms) whose running total includes them (bench_speed_layer's `latencies`);
- Kafka lag every second: the topic's end offsets minus the offsets the speed layer has applied
  (streaming_offsets); growth = mean lag of the last 30 s minus mean lag of the first 30 s;
- every micro-batch's time from Spark's progress reports (its bookkeeping: latestOffset, walCommit,
  commitOffsets; our foreachBatch: addBatch) and the speed layer's own steps (Spark job of the sums,
  PostgreSQL transaction, lake write; the rest of addBatch is the ledger, metadata and cache);
- peak RSS of this driver and its Spark JVM.
A rate is sustained when p99 <= 5 s and the lag grew by at most one second of input. The
search stops at the first rate not sustained. Before it, `--warm-up` seconds of load at the first rate warm
the session's JVM, as a long-running stream's is (a cold start at 60,000 events/s built a backlog that took
the whole window to drain). Fixed versus per-event cost: a least-squares line of
batch time against batch rows over the measured batches of every rate tried.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from antenna_assets.settings import Settings
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import LAKE, STEPS, SpeedLayer, run_until_stopped
from antenna_assets_tests.truth import query
from bench.bench_speed_layer import (AntennaTablePoller, latencies, produce_paced, scratch_folder, scratch_topic,
                                     spark_session, streaming_process_memory, targets)
from bench.common import BackgroundLoop, RssPeak, cluster_settings, fresh_database, record_run

P99_TARGET_SECONDS = 5.0
LAG_EDGE_SECONDS = 30  # the lag's growth: its mean over the window's last 30 s minus its first 30 s
SPARK_STEPS = ("latestOffset", "walCommit", "addBatch", "commitOffsets")  # Spark's durationMs keys of a batch
RATES = "20000,40000,60000,80000"

SECTION = "## Sustained rate"
SECTION_INTRO = (
    "`bench/bench_sustained.py`: live load at rising rates through the speed layer with its default settings\n"
    "(processing-time trigger 500 ms, <= 1M offsets per trigger), a fresh topic, database and lake per rate.\n"
    "Sustained: freshness p99 <= 5 s over the measured window and Kafka lag grown by at most one second of\n"
    "input (mean of its last 30 s minus its first 30 s). Per rate: p50 / p99 freshness (s), lag growth\n"
    "(messages), batches in the window and their mean rows. Batch time at the sustained rate: Spark's\n"
    "bookkeeping (latestOffset + walCommit + commitOffsets) and the speed layer's steps, ms per batch; fixed\n"
    "and per-event costs from a least-squares line of batch time against rows over every rate's batches.\n\n")
TABLE_HEADER = ("| date | machine | command | sustained events/s | per rate: p50 / p99, lag growth, batches x rows "
                "| ms per batch at the sustained rate | fixed + per event | peak RSS |\n"
                "|---|---|---|---|---|---|---|---|\n")


@dataclass(frozen=True)
class RateResult:
    rate: float
    sent_per_second: float  # what the producer achieved in the window
    p50: float
    p99: float
    unseen: int  # events of the window never seen in bytes_agg_antenna
    lag_growth: float
    batch_rows: np.ndarray  # per measured batch
    batch_ms: np.ndarray  # per measured batch: Spark's triggerExecution
    spark_ms: dict[str, float]  # mean per batch, SPARK_STEPS
    step_ms: dict[str, float]  # mean per batch, the speed layer's STEPS
    memory: RssPeak

    @property
    def sustained(self) -> bool:
        return self.unseen == 0 and self.p99 <= P99_TARGET_SECONDS and self.lag_growth <= self.rate

    def summary(self) -> str:
        return (f"{self.rate:,.0f}: {self.p50:.2f} / {self.p99:.2f} s, lag {self.lag_growth:+,.0f}, "
                f"{len(self.batch_rows)} x {self.batch_rows.mean():,.0f}" + ("" if self.sustained else " (not sustained)"))

    def breakdown(self) -> str:
        spark = {k: v for k, v in self.spark_ms.items() if k != "addBatch"}
        # A live batch's lake write runs beside the next batch (lake_write_behind_max_messages), a larger one's
        # inside its own: the rest holds it then, and the lake's time is shown apart.
        in_batch = {step: ms for step, ms in self.step_ms.items() if step != LAKE}
        rest = self.spark_ms["addBatch"] - sum(in_batch.values())
        parts = [f"Spark bookkeeping {sum(spark.values()):.0f} ({', '.join(f'{k} {v:.0f}' for k, v in spark.items())})",
                 *(f"{step} {ms:.0f}" for step, ms in in_batch.items()),
                 f"rest of the batch {rest:.0f}; lake {self.step_ms[LAKE]:.0f} (in the rest, or beside the next batch)"]
        return f"{self.batch_ms.mean():.0f} = " + ", ".join(parts)


class LagSampler(BackgroundLoop):
    """Every second: (time, the topic's end offsets minus what the speed layer has applied)."""

    def __init__(self, settings: Settings, topic: str, url: str, query_name: str):
        super().__init__("lag-sampler")
        self.settings, self.topic, self.url, self.query_name = settings, topic, url, query_name
        self.samples: list[tuple[float, int]] = []

    def _run(self, stop: threading.Event) -> None:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.settings.kafka_bootstrap, "group.id": "bench-sustained-lag"})
        try:
            partitions = list(consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions)
            while not stop.wait(1.0):
                ends = {p: consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
                        for p in partitions}
                applied = dict(query(self.url, "SELECT kafka_partition, applied_until FROM streaming_offsets "
                                               "WHERE query = %s AND topic = %s", (self.query_name, self.topic)))
                self.samples.append((time.time(), sum(end - applied.get(p, 0) for p, end in ends.items())))
        finally:
            consumer.close()


def run_rate(spark, settings: Settings, rate: float, settle: float, seconds: float) -> RateResult:
    with scratch_topic(settings, "sustained") as topic, fresh_database(settings) as url, scratch_folder() as folder:
        config = SpeedLayerConfig(query_name=topic.replace("-", "_"))  # the defaults, but for the ledger's name
        layer = SpeedLayer(spark, config, targets(settings, topic, url, folder))
        sent_path = folder / "sent.npz"
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_paced, args=(settings.kafka_bootstrap, topic, rate, settle + seconds, str(sent_path)),
            name="sustained-producer", daemon=True)
        window: dict[str, object] = {}

        def should_stop() -> bool:
            # The measured window opens `settle` s after the load starts; the steps are read at its edges.
            now = time.time()
            if "start" not in window and now >= window["load"] + settle:
                window["start"], window["steps_at_start"] = now, dict(layer.stats.step_seconds)
                window["batches_at_start"] = layer.stats.batches
            if "end" not in window and now >= window["load"] + settle + seconds:
                window["end"], window["steps_at_end"] = now, dict(layer.stats.step_seconds)
                window["batches_at_end"] = layer.stats.batches
            return producer.exitcode is not None and "end" in window and now >= window["end"] + 10

        with AntennaTablePoller(url) as poller, LagSampler(settings, topic, url, config.query_name) as lag, \
                streaming_process_memory() as memory:
            producer.start()
            window["load"] = time.time()
            query = run_until_stopped(layer, should_stop=should_stop, poll_seconds=0.2)
        if producer.exitcode != 0:
            sys.exit(f"the producer failed (exit code {producer.exitcode})")
        start, end = window["start"], window["end"]
        sent_at = np.load(sent_path)["sent_at"]
        in_window = (sent_at >= start) & (sent_at < end)
        latency = latencies(sent_path, poller.polls())[in_window]
        seen = latency[np.isfinite(latency)]
        lag_times, lag_values = (np.array(column) for column in zip(*lag.samples))
        measured_lag = lag_values[(lag_times >= start) & (lag_times < end)]
        edge = min(LAG_EDGE_SECONDS, len(measured_lag) // 2)
        batches = [p for p in query.recentProgress
                   if p["numInputRows"] > 0 and start <= _epoch(p["timestamp"]) < end]
        measured = max(1, window["batches_at_end"] - window["batches_at_start"])
    result = RateResult(
        rate=rate, sent_per_second=in_window.sum() / (end - start),
        p50=float(np.percentile(seen, 50)), p99=float(np.percentile(seen, 99)), unseen=int((~np.isfinite(latency)).sum()),
        lag_growth=float(measured_lag[-edge:].mean() - measured_lag[:edge].mean()),
        batch_rows=np.array([p["numInputRows"] for p in batches]),
        batch_ms=np.array([p["durationMs"]["triggerExecution"] for p in batches]),
        spark_ms={k: float(np.mean([p["durationMs"].get(k, 0) for p in batches])) for k in SPARK_STEPS},
        step_ms={s: 1000 * (window["steps_at_end"][s] - window["steps_at_start"][s]) / measured for s in STEPS},
        memory=memory.peak)
    print(f"  {result.summary()}; producer {result.sent_per_second:,.0f} events/s; {result.unseen:,} unseen; "
          f"ms per batch {result.breakdown()}; peak RSS {result.memory}", flush=True)
    return result


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def fixed_and_per_event(results: list[RateResult]) -> tuple[float, float]:
    """(ms per batch, µs per event) of the least-squares line batch ms = fixed + per_event x rows."""
    rows = np.concatenate([r.batch_rows for r in results]).astype(float)
    ms = np.concatenate([r.batch_ms for r in results]).astype(float)
    per_event, fixed = np.polyfit(rows, ms, 1)
    return float(fixed), float(per_event * 1000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_sustained", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default=RATES, help=f"events/s to try, ascending (default {RATES})")
    parser.add_argument("--seconds", type=float, default=180, help="measured seconds per rate (default 180)")
    parser.add_argument("--settle", type=float, default=30, help="seconds of load before the window (default 30)")
    parser.add_argument("--warm-up", type=float, default=60,
                        help="seconds of load at the first rate before the search, not measured (default 60): a "
                             "long-running stream's JVM is warm, a new session's is not")
    parser.add_argument("--quick", action="store_true", help="60 s windows after 20 s of load")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    seconds, settle = (60, 20) if args.quick else (args.seconds, args.settle)
    rates = [float(r) for r in args.rates.split(",") if r]
    settings = Settings.from_env()
    # Enough progress reports for a whole window at two batches a second (the default trigger).
    spark = spark_session("bench_sustained", **{"spark.sql.streaming.numRecentProgressUpdates": "1000"})
    if args.warm_up > 0:
        print(f"warm-up: {rates[0]:,.0f} events/s for {args.warm_up:g} s (not measured)", flush=True)
        run_rate(spark, settings, rates[0], 0, args.warm_up)
    results: list[RateResult] = []
    for rate in rates:
        print(f"{rate:,.0f} events/s for {settle:g} + {seconds:g} s:", flush=True)
        results.append(run_rate(spark, settings, rate, settle, seconds))
        if not results[-1].sustained:
            break
    spark.stop()
    sustained = [r for r in results if r.sustained]
    best = sustained[-1] if sustained else None
    fixed, per_event = fixed_and_per_event(results)
    print(f"sustained: {best.rate if best else 0:,.0f} events/s; batch time = {fixed:.0f} ms + {per_event:.1f} µs "
          f"per event", flush=True)
    command = cluster_settings(settings) + "python -m bench.bench_sustained" + (" --quick" if args.quick else (
        f" --seconds {args.seconds:g} --settle {args.settle:g}")) + (
        f" --rates {args.rates}" if args.rates != RATES else "") + (f" --warm-up {args.warm_up:g}")
    record_run(SECTION, SECTION_INTRO, TABLE_HEADER, command,
               [f"{best.rate:,.0f}" if best else "none", "; ".join(r.summary() for r in results),
                best.breakdown() if best else "-", f"{fixed:.0f} ms + {per_event:.1f} µs x rows",
                str(max(results, key=lambda r: r.memory.total).memory)], dry_run=args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
