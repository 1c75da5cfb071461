"""The batch layer's work on whole UTC hours: compact the landed stream, compute the hourly tables.

Dagster-free, so assets, benchmarks and tests call the same code.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Callable, Sequence

from pyspark import inheritable_thread_target
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from antenna_assets.serving.schema import BATCH_TABLES, USERS_OVER_QUOTA_1H
from antenna_assets.serving.writes import replace_window
from antenna_assets.lake.layout import hour_partition_dir
from antenna_assets.serving.views import mark_batch_hours
from antenna_assets.hours import HOUR, utc_from_epoch_seconds
from antenna_assets.transforms import hourly
from antenna_assets.transforms.aggregates import ANTENNA_APP, byte_sum, hourly_partials
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
    def collect(exact: bool) -> list[tuple]:
        return [tuple(r) for r in (
            events.groupBy(F.unix_seconds(F.date_trunc("hour", "event_time")).alias("hour"))
            .agg(F.count(F.lit(1)).alias("rows"), byte_sum(exact).alias("total_bytes"),
                 F.unix_seconds(F.min("event_time")).alias("min_t"), F.unix_seconds(F.max("event_time")).alias("max_t"))
            .collect())]

    by_hour = {utc_from_epoch_seconds(hour): rest for hour, *rest in collect_exact_totals(collect, 2)}
    stats = []
    for hour in hours:
        r = by_hour.get(hour)
        stats.append(HourStats(hour, r[0], r[1], utc_from_epoch_seconds(r[2]), utc_from_epoch_seconds(r[3]))
                     if r else HourStats(hour, 0, 0, None, None))
    return stats


def collect_exact_totals(collect: Callable[[bool], list[tuple]], total: int) -> list[tuple]:
    """`collect(exact)`'s rows with their byte sum at index `total` as a Python int: from BIGINT sums, or,
    when one of them overflowed (null, `byte_sum`), from exact sums collected again."""
    rows = collect(False)
    if any(row[total] is None for row in rows):
        rows = collect(True)
    return [(*row[:total], int(row[total]), *row[total + 1:]) for row in rows]


def user_metadata_snapshots(conn, hours: Sequence[datetime]) -> list[tuple[str, str, int, datetime]]:
    """The user_metadata snapshot of each hour: rows (id, email, quota, date = hour start)."""
    with conn.cursor() as cur:
        cur.execute("SELECT id, email, quota, EXTRACT(EPOCH FROM date)::bigint FROM user_metadata_hourly "
                    "WHERE date >= %s AND date < %s", (min(hours), max(hours) + HOUR))
        rows = [(user_id, email, quota, utc_from_epoch_seconds(epoch)) for user_id, email, quota, epoch in cur]
    missing = sorted(set(hours) - {row[3] for row in rows})
    if missing:
        listed = ", ".join(f"{h:%Y-%m-%d-%H:00}" for h in missing[:5])
        raise MissingSnapshotError(f"no user_metadata snapshot for hour(s) {listed}: materialize the user_metadata "
                                   "asset for those partitions first")
    return rows


def collect_table(frame: DataFrame, columns: Sequence[str]) -> list[tuple]:
    """Rows of a result table with `date` as naive UTC (see hours for why not collect() it directly).

    Through Arrow: 20,000 per-user rows came in half the time of `collect()`'s pickled rows (BENCHMARKS.md,
    Performance round 3)."""
    selected = [F.unix_seconds("date").alias("date") if c == "date" else F.col(c) for c in columns]
    table = frame.select(*selected).toArrow()
    values = [[utc_from_epoch_seconds(v) for v in table.column(c).to_pylist()] if c == "date"
              else table.column(c).to_pylist() for c in columns]
    return list(zip(*values))


def compute_hourly_tables(events: DataFrame, snapshot: hourly.Snapshot, tables: Sequence[str],
                          hours: Sequence[datetime] | None = None) -> dict[str, list[tuple]]:
    """The rows of the requested hourly tables, plus `unknown_users` (id, date, sum_user_bytes; empty
    unless a per-user table is requested). `hours`: those `events` were read from (`read_hours`); with one,
    its events are summed per key alone (`hourly_partials`), the hourly sensor's runs and the common case.

    Two Spark jobs read the events (per user id; per antenna and app), only those the requested tables
    need, submitted together: each one's stage boundaries and collect leave a core idle that the other's
    tasks fill (8% of the job on 10M events, BENCHMARKS.md, Batch layer). The tables derive from their
    few thousand rows on the driver."""
    hour = hours[0] if hours is not None and len(hours) == 1 else None

    def partial(name: str, columns: Sequence[str]) -> list[tuple]:
        return collect_exact_totals(lambda exact: collect_table(hourly_partials(events, exact, hour)[name], columns),
                                    len(columns) - 1)

    wanted = {"per_antenna_app": (*ANTENNA_APP, "date", "bytes"), "per_user": UNKNOWN_USERS_COLUMNS}
    if not {"bytes_agg_antenna_1h", "bytes_agg_app_1h"} & set(tables):
        del wanted["per_antenna_app"]
    if not {"bytes_agg_user_1h", "users_over_quota_1h"} & set(tables):
        del wanted["per_user"]
    # Threads that carry the caller's Spark job properties and tags, as Dagster's run sets them.
    in_thread = inheritable_thread_target(events.sparkSession)(partial)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="hourly-partial") as pool:
        futures = {name: pool.submit(in_thread, name, columns) for name, columns in wanted.items()}
        partials = {name: future.result() for name, future in futures.items()}

    result: dict[str, list[tuple]] = {"unknown_users": []}
    if "per_antenna_app" in partials:
        per_antenna_app = partials["per_antenna_app"]
        result["bytes_agg_antenna_1h"] = hourly.rollup(per_antenna_app, 0, 2, 3)
        result["bytes_agg_app_1h"] = hourly.rollup(per_antenna_app, 1, 2, 3)
    if "per_user" in partials:
        per_user = partials["per_user"]
        result["bytes_agg_user_1h"] = hourly.bytes_per_email(per_user, snapshot)
        result["users_over_quota_1h"] = hourly.users_over_quota(result["bytes_agg_user_1h"], snapshot)
        result["unknown_users"] = hourly.unknown_users(per_user, snapshot)
    return {name: rows for name, rows in result.items() if name in tables or name == "unknown_users"}


def write_hourly_tables(conn, tables: dict[str, list[tuple]], start: datetime, end: datetime) -> dict[str, int]:
    """Replace [start, end) of each table with its new rows and mark those hours batch-final for the
    serving views, all in the caller's one transaction."""
    with conn.cursor() as cur:
        written = {name: replace_window(cur, HOURLY_TABLES[name], start, end, rows)
                   for name, rows in tables.items() if name in HOURLY_TABLES}
        hours = [start + i * HOUR for i in range(int((end - start) / HOUR))]
        mark_batch_hours(cur, written, hours)
    return written
