"""The hourly partitions every table asset shares (UTC: no daylight-saving holes or doubles)."""

from __future__ import annotations

from datetime import datetime

from dagster import HourlyPartitionsDefinition

from antenna_assets.hours import hours_in_window
from antenna_assets.settings import Settings

hourly_partitions = HourlyPartitionsDefinition(start_date=Settings.from_env().partitions_start, timezone="UTC")


def run_hours(context) -> list[datetime]:
    """The UTC hours of a run's partition or partition range (single-run backfills pass a range)."""
    window = context.partition_time_window
    return hours_in_window(window.start, window.end)
