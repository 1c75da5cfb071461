"""An independent reading of the contract rules (README: contract rules) in plain Python, and
Hypothesis strategies of records of every kind: the oracle the Spark parser is tested against."""

from __future__ import annotations

import json
import unicodedata

from hypothesis import strategies as st

from antenna_assets.sources.contract import FIELD_NAMES, TEXT_FIELDS, MessageRules


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs):
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        raise ValueError("duplicate key")
    return dict(pairs)


def valid_fields(value: bytes | None, kafka_seconds: int, rules: MessageRules = MessageRules()) -> dict | None:
    """The five fields of a valid record, or None if the contract rules reject it."""
    if value is None:
        return None
    try:
        doc = json.loads(value.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except ValueError:
        return None
    if not isinstance(doc, dict) or any(doc.get(f) is None for f in FIELD_NAMES):
        return None
    ts, nbytes = doc["timestamp"], doc["bytes"]
    if any(type(v) is not int for v in (ts, nbytes)) or any(type(doc[f]) is not str for f in TEXT_FIELDS):
        return None
    if not (0 <= nbytes <= rules.max_bytes and rules.min_timestamp <= ts <= kafka_seconds + rules.future_tolerance_seconds):
        return None
    for f in TEXT_FIELDS:
        text = doc[f]
        if not 0 < len(text) <= rules.max_text_length:
            return None
        if any(ord(c) < 0x20 or ord(c) == 0x7F or unicodedata.category(c) == "Cs" for c in text):
            return None
    return {f: doc[f] for f in FIELD_NAMES}


KAFKA_SECONDS = 1_767_225_600  # 2026-01-01T00:00:00Z, the Kafka timestamp of generated records

_json_scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(
    allow_nan=False, allow_infinity=False) | st.text(max_size=20)
json_values = st.recursive(_json_scalars, lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.text(max_size=8), children, max_size=3), max_leaves=8)

_timestamps = st.one_of(
    st.integers(min_value=1_600_000_000, max_value=KAFKA_SECONDS + 1200),  # plausible, a few in the future
    st.sampled_from([KAFKA_SECONDS * 1000, 2**62, -1, 0, 946_684_799, 946_684_800, KAFKA_SECONDS + 600,
                     KAFKA_SECONDS + 601]),
    json_values)
_bytes = st.one_of(st.integers(min_value=0, max_value=9999),
                   st.sampled_from([2**62, 10**12, 10**12 + 1, -1, 2**63 - 1, 2**63, 5.0, 12.5, "5"]),
                   json_values)
_texts = st.one_of(
    st.sampled_from(["SKYPE", "00000000-0000-0000-0000-000000000001", "123", "true", "{x", "x" * 256, "x" * 257,
                     "", "a\x00b", "\ud800", "\ud83d\ude00", "tab\there", "caf\u00e9"]),
    st.text(max_size=12),
    json_values)


@st.composite
def near_valid_messages(draw) -> bytes:
    """A JSON object with some or all of the five fields, each valid or not, and extra fields."""
    doc = {}
    for field, values in (("timestamp", _timestamps), ("id", _texts), ("antenna_id", _texts), ("bytes", _bytes),
                          ("app", _texts)):
        if draw(st.integers(0, 20)) > 0:  # a field is sometimes missing
            doc[field] = draw(values)
    for name in draw(st.lists(st.text(max_size=6), max_size=2)):
        doc.setdefault(name, draw(json_values))
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


records = st.one_of(
    near_valid_messages(),
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.none(),
)
