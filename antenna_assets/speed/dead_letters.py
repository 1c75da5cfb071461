"""A micro-batch's dead letters, bounded in memory and in statement size whatever arrives.

Each rejected record is one `dead_letter` row with the length and SHA-256 of its value, computed by
Spark from the bytes received, so anyone can prove that a stored copy is the record. Its key and value
are kept whole, where their size together decides:
- up to `dead_letter_inline_bytes`: in the row, as BYTEA;
- above it: in the lake, as Parquet under `<dead letters>/batch=<checkpoint>-<batch>/` (the row's
  `raw_location`), written by Spark inside the batch's PostgreSQL transaction, after its rows and
  before it commits, so a row never names a missing file; a replay of the batch overwrites that folder
  with the same records.
Nothing unbounded reaches the driver or one statement: the batch's cache keeps a rejected record's
bytes only up to the inline size (a larger record is read from Kafka again, by the lake write alone,
which runs only for a batch that has one), and the rows for PostgreSQL reach the driver in pieces of
about `dead_letter_page_bytes`, one INSERT each, inside the batch's one transaction. The batch's summary
gives their count and bytes (transforms/micro_batch.py), so pieces are sized without a Spark job, and a
batch whose dead letters fit one page collects them in one job, as before.
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
from antenna_assets.transforms.devices import rejected_messages

PREVIEW_CHARACTERS = 200
_PREVIEW_BYTES = PREVIEW_CHARACTERS * 4  # a UTF-8 character has at most four bytes
RAW_LENGTH, RAW_SHA256, RAW_LOCATION = "raw_length", "raw_sha256", "raw_location"
_IN_LAKE = "in_lake"  # a rejected record too large for its row: its bytes go to the lake
_RAW_HEAD = "raw_head"  # the first bytes of such a record: its preview
_LAKE_PARTITION = "batch"
_COORDINATES = ("topic", "kafka_partition", "kafka_offset")
# A row's part of an INSERT besides its key and value (a preview of up to 800 bytes, digest, coordinates,
# times), and what it brings to the driver besides them (a record in the lake: its first 800 bytes), at most.
_ROW_OVERHEAD_BYTES = 2048


def _record_bytes(key: Column, value: Column) -> Column:
    return F.coalesce(F.length(key), F.lit(0)) + F.coalesce(F.length(value), F.lit(0))


def _statement_bytes(record_bytes):
    """A row's part of an INSERT's text, about: BYTEA goes as hex, two characters a byte. The same
    measure, a little more than the Python objects, bounds what the driver holds of a piece."""
    return 2 * record_bytes + _ROW_OVERHEAD_BYTES


def as_cached(parsed: DataFrame, inline_bytes: int) -> DataFrame:
    """`parse_device_messages`' rows as a micro-batch caches them: a rejected record's raw key and value
    only, and only when together they fit `inline_bytes` (a valid message's value is most of its row);
    for every rejected record the length and SHA-256 of its value, for a larger one its first bytes.
    One step: Spark analyses each DataFrame step on the driver, ~10 ms of every micro-batch apiece."""
    rejected = F.col("reason").isNotNull()
    key, value = F.col("key"), F.col("value")
    in_lake = rejected & (_record_bytes(key, value) > inline_bytes)
    inline = rejected & ~in_lake
    return parsed.withColumns({
        RAW_LENGTH: F.when(rejected, F.length(value)),
        RAW_SHA256: F.when(rejected, F.sha2(value, 256)),
        _IN_LAKE: in_lake,
        _RAW_HEAD: F.when(in_lake, F.substring(value, 1, _PREVIEW_BYTES)),
        "key": F.when(inline, key),
        "value": F.when(inline, value),
    })


class BatchDeadLetters:
    """The dead letters among `parsed` (rows of `as_cached`: the micro-batch's records not applied yet,
    `records` of them rejected, with `raw_bytes` of keys and values in the cache) of the topic `identity`. Iterating gives their `dead_letter` rows (all its
    columns, in order) in pages of about `page_bytes` of INSERT text, each one statement, and ends by
    writing the records above `inline_bytes`, read from `kafka_rows` (the micro-batch's own Kafka rows)
    again, to `lake_root`'s `batch=<batch>` folder: iterated inside the batch's transaction, as
    `apply_micro_batch` does, the files are there before the rows that name them commit. Each iteration
    reads the rows from the batch's cache again, a piece at a time, and writes the folder again."""

    def __init__(self, parsed: DataFrame, kafka_rows: DataFrame, records: int, raw_bytes: int, lake_root: str,
                 batch: str, inline_bytes: int, page_bytes: int, identity: TopicIdentity):
        self._rejected = rejected_messages(parsed, RAW_LENGTH, RAW_SHA256, _IN_LAKE, _RAW_HEAD)
        self._kafka_rows = kafka_rows
        self._identity = identity
        self.records = records
        # Every row's _statement_bytes together: the pieces sized without a Spark job.
        self._pieces = math.ceil((2 * raw_bytes + records * _ROW_OVERHEAD_BYTES) / page_bytes)
        self._lake_root, self._batch = lake_root.rstrip("/"), batch
        self._location = f"{self._lake_root}/{_LAKE_PARTITION}={batch}"
        self._inline_bytes, self._page_bytes = inline_bytes, page_bytes
        self._ingest_time = utc_now()

    def __iter__(self) -> Iterator[list[tuple]]:
        rows = self._rejected.select(*_COORDINATES, "raw_value", "raw_key", _RAW_HEAD, "reason",
                                     F.unix_millis("kafka_timestamp").alias("kafka_timestamp"), RAW_LENGTH,
                                     RAW_SHA256, _IN_LAKE)
        # One piece: collected by one Spark job, whose tasks scan the cache in parallel (a batch's few dead
        # letters cost what they did before). More: spread evenly over that many partitions, each a page at
        # most, the driver fetching one at a time.
        received = rows.collect() if self._pieces <= 1 else rows.repartition(self._pieces).toLocalIterator()
        page, page_bytes, in_lake = [], 0, 0
        for row in received:
            page.append(self._row(row))
            in_lake += row[_IN_LAKE]
            page_bytes += _statement_bytes(len(row.raw_value or b"") + len(row.raw_key or b""))
            if page_bytes >= self._page_bytes:
                yield page
                page, page_bytes = [], 0
        if page:
            yield page
        if in_lake:
            self._write_to_lake(in_lake)

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


    def _write_to_lake(self, expected: int) -> None:
        """Each large rejected record's key and value with its dead letter's columns (kafka_timestamp a
        timestamp), as Parquet in the batch's partition, replacing what a run before wrote there."""
        key, value = F.col("key"), F.col("value")
        received = (self._kafka_rows.where(_record_bytes(key, value) > self._inline_bytes)
                    .select("topic", F.col("partition").alias("kafka_partition"),
                            F.col("offset").alias("kafka_offset"), key.alias("raw_key"), value.alias("raw_value")))
        large = self._rejected.where(F.col(_IN_LAKE)).select(*_COORDINATES, "reason", "kafka_timestamp", RAW_LENGTH,
                                                             RAW_SHA256)
        # Broadcast: the large records' coordinates are small, and a shuffle of their bytes must not happen.
        rows = received.join(F.broadcast(large), list(_COORDINATES))
        written = Observation("dead_letters_in_lake")
        (rows.observe(written, F.count(F.lit(1)).alias("records"))
         .withColumn(_LAKE_PARTITION, F.lit(self._batch))
         .write.mode("overwrite")
         .option("partitionOverwriteMode", "dynamic")
         # Row groups of about a page: a Parquet writer holds its row group in memory until it is full.
         .option("parquet.block.size", str(self._page_bytes))
         .partitionBy(_LAKE_PARTITION)
         .parquet(self._lake_root))
        if written.get["records"] != expected:
            raise RuntimeError(f"{expected} dead letters too large for PostgreSQL, but {written.get['records']} of "
                               f"them read again from Kafka and written to {self._location}")


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
