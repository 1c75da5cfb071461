"""The batch layer's work on whole UTC hours: compact the landed stream, compute the hourly tables.

Dagster-free, so assets, benchmarks and tests call the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from antenna_assets.serving.schema import BATCH_TABLES, USERS_OVER_QUOTA_1H
from antenna_assets.serving.writes import replace_window
from antenna_assets.lake.layout import hour_partition_dir
from antenna_assets.serving.views import mark_batch_hours
from antenna_assets.hours import HOUR, utc_from_epoch_seconds
from antenna_assets.transforms.aggregates import hourly_totals
from antenna_assets.transforms.devices import EVENT_SCHEMA, LAKE_PARTITION_COLUMNS, with_lake_partitions

HOURLY_TABLES = {t.name: t for t in (*BATCH_TABLES, USERS_OVER_QUOTA_1H)}
# Not a table: the users of an hour missing from its snapshot, for the all_users_known check.
UNKNOWN_USERS_COLUMNS = ("id", "date", "sum_user_bytes")


class MissingSnapshotError(RuntimeError):
    """The user_metadata snapshot of an hour is missing: materialize user_metadata for it first."""


@dataclass(frozen=True)
class HourStats:
    hour: datetime
    rows: int
    total_bytes: int
    min_event_time: datetime | None
    max_event_time: datetime | None


def existing_paths(spark: SparkSession, paths: Sequence[str]) -> list[str]:
    """The paths that exist, asked through Hadoop's file systems (local folders and gs:// alike)."""
    jvm = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()
    found = []
    for path in paths:
        hadoop_path = jvm.org.apache.hadoop.fs.Path(path)
        if hadoop_path.getFileSystem(conf).exists(hadoop_path):
            found.append(path)
    return found


def _empty_events(spark: SparkSession) -> DataFrame:
    schema = T.StructType([*EVENT_SCHEMA.fields, *(T.StructField(c, T.IntegerType()) for c in LAKE_PARTITION_COLUMNS)])
    return spark.createDataFrame([], schema)


def read_hours(spark: SparkSession, root: str, hours: Sequence[datetime]) -> DataFrame:
    """The events of `hours` under a year/month/day/hour-partitioned root (hours without data are skipped)."""
    paths = existing_paths(spark, [f"{root}/{hour_partition_dir(h)}" for h in hours])
    if not paths:
        return _empty_events(spark)
    return (spark.read.option("basePath", root).parquet(*paths)
            .select(*EVENT_SCHEMA.fieldNames(), *LAKE_PARTITION_COLUMNS))


def compact_hours(spark: SparkSession, landing_path: str, raw_devices_path: str, hours: Sequence[datetime],
                  max_records_per_file: int) -> list[HourStats]:
    """Rewrite the stream's many small files of each hour as few large ones under raw_devices.

    Each hour's partition is replaced whole, so a re-run gives the same files' content.
    """
    landed = read_hours(spark, landing_path, hours).drop(*LAKE_PARTITION_COLUMNS)
    (with_lake_partitions(landed)
     .repartition(*LAKE_PARTITION_COLUMNS)
     .write.mode("overwrite")
     .option("partitionOverwriteMode", "dynamic")
     .option("maxRecordsPerFile", max_records_per_file)
     .partitionBy(*LAKE_PARTITION_COLUMNS)
     .parquet(raw_devices_path))
    return hour_stats(read_hours(spark, raw_devices_path, hours), hours)


def hour_stats(events: DataFrame, hours: Sequence[datetime]) -> list[HourStats]:
    rows = (events.groupBy(F.unix_seconds(F.date_trunc("hour", "event_time")).alias("hour"))
            .agg(F.count(F.lit(1)).alias("rows"), F.sum("bytes").alias("total_bytes"),
                 F.unix_seconds(F.min("event_time")).alias("min_t"), F.unix_seconds(F.max("event_time")).alias("max_t"))
            .collect())
    by_hour = {utc_from_epoch_seconds(r.hour): r for r in rows}
    stats = []
    for hour in hours:
        r = by_hour.get(hour)
        stats.append(HourStats(hour, r.rows, int(r.total_bytes), utc_from_epoch_seconds(r.min_t),
                               utc_from_epoch_seconds(r.max_t)) if r else HourStats(hour, 0, 0, None, None))
    return stats


