from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource
from pydantic import Field

from antenna_assets.lake import gcs as lake_gcs
from antenna_assets.settings import Settings


class LakeResource(ConfigurableResource):
    """The data lake root: a local folder (default) or gs://bucket/prefix. Empty: ANTENNA_LAKE_ROOT."""

    root: str = Field(default="", description="lake root; empty: from the environment")
    checkpoints: str = Field(default="", description="streaming checkpoint root; empty: <root>/_checkpoints "
                                                     "when root is set, else ANTENNA_CHECKPOINT_ROOT")
    project: str = Field(default="", description="GCP project of a gs:// lake; empty: ANTENNA_GCS_PROJECT")
    endpoint: str = Field(default="", description="GCS API emulator URL (http://host:port); empty: "
                                                  "ANTENNA_GCS_ENDPOINT, else the real service")

    @property
    def effective_root(self) -> str:
        return (self.root or Settings.from_env().lake_root).rstrip("/")

    @property
    def effective_checkpoints(self) -> str:
        if self.checkpoints:
            return self.checkpoints.rstrip("/")
        # A lake named in config keeps its checkpoints with it, not in the environment's lake.
        return f"{self.effective_root}/_checkpoints" if self.root else Settings.from_env().checkpoint_root.rstrip("/")

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
        settings = Settings.from_env()
        return settings.replace(lake_root=self.effective_root, checkpoint_root=self.effective_checkpoints,
                       gcs_project=self.project or settings.gcs_project,
                       gcs_endpoint=self.endpoint.rstrip("/") or settings.gcs_endpoint)

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

