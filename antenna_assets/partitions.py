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


# The tags of a single run over a range of partitions (what the UI's single-run backfill sets); Dagster
# names them in a private module only.
PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"


def partition_range_tags(first_key: str, last_key: str) -> dict[str, str]:
    """Tags that make one run materialize every partition from `first_key` to `last_key`."""
    return {PARTITION_RANGE_START_TAG: first_key, PARTITION_RANGE_END_TAG: last_key}
