"""What a catch-up batch's totals cost on top of landing it: the bound they put on the catch-up's ratio to its floor.

    python -m bench.bench_summary [--messages 1000000] [--rounds 5] [--no-record]

A topic preloaded as bench_speed_layer's catch-up backlog (2,000 users, 100 antennas, 20,000 events per second
of event time) is read whole from Kafka as one batch, as a catch-up micro-batch of that size is, by three works
timed in interleaved rounds in one session:
- land: parse with the contract rules, cache, write the lake (its hour partitions) from the cache: the work of
  bench_speed_layer's catch-up floor, whose stream does this per batch;
- land + summary: the same, with the speed layer's `micro_batch_summary` collected first (the job that builds
  the cache, as in the stream): the Spark work of a speed-layer batch, without PostgreSQL and the ledger;
- land + three tables: the same, with only the three speed tables' sums, counts and newest event times per
  key and window (grouping sets over the valid records): the least a summary that feeds the tables must compute.
land's time over each other work's is the catch-up rate ratio that work allows the stream against its floor,
at best (PostgreSQL, the ledger and the micro-batch bookkeeping come on top). The three tables' sums are
checked equal to the summary's.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import pyarrow.compute as pc
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from antenna_assets.settings import Settings
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.dead_letters import as_cached
from antenna_assets.speed.layer import SPEED_TABLES
from antenna_assets.transforms.aggregates import window_start
from antenna_assets.transforms.devices import (LAKE_PARTITION_COLUMNS, parse_device_messages, valid_events,
                                               with_lake_partitions)
from antenna_assets.transforms.micro_batch import PER_PARTITION, micro_batch_summary
from bench.bench_speed_layer import preload, read_topic, scratch_topic, spark_session
from bench.common import record_run, time_interleaved

SECTION = "## Catch-up: what the totals cost on top of landing"
INTRO = ("`bench/bench_summary.py`: one catch-up-sized batch read from Kafka, parsed, cached and landed (the\n"
         "catch-up floor's work per batch), alone and with the speed layer's summary or only the three tables'\n"
         "sums before the landing; interleaved rounds in one session. land / (land + X) bounds the catch-up's\n"
         "ratio to its floor when a batch computes X (PostgreSQL and the ledger on top).\n\n")
HEADER = ("| date | machine | command | messages | land (s, best / median) | land + summary | land + three tables "
          "| bound: summary | bound: three tables |\n|---|---|---|---|---|---|---|---|---|")


def three_tables(valid: DataFrame, window: str) -> DataFrame:
    """The speed tables' sums, counts and newest event times per key and window, nothing else."""
    keys = [table.key for table in SPEED_TABLES]
    return (valid.select(*keys, "bytes", "event_time", window_start(window).alias("date"))
            .groupingSets([[key, "date"] for key in keys], *keys, "date")
            .agg(F.sum("bytes").alias("bytes"), F.count("*").alias("messages"), F.max("event_time")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_summary", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1_000_000,
                        help="records in the batch (default 1,000,000: the stream's catch-up batch)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved timed rounds (default 5)")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    settings, config = Settings.from_env(), SpeedLayerConfig()
    spark = spark_session("bench_summary")
    spark.conf.set("spark.sql.shuffle.partitions", str(spark.sparkContext.defaultParallelism))  # as batch_settings
    lake = tempfile.mkdtemp(prefix="bench-summary-")
    with scratch_topic(settings, "summary") as topic:
        preload(settings, topic, args.messages, 20_000)

        def batch_with(totals) -> object:
            batch = as_cached(parse_device_messages(read_topic(spark, settings, topic), config.message_rules()),
                              config.dead_letter_inline_bytes).persist(StorageLevel.MEMORY_AND_DISK_DESER)
            try:
                result = totals(batch) if totals else None
                (with_lake_partitions(valid_events(batch)).write.mode("overwrite")
                 .partitionBy(*LAKE_PARTITION_COLUMNS).parquet(lake))
                return result
            finally:
                batch.unpersist()

        timed = time_interleaved({
            "land": lambda: batch_with(None),
            "land + summary": lambda: batch_with(
                lambda batch: micro_batch_summary(batch, F.lit(True), SPEED_TABLES, config.window).toArrow()),
            "land + three tables": lambda: batch_with(
                lambda batch: three_tables(valid_events(batch), config.window).toArrow()),
        }, args.rounds)
    shutil.rmtree(lake, ignore_errors=True)
    summary, tables = timed["land + summary"][1], timed["land + three tables"][1]
    summary_bytes = pc.sum(summary.filter(pc.not_equal(summary.column("table"), PER_PARTITION)).column("bytes")).as_py()
    tables_bytes = pc.sum(tables.column("bytes")).as_py()
    if summary_bytes != tables_bytes:
        raise SystemExit(f"the three tables' sums ({tables_bytes:,}) differ from the summary's ({summary_bytes:,})")
    land = timed["land"][0].best
    bounds = {name: land / timed[name][0].best for name in ("land + summary", "land + three tables")}
    for name, (timings, _) in timed.items():
        print(f"{name}: {timings}" + (f"; the catch-up's ratio to its floor at best {bounds[name]:.2f}"
                                       if name in bounds else ""), flush=True)
    cells = [f"{args.messages:,}", *(f"{timings.best:.2f} / {timings.median:.2f}" for timings, _ in timed.values()),
             *(f"{bound:.2f}" for bound in bounds.values())]
    command = "python -m bench.bench_summary" + "".join(
        f" --{flag} {value}" for flag, value, default in (("messages", args.messages, 1_000_000), ("rounds", args.rounds, 5))
        if value != default)
    record_run(SECTION, INTRO, HEADER, command, cells, args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
