"""A micro-batch's dead letters, bounded in memory and in statement size whatever arrives.

Each rejected record is one `dead_letter` row with the length and SHA-256 of its value, computed by
Spark from the bytes received, so anyone can prove that a stored copy is the record. Its key and value
are kept whole, where their size together decides:
- up to `dead_letter_inline_bytes`: in the row, as BYTEA;
- above it: in the lake, as Parquet under `<dead letters>/batch=<checkpoint>-<batch>/` (the row's
  `raw_location`), written by Spark before the batch's PostgreSQL transaction, so a row never names
  a missing file; a replay of the batch overwrites that folder with the same records.
Nothing unbounded reaches the driver or one statement: the batch's cache keeps a rejected record's
bytes only up to the inline size (a larger record is read from Kafka again, by the lake write alone,
which runs only for a batch that has one), and the rows for PostgreSQL reach the driver in pieces of
about `dead_letter_page_bytes`, one INSERT each, inside the batch's one transaction.
"""

from __future__ import annotations

import math
from typing import Iterator

import psycopg2
from pyspark.sql import Column, DataFrame, Observation
from pyspark.sql import functions as F

from antenna_assets.hours import utc_from_epoch_millis, utc_now
from antenna_assets.kafka_client import TopicIdentity
from antenna_assets.serving.schema import DEAD_LETTER
from antenna_assets.sources.contract import ASCII_CONTROL
from antenna_assets.transforms.devices import raw_bytes_of_rejected_only, rejected_messages

PREVIEW_CHARACTERS = 200
_PREVIEW_BYTES = PREVIEW_CHARACTERS * 4  # a UTF-8 character has at most four bytes
RAW_LENGTH, RAW_SHA256, RAW_LOCATION = "raw_length", "raw_sha256", "raw_location"
_IN_LAKE = "in_lake"  # a rejected record too large for its row: its bytes go to the lake
_RAW_HEAD = "raw_head"  # the first bytes of such a record: its preview
_LAKE_PARTITION = "batch"
_COORDINATES = ("topic", "kafka_partition", "kafka_offset")
# A row's part of an INSERT besides its key and value (preview, coordinates, digest), at most about.
_ROW_OVERHEAD_BYTES = 1024


def _record_bytes(key: Column, value: Column) -> Column:
    return F.coalesce(F.length(key), F.lit(0)) + F.coalesce(F.length(value), F.lit(0))


def _statement_bytes(record_bytes):
    """A row's part of an INSERT's text, about: BYTEA goes as hex, two characters a byte. The same
    measure, a little more than the Python objects, bounds what the driver holds of a piece."""
    return 2 * record_bytes + _ROW_OVERHEAD_BYTES


def as_cached(parsed: DataFrame, inline_bytes: int) -> DataFrame:
    """`parse_device_messages`' rows as a micro-batch caches them: a rejected record's raw key and value
    only (`raw_bytes_of_rejected_only`), and only when together they fit `inline_bytes`; for every
    rejected record the length and SHA-256 of its value, for a larger one its first bytes."""
    rejected = F.col("reason").isNotNull()
    key, value = F.col("key"), F.col("value")
    in_lake = rejected & (_record_bytes(key, value) > inline_bytes)
    return raw_bytes_of_rejected_only(parsed).withColumns({
        RAW_LENGTH: F.when(rejected, F.length(value)),
        RAW_SHA256: F.when(rejected, F.sha2(value, 256)),
        _IN_LAKE: in_lake,
        _RAW_HEAD: F.when(in_lake, F.substring(value, 1, _PREVIEW_BYTES)),
        "key": F.when(~in_lake, key),
        "value": F.when(~in_lake, value),
    })


class BatchDeadLetters:
    """One micro-batch's dead letters, their large records already in the lake. Iterating gives the
    `dead_letter` rows (all its columns, in order) in pages of about `page_bytes` of INSERT text, each
    one statement; every iteration reads them from the batch's cache again, a piece at a time."""

    def __init__(self, rejected: DataFrame, records: int, statement_bytes: int, location: str, page_bytes: int,
                 identity: TopicIdentity):
        self._rejected = rejected
        self._identity = identity
        self.records = records
        self._pieces = max(1, math.ceil(statement_bytes / page_bytes))
        self._location = location
        self._page_bytes = page_bytes
        self._ingest_time = utc_now()

    def __iter__(self) -> Iterator[list[tuple]]:
        rows = self._rejected.select(*_COORDINATES, "raw_value", "raw_key", _RAW_HEAD, "reason",
                                     F.unix_millis("kafka_timestamp").alias("kafka_timestamp"), RAW_LENGTH,
                                     RAW_SHA256, _IN_LAKE)
        # Partitions of about a page each, so the driver holds one at a time; one partition needs no shuffle.
        pieces = rows.coalesce(1) if self._pieces == 1 else rows.repartition(self._pieces)
        page, page_bytes = [], 0
        for row in pieces.toLocalIterator():
            page.append(self._row(row))
            page_bytes += _statement_bytes(len(row.raw_value or b"") + len(row.raw_key or b""))
            if page_bytes >= self._page_bytes:
                yield page
                page, page_bytes = [], 0
        if page:
            yield page

    def _row(self, row) -> tuple:
        in_lake = row[_IN_LAKE]
        values = {"topic": row.topic, "kafka_partition": row.kafka_partition, "kafka_offset": row.kafka_offset,
                  # Raw bytes stay bytes, sent as BYTEA: no record's content can fail this insert.
                  "raw_value": _binary(row.raw_value), "raw_key": _binary(row.raw_key),
                  "preview": preview(row[_RAW_HEAD] if in_lake else row.raw_value), "reason": row.reason,
                  "kafka_timestamp": utc_from_epoch_millis(row.kafka_timestamp), "ingest_time": self._ingest_time,
                  RAW_LENGTH: row[RAW_LENGTH], RAW_SHA256: row[RAW_SHA256],
                  RAW_LOCATION: self._location if in_lake else None,
                  "kafka_cluster_id": self._identity.cluster_id, "kafka_topic_id": self._identity.topic_id}
        return tuple(values[name] for name in DEAD_LETTER.names)


