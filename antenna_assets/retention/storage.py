"""`antenna storage`: every store's size and oldest data, in one table (README: Retention).

Read-only, as the stack's admin (the serving and Dagster databases); the lake through pyarrow (local or gs://);
the topic's size from the local broker's folders (an external cluster's is not known here) and its oldest
record read from each partition's first offset.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from datetime import datetime

_DATE = "date"
# Serving database tables and the column that dates their rows (None: not dated).
SERVING_TABLES = (
    ("bytes_agg_antenna", _DATE), ("bytes_agg_user", _DATE), ("bytes_agg_app", _DATE),
    ("bytes_agg_antenna_1h", _DATE), ("bytes_agg_user_1h", _DATE), ("bytes_agg_app_1h", _DATE),
    ("users_over_quota_1h", _DATE), ("user_metadata_hourly", _DATE), ("batch_hours", _DATE),
    ("pruned_speed_hours", _DATE), ("dead_letter", "ingest_time"), ("streaming_batches", "applied_at"),
    ("streaming_batch_clocks", "planned_at"), ("streaming_failures", "failed_at"),
    ("streaming_heartbeats", "beat_at"), ("streaming_offsets", None), ("landing_hours", "hour"),
    ("compacted_hours", "hour"), ("pruned_landing_hours", "hour"), ("user_metadata_audit", "changed_at"),
)
# Dagster's instance storage (dagster-postgres' tables).
DAGSTER_TABLES = (("runs", "create_timestamp"), ("event_logs", "timestamp"), ("job_ticks", "timestamp"))
LAKE_AREAS = ("landing/devices", "raw_devices", "dead_letter")
_HOUR_PATH = re.compile(r"year=(\d+)/month=(\d+)/day=(\d+)/hour=(\d+)")


@dataclass(frozen=True)
class Store:
    name: str
    size_bytes: int | None
    items: str  # "N rows", "N files"
    oldest: str


def _size(value: int | None) -> str:
    if value is None:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


def _oldest(value) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if isinstance(value, datetime) else "-"


def database_stores(url: str, tables, prefix: str) -> list[Store]:
    """Size (table, indexes, TOAST), rows and oldest row of each table of the database at `url` that exists."""
    from antenna_assets.postgres import transaction

    stores = []
    with transaction(url) as conn, conn.cursor() as cur:
        for table, column in tables:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
            if not cur.fetchone()[0]:
                continue
            oldest = f"min({column})" if column else "NULL"
            cur.execute(f"SELECT pg_total_relation_size(%s), count(*), {oldest} FROM {table}", (table,))
            size, rows, first = cur.fetchone()
            stores.append(Store(f"{prefix}{table}", size, f"{rows} rows", _oldest(first)))
    return stores


def lake_stores(settings) -> list[Store]:
    """Files, bytes and the oldest hour (or file time) of each lake area."""
    from pyarrow import fs

    from antenna_assets.lake.gcs import arrow_filesystem

    stores = []
    for area in LAKE_AREAS:
        filesystem, root = arrow_filesystem(settings, f"{settings.lake_root}/{area}")
        files = [i for i in filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
                 if i.type == fs.FileType.File]
        hours = [datetime(*map(int, m.groups())) for i in files if (m := _HOUR_PATH.search(i.path))]
        first = min(hours) if hours else min((i.mtime.replace(tzinfo=None) for i in files if i.mtime), default=None)
        stores.append(Store(f"lake {area}", sum(i.size or 0 for i in files), f"{len(files)} files", _oldest(first)))
    return stores


def topic_store(settings) -> Store:
    """The topic's bytes on the local broker's disks (unknown on another cluster) and its oldest record's time."""
    from antenna_assets.kafka_client import librdkafka_config
    from antenna_assets.stack.kafka import kafka_nodes

    local = settings.kafka_bootstrap == ",".join(node.address for node in kafka_nodes(settings))
    size = None
    if local:
        size = sum(f.stat().st_size for node in kafka_nodes(settings)
                   for folder in (node.home / "data").glob(f"{settings.topic}-*") if folder.is_dir()
                   for f in folder.iterdir() if f.is_file())
    records, first = 0, None
    try:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**librdkafka_config(settings), "group.id": "antenna-storage", "enable.auto.commit": False})
        try:
            metadata = consumer.list_topics(settings.topic, timeout=10).topics.get(settings.topic)
            for partition in (metadata.partitions if metadata else {}):
                low, high = consumer.get_watermark_offsets(TopicPartition(settings.topic, partition), timeout=10)
                records += high - low
                if high > low:
                    consumer.assign([TopicPartition(settings.topic, partition, low)])
                    message = consumer.poll(10)
                    if message is not None and message.error() is None:
                        stamp = datetime.utcfromtimestamp(message.timestamp()[1] / 1000)
                        first = stamp if first is None else min(first, stamp)
        finally:
            consumer.close()
    except Exception as exc:  # a report: a broker that does not answer is a line of it, not a failure
        return Store(f"kafka topic {settings.topic}", size, f"unreachable: {str(exc)[:60]}", "-")
    return Store(f"kafka topic {settings.topic}", size, f"{records} records", _oldest(first))


def storage_report(settings) -> list[Store]:
    dagster_url = settings.postgres_url_for(settings.dagster_db, settings.postgres_admin_url)
    return [topic_store(settings), *lake_stores(settings),
            *database_stores(settings.postgres_admin_url, SERVING_TABLES, ""),
            *database_stores(dagster_url, DAGSTER_TABLES, "dagster ")]


def format_report(stores: list[Store]) -> str:
    rows = [("store", "size", "holds", "oldest (UTC)")] + [(s.name, _size(s.size_bytes), s.items, s.oldest)
                                                          for s in stores]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def register(commands) -> None:
    commands.add_parser("storage", help="each store's size and oldest data, in one table").set_defaults(
        handler=_storage)


def _storage(args: argparse.Namespace) -> int:
    from antenna_assets.settings import Settings

    print(format_report(storage_report(Settings.from_env())))
    return 0
