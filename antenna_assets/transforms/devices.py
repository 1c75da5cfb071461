"""Device usage messages in Spark: the contract (sources/contract.py) as schemas, parsing and validation.

Any Kafka record is input: whatever its bytes, parsing classifies it as a valid event or as a
rejected one with a `reason`, and nothing here raises on bad input.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from antenna_assets.sources.contract import (ASCII_CONTROL, BROKEN_JSON, BYTES, BYTES_TOO_LARGE, CONTROL_CHARACTERS,
                                             EMPTY_TEXT, FIELD_NAMES, MESSAGE_FIELDS, MISSING_FIELD, NEGATIVE_BYTES,
                                             NOT_UTF8, TEXT_FIELDS, TEXT_TOO_LONG, TIMESTAMP, TIMESTAMP_IN_FUTURE,
                                             TIMESTAMP_TOO_OLD, WRONG_TYPE, MessageRules)

_CORRUPT = "_corrupt_record"
_SPARK_TYPES = {"BIGINT": T.LongType(), "TEXT": T.StringType()}

DEVICE_MESSAGE_SCHEMA = T.StructType([
    *(T.StructField(f.name, _SPARK_TYPES[f.sql_type]) for f in MESSAGE_FIELDS),
    # Spark fills this with the raw text when a value does not fit its type (e.g. "bytes": "many").
    T.StructField(_CORRUPT, T.StringType()),
])

# The columns of a parsed, valid event as stored in the lake (plus the partition columns).
EVENT_SCHEMA = T.StructType([
    *(T.StructField(f.name, _SPARK_TYPES[f.sql_type], False) for f in MESSAGE_FIELDS),
    T.StructField("event_time", T.TimestampType(), False),
])
LAKE_PARTITION_COLUMNS = ("year", "month", "day", "hour")
# The time that may advance the speed layer's watermark: an accepted event's time, but never past
# its Kafka record's own timestamp, so a device clock running ahead (within the tolerance below)
# cannot make everybody else's events late. A producer's clock can set the record's timestamp too
# (CreateTime): the stream caps a batch's watermark time by its own clock as well (speed/watermark.py).
WATERMARK_TIME = "watermark_time"


# A JSON string holds a C0 control character only as an escape (raw ones are broken JSON) and DEL
# raw or escaped, so only records with a backslash or a DEL are checked.
def _has_control_character(raw: Column, text: Column) -> Column:
    gate = raw.contains("\\") | raw.contains("\x7f")
    return gate & (F.length(F.translate(text, ASCII_CONTROL, "")) != F.length(text))


def _is_plain_json_string(raw: Column, field: str, text: Column) -> Column:
    """Whether the record shows `field` as a JSON string holding exactly `text` (compact or with a
    space after the colon). Spark reads a JSON number, boolean, object or array into a string field
    as its JSON text; a record where this check fails pays for the strict second parse that tells
    them apart. String searches, not a regex: a regex per field and row halved the parse's speed
    (BENCHMARKS.md)."""
    return (raw.contains(F.concat(F.lit(f'"{field}":"'), text))
            | raw.contains(F.concat(F.lit(f'"{field}": "'), text)))


def _first(cases: list[tuple[Column, str]]) -> Column:
    result = F.when(cases[0][0], F.lit(cases[0][1]))
    for condition, reason in cases[1:]:
        result = result.when(condition, F.lit(reason))
    return result


def _any(columns: list[Column]) -> Column:
    result = columns[0]
    for column in columns[1:]:
        result = result | column
    return result


def _strictly_parsed_types(raw: Column, msg: Column) -> Column:
    """For rows whose text fields might not be JSON strings, or whose text has unicode escapes (a lone
    surrogate escape decodes to no valid character): the JSON types of the text fields, read by
    Spark's strict parser (null types when it refuses the document). Null for every other row."""
    suspicious = _any([raw.contains("\\u"), *(~_is_plain_json_string(raw, f, msg[f]) for f in TEXT_FIELDS)])
    variant = F.try_parse_json(raw)
    types = F.struct(F.lit(True).alias("checked"), variant.isNull().alias("unparsable"),
                     *(F.schema_of_variant(F.variant_get(variant, f"$.{f}", "variant")).alias(f) for f in TEXT_FIELDS))
    return F.when(suspicious, types)


