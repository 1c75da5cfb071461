"""UTC conversions on the driver.

PySpark turns a collected TIMESTAMP into a datetime in the *Python process's* local time zone,
whatever the session time zone says. Collected times therefore travel as epoch numbers
(`unix_seconds`, `unix_millis`) and become naive-UTC datetimes here.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_EPOCH = datetime(1970, 1, 1)
_DURATION = re.compile(r"^\s*(\d+)\s*(second|minute|hour|day)s?\s*$")
_UNIT_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


def utc_from_epoch_seconds(seconds: int | None) -> datetime | None:
    return None if seconds is None else _EPOCH + timedelta(seconds=seconds)


def utc_from_epoch_millis(millis: int | None) -> datetime | None:
    return None if millis is None else _EPOCH + timedelta(milliseconds=millis)


def epoch_seconds(utc: datetime) -> float:
    """A naive-UTC datetime as epoch seconds."""
    return (utc - _EPOCH).total_seconds()


def utc_now() -> datetime:
    """The current time as naive UTC, the form of every TIMESTAMP column of the serving tables."""
    return datetime.utcnow()


def parse_duration(text: str) -> timedelta:
    """'5 minutes' -> timedelta(minutes=5); the same spelling Spark accepts for windows and triggers."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like '30 seconds', '5 minutes' or '1 hour'")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
