"""The Spark session: one configuration, shared by Dagster's resource, the CLI, tests and benchmarks."""

from __future__ import annotations

import os
import sys

from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from antenna_assets.lake import gcs as lake_gcs
from antenna_assets.resources.lake import LakeResource
from antenna_assets.settings import Settings
from antenna_assets.stack import jars


def spark_conf(settings: Settings, app_name: str = "antenna_assets", extra: dict[str, str] | None = None) -> dict[str, str]:
    jar_paths = [str(p) for p in jars.spark_jars(settings.jars_dir)]
    if lake_gcs.uses_gcs(settings):
        jar_paths += [str(p) for p in jars.gcs_jars(settings.jars_dir)]
    utc = "-Duser.timezone=UTC"
    conf = {
        "spark.master": settings.spark_master,
        "spark.app.name": app_name,
        "spark.jars": ",".join(jar_paths),
        # Event time is UTC everywhere, whatever the machine's TZ (the original's partition bug).
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": utc,
        "spark.executor.extraJavaOptions": utc,
        "spark.sql.shuffle.partitions": str(settings.spark_shuffle_partitions),
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.ui.enabled": str(settings.spark_ui).lower(),
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        "spark.sql.streaming.forceDeleteTempCheckpointLocation": "true",
        # The speed layer caches each micro-batch once, for seconds: compressing that cache cost ~3 s
        # per million messages (BENCHMARKS.md), more than the rest of its Parquet write.
        "spark.sql.inMemoryColumnarStorage.compressed": "false",
        # Collecting results to the driver through Arrow, not one Python object per row.
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }
    conf.update(lake_gcs.spark_conf(settings))
    conf.update(extra or {})
    return conf


def build_spark_session(settings: Settings | None = None, app_name: str = "antenna_assets",
                        extra: dict[str, str] | None = None):
    """The active session if there is one, else a new one with the product's configuration."""
    from pyspark.sql import SparkSession

    settings = settings or Settings.from_env()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder
    for key, value in spark_conf(settings, app_name, extra).items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel(settings.spark_log_level)
    return session



class SparkResource(ConfigurableResource):
    """A Spark session with the Kafka connector and UTC time. `master` empty: ANTENNA_SPARK_MASTER."""

    master: str = Field(default="", description="local[*], spark://host:7077, ...; empty: from the environment")
    app_name: str = "antenna_assets"
    conf: dict[str, str] = Field(default_factory=dict, description="extra Spark configuration")
    _session = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._session = None

    def session_for(self, lake: LakeResource):
        """The session, able to read and write `lake`: a gs:// lake named only in the resource's config
        still gets the connector jar (new session) and its endpoint, project and credentials."""
        if self._session is None:
            extra = dict(self.conf)
            if self.master:
                extra["spark.master"] = self.master
            self._session = build_spark_session(lake.settings(), self.app_name, extra)
        lake.configure_session(self._session)
        return self._session
