"""Where things are in the lake, local folder or gs:// alike."""

from __future__ import annotations

from datetime import datetime


def hour_partition_dir(hour: datetime) -> str:
    """`year=YYYY/month=M/day=D/hour=H` of a UTC hour, as the contract names the lake partitions."""
    return f"year={hour.year}/month={hour.month}/day={hour.day}/hour={hour.hour}"
