from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from antenna_assets.lake import gcs as lake_gcs
from antenna_assets.settings import Settings


class LakeResource(ConfigurableResource):
    """The data lake root: a local folder or gs://bucket/prefix. Definitions gives every field from the
    settings (`from_settings`), so the Resources page shows the lake a run uses."""

    root: str = Field(description="lake root: a local folder or gs://bucket/prefix")
    checkpoints: str = Field(default="", description="streaming checkpoint root; empty: <root>/_checkpoints")
    project: str = Field(default="", description="GCP project of a gs:// lake; empty: the credentials' project")
    endpoint: str = Field(default="", description="GCS API emulator URL (http://host:port); empty: the real service")

    @classmethod
    def from_settings(cls, settings: Settings) -> "LakeResource":
        """The lake of these settings (ANTENNA_LAKE_ROOT, ANTENNA_CHECKPOINT_ROOT, ANTENNA_GCS_*)."""
        return cls(root=settings.lake_root, checkpoints=settings.checkpoint_root, project=settings.gcs_project,
                   endpoint=settings.gcs_endpoint)

    @property
    def effective_root(self) -> str:
        return (self.root or Settings.from_env().lake_root).rstrip("/")

    @property
    def effective_checkpoints(self) -> str:
        return (self.checkpoints or f"{self.effective_root}/_checkpoints").rstrip("/")

    @property
    def landing_path(self) -> str:
        """Where the stream lands every parsed message (year/month/day/hour/batch partitions)."""
        return f"{self.effective_root}/landing/devices"

    @property
    def dead_letter_path(self) -> str:
        """Rejected records too large to be kept inline in PostgreSQL's dead_letter (batch partitions)."""
        return f"{self.effective_root}/dead_letter"

    @property
    def raw_devices_path(self) -> str:
        """Closed hours, compacted: the batch layer's input."""
        return f"{self.effective_root}/raw_devices"

    def checkpoint_path(self, query: str) -> str:
        return f"{self.effective_checkpoints}/{query}"

    def settings(self) -> Settings:
        """The environment's settings with this resource's lake: what Spark and the GCS client use."""
        return Settings.from_env().replace(lake_root=self.effective_root, checkpoint_root=self.effective_checkpoints,
                                           gcs_project=self.project, gcs_endpoint=self.endpoint.rstrip("/"))

    def _roots(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys((self.effective_root, self.effective_checkpoints)))

    def validate(self) -> None:
        """Call at start-up, before Spark: a gs:// root must have its bucket and working credentials
        (raises `GcsLakeError` with a one-line reason); a local root is created."""
        settings = self.settings()
        for root in self._roots():
            if lake_gcs.is_gcs(root):
                lake_gcs.validate_gcs_root(settings, root)
            else:
                Path(root).mkdir(parents=True, exist_ok=True)

    def spark_conf(self) -> dict[str, str]:
        """`spark.hadoop.fs.gs.*` this lake needs (empty for a local lake). The connector jar itself
        must be on the classpath when the session starts: `spark_session.spark_conf` adds it."""
        return lake_gcs.spark_conf(self.settings(), self._roots())

    def configure_session(self, session) -> None:
        """Point a running session's gs:// connector at this lake (endpoint, project, credentials):
        `spark.hadoop.*` only applies when a session starts, and the session may predate this resource."""
        settings = self.settings()
        if lake_gcs.uses_gcs(settings, self._roots()):
            lake_gcs.configure_hadoop(session, settings)

    def list_files(self, path: str) -> list[str]:
        """Every file under `path` (a folder of this lake), as full paths or gs:// URLs, sorted."""
        if lake_gcs.is_gcs(path):
            return lake_gcs.list_gcs_files(self.settings(), path)
        return sorted(str(p) for p in Path(path).rglob("*") if p.is_file())

