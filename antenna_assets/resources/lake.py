from __future__ import annotations

from datetime import datetime

from dagster import ConfigurableResource
from pydantic import Field

from antenna_assets.settings import Settings


class LakeResource(ConfigurableResource):
    """The data lake root: a local folder (default) or gs://bucket/prefix. Empty: ANTENNA_LAKE_ROOT."""

    root: str = Field(default="", description="lake root; empty: from the environment")
    checkpoints: str = Field(default="", description="streaming checkpoint root; empty: <root>/_checkpoints")

    @property
    def effective_root(self) -> str:
        return (self.root or Settings.from_env().lake_root).rstrip("/")

    @property
    def effective_checkpoints(self) -> str:
        return (self.checkpoints or Settings.from_env().checkpoint_root).rstrip("/")

    @property
    def landing_path(self) -> str:
        """Where the stream lands every parsed message (year/month/day/hour/batch partitions)."""
        return f"{self.effective_root}/landing/devices"

    @property
    def raw_devices_path(self) -> str:
        """Closed hours, compacted: the batch layer's input."""
        return f"{self.effective_root}/raw_devices"

    def checkpoint_path(self, query: str) -> str:
        return f"{self.effective_checkpoints}/{query}"


def hour_partition_dir(hour: datetime) -> str:
    """`year=YYYY/month=M/day=D/hour=H` of a UTC hour, as the contract names the lake partitions."""
    return f"year={hour.year}/month={hour.month}/day={hour.day}/hour={hour.hour}"
