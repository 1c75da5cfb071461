"""The hourly partitions every table asset shares (UTC: no daylight-saving holes or doubles)."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

from dagster import HourlyPartitionsDefinition

PARTITIONS_START = os.environ.get("ANTENNA_PARTITIONS_START", "2025-01-01-00:00")

hourly_partitions = HourlyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC")


def partition_key(hour: datetime) -> str:
    """2026-11-28 13:00 -> `2026-11-28-13:00`, the hourly partition's key."""
    return f"{hour:%Y-%m-%d-%H:%M}"


def hour_closes_at(hour: datetime, grace: timedelta) -> datetime:
    """The one definition of a closed hour: once its end plus the grace has passed on the UTC clock,
    the hourly batch may run for it. (Data that lands for it later makes the sensor run it again.)"""
    return hour + timedelta(hours=1) + grace


def hours_in_window(start: datetime, end: datetime) -> list[datetime]:
    """The UTC hour starts in [start, end), naive UTC."""
    start = start.astimezone(timezone.utc).replace(tzinfo=None) if start.tzinfo else start
    end = end.astimezone(timezone.utc).replace(tzinfo=None) if end.tzinfo else end
    hours, hour = [], start
    while hour < end:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


def run_hours(context) -> list[datetime]:
    """The UTC hours of a run's partition or partition range (single-run backfills pass a range)."""
    window = context.partition_time_window
    return hours_in_window(window.start, window.end)
