"""The device message contract (DATA_CONTRACT.md section 1; README: contract rules), written once.

The parser (transforms/devices.py), the simulator (sources/simulator/) and the tests' oracle read
the fields, rules and rejection reasons from here. Plain Python: no Spark, no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MessageField:
    """A field of a device message: its name, JSON type (`int` or `str`) and SQL type."""

    name: str
    json_type: type
    sql_type: str


TIMESTAMP, ID, ANTENNA_ID, BYTES, APP = "timestamp", "id", "antenna_id", "bytes", "app"
# In the order of the original simulator's messages (field order is not significant on input).
MESSAGE_FIELDS = (
    MessageField(TIMESTAMP, int, "BIGINT"),  # event time, epoch seconds, UTC
    MessageField(ID, str, "TEXT"),  # user / device id
    MessageField(ANTENNA_ID, str, "TEXT"),
    MessageField(BYTES, int, "BIGINT"),  # bytes transferred in this report
    MessageField(APP, str, "TEXT"),
)
FIELD_NAMES = tuple(f.name for f in MESSAGE_FIELDS)
TEXT_FIELDS = tuple(f.name for f in MESSAGE_FIELDS if f.json_type is str)

# Rejection reasons, in the order they are tested: a record gets the first that applies.
NOT_UTF8 = "not_utf8"
BROKEN_JSON = "broken_json"
WRONG_TYPE = "wrong_type"
MISSING_FIELD = "missing_field"
NEGATIVE_BYTES = "negative_bytes"
BYTES_TOO_LARGE = "bytes_too_large"
TIMESTAMP_TOO_OLD = "timestamp_too_old"
TIMESTAMP_IN_FUTURE = "timestamp_in_future"
EMPTY_TEXT = "empty_text"
TEXT_TOO_LONG = "text_too_long"
CONTROL_CHARACTERS = "control_characters"
REASONS = (NOT_UTF8, BROKEN_JSON, WRONG_TYPE, MISSING_FIELD, NEGATIVE_BYTES, BYTES_TOO_LARGE, TIMESTAMP_TOO_OLD,
           TIMESTAMP_IN_FUTURE, EMPTY_TEXT, TEXT_TOO_LONG, CONTROL_CHARACTERS)

BIGINT_MAX = 2**63 - 1

# ASCII's control characters (C0 and DEL): not allowed in a text field.
ASCII_CONTROL = "".join(map(chr, (*range(0x20), 0x7F)))


@dataclass(frozen=True)
class MessageRules:
    """Plausibility limits of a message (README: contract rules). Each violation is a dead letter.

    The speed layer refuses a configuration where `max_offsets_per_trigger` messages of `max_bytes` each
    could exceed a BIGINT (10^6 x 10^12 = 10^18 < 9.22 x 10^18 at the defaults); a sum that overflows all
    the same is summed again exactly (aggregates.byte_sum). Running and hourly totals are NUMERIC(38, 0)
    (serving/schema.py TOTAL_BYTES), so no number of messages overflows them.
    """

    max_bytes: int = 10**12
    min_timestamp: int = 946_684_800  # 2000-01-01T00:00:00Z
    future_tolerance_seconds: int = 600
    max_text_length: int = 256

    def __post_init__(self):
        if not 0 <= self.max_bytes <= BIGINT_MAX:
            raise ValueError(f"max_bytes must be between 0 and {BIGINT_MAX}, got {self.max_bytes}")
        if self.future_tolerance_seconds < 0 or self.max_text_length < 1:
            raise ValueError("future_tolerance_seconds must be >= 0 and max_text_length >= 1")