def batch_dead_letters(parsed: DataFrame, kafka_rows: DataFrame, lake_root: str, batch: str, inline_bytes: int,
                       page_bytes: int, identity: TopicIdentity) -> BatchDeadLetters:
    """The dead letters among `parsed` (rows of `as_cached`, the batch's records not applied yet) of the
    topic `identity`, their records above `inline_bytes` written to `lake_root`'s `batch=<batch>` folder,
    read from `kafka_rows` (the micro-batch's own Kafka rows) again."""
    rejected = rejected_messages(parsed, RAW_LENGTH, RAW_SHA256, _IN_LAKE, _RAW_HEAD)
    in_lake = F.col(_IN_LAKE)
    # The cache holds no bytes of a record for the lake: its row's part is the overhead alone.
    records, large, statement_bytes = rejected.agg(
        F.count(F.lit(1)), F.count_if(in_lake),
        F.sum(_statement_bytes(_record_bytes(F.col("raw_key"), F.col("raw_value"))))).first()
    location = f"{lake_root.rstrip('/')}/{_LAKE_PARTITION}={batch}"
    if large:
        _write_to_lake(rejected.where(in_lake), kafka_rows, lake_root, batch, inline_bytes, page_bytes, large)
    return BatchDeadLetters(rejected, records, statement_bytes, location, page_bytes, identity)


def _write_to_lake(large: DataFrame, kafka_rows: DataFrame, lake_root: str, batch: str, inline_bytes: int,
                   page_bytes: int, expected: int) -> None:
    """Each large rejected record's key and value with its dead letter's columns (kafka_timestamp a
    timestamp), as Parquet in the `batch` partition under `lake_root`, replacing what a run before wrote there."""
    key, value = F.col("key"), F.col("value")
    received = (kafka_rows.where(_record_bytes(key, value) > inline_bytes)
                .select("topic", F.col("partition").alias("kafka_partition"), F.col("offset").alias("kafka_offset"),
                        key.alias("raw_key"), value.alias("raw_value")))
    # Broadcast: the large records' own coordinates are small, and a shuffle of their bytes is what must not happen.
    rows = received.join(F.broadcast(large.select(*_COORDINATES, "reason", "kafka_timestamp", RAW_LENGTH,
                                                  RAW_SHA256)), list(_COORDINATES))
    written = Observation("dead_letters_in_lake")
    (rows.observe(written, F.count(F.lit(1)).alias("records"))
     .withColumn(_LAKE_PARTITION, F.lit(batch))
     .write.mode("overwrite")
     .option("partitionOverwriteMode", "dynamic")
     # Row groups of about a page: a Parquet writer holds its row group in memory until it is full.
     .option("parquet.block.size", str(page_bytes))
     .partitionBy(_LAKE_PARTITION)
     .parquet(lake_root))
    if written.get["records"] != expected:
        raise RuntimeError(f"{expected} dead letters too large for PostgreSQL, but {written.get['records']} of them "
                           f"read again from Kafka and written to {lake_root}/{_LAKE_PARTITION}={batch}")


def _binary(value) -> bytes | None:
    # psycopg2 quotes plain bytes as a text literal (which refuses NUL); Binary makes them BYTEA.
    return None if value is None else psycopg2.Binary(value)


_ESCAPED_CONTROL = {ord(c): f"\\x{ord(c):02x}" for c in ASCII_CONTROL}


def preview(raw: bytes | None) -> str | None:
    """The first characters of a record, readable and storable: invalid UTF-8 and control characters
    (NUL included, which PostgreSQL text cannot hold) become backslash escapes."""
    if raw is None:
        return None
    text = bytes(raw[:_PREVIEW_BYTES]).decode("utf-8", errors="backslashreplace")[:PREVIEW_CHARACTERS]
    return text.translate(_ESCAPED_CONTROL)
