from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from antenna_assets import lake_gcs
from antenna_assets.settings import Settings


class LakeResource(ConfigurableResource):
    """The data lake root: a local folder (default) or gs://bucket/prefix. Empty: ANTENNA_LAKE_ROOT."""

    root: str = Field(default="", description="lake root; empty: from the environment")
    checkpoints: str = Field(default="", description="streaming checkpoint root; empty: <root>/_checkpoints")
    project: str = Field(default="", description="GCP project of a gs:// lake; empty: ANTENNA_GCS_PROJECT")

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

    def _settings(self) -> Settings:
        settings = Settings.from_env()
        return replace(settings, gcs_project=self.project) if self.project else settings

    def _roots(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.effective_root, self.effective_checkpoints)))

    def validate(self) -> None:
        """Call at start-up, before Spark: a gs:// root must have its bucket and working credentials
        (raises `GcsLakeError` with a one-line reason); a local root is created."""
        settings = self._settings()
        for root in self._roots():
            if lake_gcs.is_gcs(root):
                lake_gcs.validate_gcs_root(settings, root)
            else:
                Path(root).mkdir(parents=True, exist_ok=True)

    def spark_conf(self) -> dict[str, str]:
        """`spark.hadoop.fs.gs.*` this lake needs (empty for a local lake). The connector jar itself
        must be on the classpath when the session starts: `spark_session.spark_conf` adds it."""
        return lake_gcs.spark_conf(self._settings(), self._roots())

    def list_files(self, path: str) -> list[str]:
        """Every file under `path` (a folder of this lake), as full paths or gs:// URLs, sorted."""
        if lake_gcs.is_gcs(path):
            return lake_gcs.list_gcs_files(self._settings(), path)
        return sorted(str(p) for p in Path(path).rglob("*") if p.is_file())


def hour_partition_dir(hour: datetime) -> str:
    """`year=YYYY/month=M/day=D/hour=H` of a UTC hour, as the contract names the lake partitions."""
    return f"year={hour.year}/month={hour.month}/day={hour.day}/hour={hour.hour}"
