"""UTC hours: the partitions' keys, when an hour closes, and conversions of collected times.

PySpark turns a collected TIMESTAMP into a datetime in the *Python process's* local time zone,
whatever the session time zone says. Collected times therefore travel as epoch numbers
(`unix_seconds`, `unix_millis`) and become naive-UTC datetimes here.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

_EPOCH = datetime(1970, 1, 1)
HOUR = timedelta(hours=1)


def partition_key(hour: datetime) -> str:
    """2026-11-28 13:00 -> `2026-11-28-13:00`, the hourly partition's key."""
    return f"{hour:%Y-%m-%d-%H:%M}"


def hour_closes_at(hour: datetime, grace: timedelta) -> datetime:
    """The one definition of a closed hour: once its end plus the grace has passed on the UTC clock,
    the hourly batch may run for it. (Data that lands for it later makes the sensor run it again.)"""
    return hour + HOUR + grace


def hours_in_window(start: datetime, end: datetime) -> list[datetime]:
    """The UTC hour starts in [start, end), naive UTC."""
    start = start.astimezone(timezone.utc).replace(tzinfo=None) if start.tzinfo else start
    end = end.astimezone(timezone.utc).replace(tzinfo=None) if end.tzinfo else end
    hours, hour = [], start
    while hour < end:
        hours.append(hour)
        hour += HOUR
    return hours


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
