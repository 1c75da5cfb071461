"""UTC conversions on the driver.

PySpark turns a collected TIMESTAMP into a datetime in the *Python process's* local time zone,
whatever the session time zone says. Collected times therefore travel as epoch numbers
(`unix_seconds`, `unix_millis`) and become naive-UTC datetimes here.
"""

from __future__ import annotations

from datetime import datetime, timedelta

_EPOCH = datetime(1970, 1, 1)


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
