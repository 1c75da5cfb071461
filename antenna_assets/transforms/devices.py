"""Device usage messages: the contract's schema, parsing and validation (DATA_CONTRACT.md section 1)."""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

EVENT_FIELDS = ("timestamp", "id", "antenna_id", "bytes", "app")
_CORRUPT = "_corrupt_record"

DEVICE_MESSAGE_SCHEMA = T.StructType([
    T.StructField("timestamp", T.LongType()),
    T.StructField("id", T.StringType()),
    T.StructField("antenna_id", T.StringType()),
    T.StructField("bytes", T.LongType()),
    T.StructField("app", T.StringType()),
    # Spark fills this with the raw text when a value does not fit its type (e.g. "bytes": "many").
    T.StructField(_CORRUPT, T.StringType()),
])

# The columns of a parsed, valid event as stored in the lake (plus the partition columns).
EVENT_SCHEMA = T.StructType([
    T.StructField("timestamp", T.LongType(), False),
    T.StructField("id", T.StringType(), False),
    T.StructField("antenna_id", T.StringType(), False),
    T.StructField("bytes", T.LongType(), False),
    T.StructField("app", T.StringType(), False),
    T.StructField("event_time", T.TimestampType(), False),
])
LAKE_PARTITION_COLUMNS = ("year", "month", "day", "hour")

# Rejection reasons, in the order they are tested.
BROKEN_JSON = "broken_json"
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
NEGATIVE_BYTES = "negative_bytes"


def _rejection_reason(msg: Column) -> Column:
    fields = [msg[f] for f in EVENT_FIELDS]
    return (F.when(msg.isNull() | _all_null(fields), F.lit(BROKEN_JSON))
            .when(msg[_CORRUPT].isNotNull(), F.lit(WRONG_TYPE))
            .when(_any_null(fields), F.lit(MISSING_FIELD))
            .when(msg["bytes"] < 0, F.lit(NEGATIVE_BYTES)))


def _all_null(columns: list[Column]) -> Column:
    result = columns[0].isNull()
    for column in columns[1:]:
        result = result & column.isNull()
    return result


def _any_null(columns: list[Column]) -> Column:
    result = columns[0].isNull()
    for column in columns[1:]:
        result = result | column.isNull()
    return result


def parse_device_messages(kafka_rows: DataFrame) -> DataFrame:
    """Kafka rows (value, topic, partition, offset, timestamp) -> one row per message with the
    contract's fields, `event_time`, and `reason` (null for a valid message, else why it is rejected).

    Unknown extra fields are ignored; nothing raises on bad input.
    """
    raw = F.col("value").cast("string")
    msg = F.from_json(raw, DEVICE_MESSAGE_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    return (kafka_rows
            .select(raw.alias("raw_value"), msg.alias("msg"), "topic", "partition", "offset",
                    F.col("timestamp").alias("kafka_timestamp"))
            .select(*[F.col("msg")[f].alias(f) for f in EVENT_FIELDS],
                    F.timestamp_seconds(F.col("msg")["timestamp"]).alias("event_time"),
                    _rejection_reason(F.col("msg")).alias("reason"),
                    "raw_value", "topic", "partition", "offset", "kafka_timestamp"))


def valid_events(parsed: DataFrame) -> DataFrame:
    """The valid messages: the contract's five fields and `event_time` (UTC)."""
    return parsed.where(F.col("reason").isNull()).select(*EVENT_FIELDS, "event_time")


def rejected_messages(parsed: DataFrame) -> DataFrame:
    """The invalid messages with their raw value, reason and Kafka coordinates (the dead letters)."""
    return parsed.where(F.col("reason").isNotNull()).select(
        "topic", F.col("partition").alias("kafka_partition"), F.col("offset").alias("kafka_offset"),
        "raw_value", "reason", "kafka_timestamp")


def with_lake_partitions(events: DataFrame) -> DataFrame:
    """Adds year/month/day/hour of the UTC event time (the session time zone is UTC)."""
    t = F.col("event_time")
    return events.select("*", F.year(t).alias("year"), F.month(t).alias("month"), F.dayofmonth(t).alias("day"),
                         F.hour(t).alias("hour"))
