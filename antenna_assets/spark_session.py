"""One way to build the Spark session, shared by Dagster, the CLI, tests and benchmarks."""

from __future__ import annotations

import os
import sys

from antenna_assets import lake_gcs
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
        "spark.driver.memory": os.environ.get("ANTENNA_SPARK_DRIVER_MEMORY", "2g"),
        "spark.ui.enabled": os.environ.get("ANTENNA_SPARK_UI", "false"),
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
    session.sparkContext.setLogLevel(os.environ.get("ANTENNA_SPARK_LOG_LEVEL", "WARN"))
    return session
