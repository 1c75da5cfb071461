"""A speed-layer micro-batch's summary: what it adds to PostgreSQL, from one Spark aggregation.

The parsed records of a batch (`devices.parse_device_messages`) go through one aggregation with
grouping sets, so one job with one shuffle gives
  - per speed table, the partial sums of the counted valid events: `aggregates.bytes_per_window`'s
    totals per key and window, the batch layer's definition;
  - per Kafka partition, the first and last offsets of every record (counted or not), the newest
    watermark time of the counted valid events and how many counted records were rejected, and their
    raw bytes as the batch holds them, so the batch's dead letters are a job of their own only when it
    has some, in pieces sized without another.
As a union of three parts (sums, dead letters, offsets), the same was a job of three stages and
twice the tasks: ~200 ms more of every live micro-batch (BENCHMARKS.md, Speed layer).
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from antenna_assets.serving.schema import AggregateTable
from antenna_assets.transforms.aggregates import MAX_EVENT_TIME, MESSAGES, window_start, window_totals
from antenna_assets.transforms.devices import WATERMARK_TIME

# The `table` of the per-Kafka-partition rows; the others hold a speed table's name.
PER_PARTITION = "per_kafka_partition"
KAFKA_PARTITION = "kafka_partition"
KAFKA_OFFSET = "kafka_offset"  # the partition's last offset in the batch
KAFKA_FIRST_OFFSET = "kafka_first_offset"  # and its first
REJECTED = "rejected"  # counted records the parse rejected
REJECTED_BYTES = "rejected_bytes"  # the bytes of their raw keys and values, as far as the batch holds them
_COUNTED = "counted"
_RECORD_COLUMNS = ("topic", "partition", "offset", "reason", "bytes", "event_time", WATERMARK_TIME, "key", "value")


def micro_batch_summary(parsed: DataFrame, counted: Column, tables: Sequence[AggregateTable], window: str,
                        exact: bool = False) -> DataFrame:
    """Columns: `table` (a name in `tables`, or PER_PARTITION), then for a table's rows key, date,
    bytes, messages, max_event_time; for a partition's rows topic, kafka_partition, kafka_offset,
    kafka_first_offset, watermark_time, rejected and rejected_bytes (counted records only, offsets of
    all). Times are epoch seconds.

    Sums and the newest watermark time are of the records where `counted` holds; a table's rows
    never include an uncounted or rejected record."""
    columns = _summary_columns(tuple((table.name, table.key) for table in tables), window, exact,
                               parsed.sparkSession.sparkContext)
    return (parsed.select(*columns.records, counted.alias(_COUNTED))
            .select(*columns.inputs)
            .groupingSets(columns.grouping_sets, *columns.group_by)
            .agg(*columns.totals)
            .where(columns.kept)
            .select(*columns.output))


def overflowed(summary: pa.Table) -> bool:
    """Whether a table's sum in a collected `micro_batch_summary` overflowed a BIGINT (null, `byte_sum`):
    Spark's maxOffsetsPerTrigger is spread over the topic's partitions and rounded, so a batch can hold a
    few more records than it says, and max_offsets_per_trigger x max_bytes then exceed a BIGINT."""
    sums = summary.filter(pc.not_equal(summary.column("table"), PER_PARTITION))
    return sums.column("bytes").null_count > 0


def rejected_count(summary: pa.Table) -> int:
    """The counted rejected records of a collected `micro_batch_summary`."""
    partitions = summary.filter(pc.equal(summary.column("table"), PER_PARTITION))
    return pc.sum(partitions.column(REJECTED)).as_py() or 0


def rejected_bytes(summary: pa.Table) -> int:
    """The bytes of the raw keys and values of a collected `micro_batch_summary`'s counted rejected records."""
    partitions = summary.filter(pc.equal(summary.column("table"), PER_PARTITION))
    return pc.sum(partitions.column(REJECTED_BYTES)).as_py() or 0


class _SummaryColumns(NamedTuple):
    records: tuple[Column, ...]
    inputs: tuple[Column, ...]
    grouping_sets: list[list[str]]
    group_by: tuple[str, ...]
    totals: tuple[Column, ...]
    kept: Column
    output: tuple[Column, ...]


@lru_cache(maxsize=8)
def _summary_columns(tables: tuple[tuple[str, str], ...], window: str, exact: bool, spark_context) -> _SummaryColumns:
    """Built once per tables, window and Spark context: each function of `F` is a call into the JVM
    that looks its class up, and the speed layer summarizes every micro-batch."""
    keys = tuple(key for _, key in tables)
    counted = F.col(_COUNTED)
    valid = counted & F.col("reason").isNull()
    event_time = F.when(valid, F.col("event_time"))
    # Every record is aggregated (its partition's offset), but outside `valid` its keys are null: one
    # group per grouping set holds them all, and is dropped (a rejected record's keys may be any text,
    # so they would otherwise make a group each), with its null window.
    inputs = ("topic", "partition", "offset", *(F.when(valid, F.col(key)).alias(key) for key in keys),
              F.when(valid, F.col("bytes")).alias("bytes"), event_time.alias("event_time"),
              F.when(valid, F.col(WATERMARK_TIME)).alias(WATERMARK_TIME),
              (counted & F.col("reason").isNotNull()).alias(REJECTED),
              F.when(counted & F.col("reason").isNotNull(),
                     F.coalesce(F.length("key"), F.lit(0)) + F.coalesce(F.length("value"), F.lit(0))).alias(REJECTED_BYTES),
              window_start(window, event_time))
    grouped = [F.grouping(key) == 0 for key in keys]
    (first_name, first_key), *others = tables
    table_name, key_value = F.when(grouped[0], F.lit(first_name)), F.when(grouped[0], F.col(first_key))
    for (name, key), is_grouped in zip(others, grouped[1:]):
        table_name, key_value = table_name.when(is_grouped, F.lit(name)), key_value.when(is_grouped, F.col(key))
    totals = (table_name.otherwise(F.lit(PER_PARTITION)).alias("table"), key_value.alias("key"),
              *window_totals("bytes", exact), F.max("offset").alias(KAFKA_OFFSET), F.min("offset").alias(KAFKA_FIRST_OFFSET),
              F.max(WATERMARK_TIME).alias(WATERMARK_TIME), F.count_if(REJECTED).alias(REJECTED),
              F.sum(REJECTED_BYTES).alias(REJECTED_BYTES))
    return _SummaryColumns(
        records=tuple(F.col(c) for c in (*_RECORD_COLUMNS, *keys)),
        inputs=tuple(F.col(c) if isinstance(c, str) else c for c in inputs),
        grouping_sets=[[key, "date"] for key in keys] + [["topic", "partition"]],
        group_by=(*keys, "date", "topic", "partition"),
        totals=totals,
        kept=F.col("key").isNotNull() | (F.col("table") == F.lit(PER_PARTITION)),
        output=(F.col("table"), F.col("key"), F.unix_seconds("date").alias("date"), F.col("bytes"),
                F.col(MESSAGES), F.unix_seconds(MAX_EVENT_TIME).alias(MAX_EVENT_TIME), F.col("topic"),
                F.col("partition").alias(KAFKA_PARTITION), F.col(KAFKA_OFFSET), F.col(KAFKA_FIRST_OFFSET),
                F.unix_seconds(WATERMARK_TIME).alias(WATERMARK_TIME), F.col(REJECTED), F.col(REJECTED_BYTES)))