def _rejection_reason(value: Column, raw: Column, msg: Column, strict: Column, kafka_seconds: Column,
                      rules: MessageRules) -> Column:
    fields = [msg[f] for f in FIELD_NAMES]
    texts = [msg[f] for f in TEXT_FIELDS]
    return _first([
        (value.isNotNull() & ~F.is_valid_utf8(raw), NOT_UTF8),
        (msg.isNull() | ~_any([c.isNotNull() for c in fields]) | F.coalesce(strict["unparsable"], F.lit(False)),
         BROKEN_JSON),
        (msg[_CORRUPT].isNotNull(), WRONG_TYPE),
        (_any([c.isNull() for c in fields]), MISSING_FIELD),
        (F.coalesce(strict["checked"], F.lit(False))
         & _any([strict[f] != F.lit("STRING") for f in TEXT_FIELDS]), WRONG_TYPE),
        (msg[BYTES] < 0, NEGATIVE_BYTES),
        (msg[BYTES] > rules.max_bytes, BYTES_TOO_LARGE),
        (msg[TIMESTAMP] < rules.min_timestamp, TIMESTAMP_TOO_OLD),
        # Compared with the record's own timestamp, not the wall clock: a replay decides the same way.
        (msg[TIMESTAMP] > kafka_seconds + rules.future_tolerance_seconds, TIMESTAMP_IN_FUTURE),
        (_any([F.length(c) == 0 for c in texts]), EMPTY_TEXT),
        (_any([F.length(c) > rules.max_text_length for c in texts]), TEXT_TOO_LONG),
        (_any([_has_control_character(raw, c) for c in texts]), CONTROL_CHARACTERS),
    ])


def parse_device_messages(kafka_rows: DataFrame, rules: MessageRules = MessageRules()) -> DataFrame:
    """Kafka rows (key, value, topic, partition, offset, timestamp) -> one row per record with the
    contract's fields, `event_time` and `watermark_time` (null unless valid), `reason` (null for a
    valid message, else why it is rejected), and the record's raw `key`/`value` bytes.

    Unknown extra fields are ignored; nothing raises on bad input.
    """
    parse = _parse_expressions(rules, kafka_rows.sparkSession.sparkContext)
    with_msg = (kafka_rows.select("key", "value", parse.msg, "topic", "partition", "offset", parse.kafka_timestamp)
                # Its own projection: the reason reads it five times, and inside a CASE WHEN Spark
                # would evaluate it each time (measured: the parse 3x slower).
                .withColumn("strict", parse.strict))
    parsed = with_msg.select(*parse.fields, parse.reason, "key", "value", "topic", "partition", "offset",
                             "kafka_timestamp")
    return parsed.select("*", parse.event_time, parse.watermark_time)


class _ParseExpressions(NamedTuple):
    msg: Column
    kafka_timestamp: Column
    strict: Column
    fields: tuple[Column, ...]
    reason: Column
    event_time: Column
    watermark_time: Column


@lru_cache(maxsize=8)
def _parse_expressions(rules: MessageRules, spark_context) -> _ParseExpressions:
    """The parse's expressions, built once per rules and Spark context: building them is about a
    thousand calls into the JVM (~0.2 s), which the speed layer paid again in every micro-batch."""
    value = F.col("value")
    raw = value.cast("string")
    msg = F.from_json(raw, DEVICE_MESSAGE_SCHEMA, {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT})
    reason = _rejection_reason(value, raw, F.col("msg"), F.col("strict"), F.unix_seconds(F.col("kafka_timestamp")),
                               rules)
    # Only a valid timestamp becomes a time: a huge one would overflow Spark's microseconds.
    event_time = F.timestamp_seconds(F.when(F.col("reason").isNull(), F.col(TIMESTAMP)))
    watermark_time = F.when(event_time.isNotNull(), F.least(event_time, F.col("kafka_timestamp")))
    return _ParseExpressions(msg=msg.alias("msg"), kafka_timestamp=F.col("timestamp").alias("kafka_timestamp"),
                             strict=_strictly_parsed_types(raw, F.col("msg")),
                             fields=tuple(F.col("msg")[f].alias(f) for f in FIELD_NAMES), reason=reason.alias("reason"),
                             event_time=event_time.alias("event_time"),
                             watermark_time=watermark_time.alias(WATERMARK_TIME))


def valid_events(parsed: DataFrame) -> DataFrame:
    """The valid messages: the contract's five fields and `event_time` (UTC)."""
    return parsed.where(F.col("reason").isNull()).select(*FIELD_NAMES, "event_time")


def rejected_messages(parsed: DataFrame, *extra: str) -> DataFrame:
    """The invalid records with their exact key and value bytes, reason and Kafka coordinates (the dead
    letters), and the `extra` columns of `parsed`."""
    return parsed.where(F.col("reason").isNotNull()).select(
        "topic", F.col("partition").alias("kafka_partition"), F.col("offset").alias("kafka_offset"),
        F.col("key").alias("raw_key"), F.col("value").alias("raw_value"), "reason", "kafka_timestamp", *extra)


def with_lake_partitions(events: DataFrame) -> DataFrame:
    """Adds year/month/day/hour of the UTC event time (the session time zone is UTC)."""
    t = F.col("event_time")
    return events.select("*", F.year(t).alias("year"), F.month(t).alias("month"), F.dayofmonth(t).alias("day"),
                         F.hour(t).alias("hour"))