def user_metadata_snapshots(spark: SparkSession, conn, hours: Sequence[datetime]) -> DataFrame:
    """The user_metadata snapshot of each hour as a DataFrame (id, email, quota, date)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, email, quota, EXTRACT(EPOCH FROM date)::bigint FROM user_metadata_hourly "
                    "WHERE date >= %s AND date < %s", (min(hours), max(hours) + HOUR))
        rows = cur.fetchall()
    missing = sorted(set(hours) - {utc_from_epoch_seconds(r[3]) for r in rows})
    if missing:
        listed = ", ".join(f"{h:%Y-%m-%d-%H:00}" for h in missing[:5])
        raise MissingSnapshotError(f"no user_metadata snapshot for hour(s) {listed}: materialize the user_metadata "
                                   "asset for those partitions first")
    return snapshot_frame(spark, rows)


def snapshot_frame(spark: SparkSession, rows: Sequence[tuple[str, str, int, int]]) -> DataFrame:
    """Snapshot rows (id, email, quota, hour as epoch seconds) as a DataFrame (id, email, quota, date)."""
    frame = pd.DataFrame(list(rows), columns=["id", "email", "quota", "epoch"]).astype(
        {"id": object, "email": object, "quota": "int64", "epoch": "int64"})
    # Through Arrow: a DataFrame of driver rows otherwise runs a Python worker at each scan of it.
    return (spark.createDataFrame(frame, "id string, email string, quota long, epoch long")
            .select("id", "email", "quota", F.timestamp_seconds("epoch").alias("date")))


def collect_table(frame: DataFrame, columns: Sequence[str]) -> list[tuple]:
    """Rows of a result table with `date` as naive UTC (see timeutil for why not collect() it directly)."""
    selected = [F.unix_seconds("date").alias("date") if c == "date" else F.col(c) for c in columns]
    return [tuple(utc_from_epoch_seconds(v) if c == "date" else v for c, v in zip(columns, row))
            for row in frame.select(*selected).collect()]


def compute_hourly_tables(events: DataFrame, snapshots: DataFrame, tables: Sequence[str]) -> dict[str, list[tuple]]:
    """The rows of the requested hourly tables, plus `unknown_users` (id, date, sum_user_bytes)."""
    # Cached: the snapshot is joined three times; three results derive from the small per-user totals.
    # (Collecting all tables in one Spark job instead was measured slower: BENCHMARKS.md.)
    snapshots = snapshots.persist()
    frames = hourly_totals(events, snapshots)
    cached = [snapshots, frames["bytes_per_user"].persist()]
    try:
        result = {name: collect_table(frames[name], HOURLY_TABLES[name].names) for name in tables}
        result["unknown_users"] = collect_table(frames["unknown_users"], UNKNOWN_USERS_COLUMNS)
    finally:
        for frame in cached:
            frame.unpersist()
    return result


def write_hourly_tables(conn, tables: dict[str, list[tuple]], start: datetime, end: datetime) -> dict[str, int]:
    """Replace [start, end) of each table with its new rows and mark those hours batch-final for the
    serving views, all in the caller's one transaction."""
    with conn.cursor() as cur:
        written = {name: replace_window(cur, HOURLY_TABLES[name], start, end, rows)
                   for name, rows in tables.items() if name in HOURLY_TABLES}
        hours = [start + i * HOUR for i in range(int((end - start) / HOUR))]
        mark_batch_hours(cur, written, hours)
    return written
