"""The Spark session: one configuration, shared by Dagster's resource, the CLI, tests and benchmarks."""

from __future__ import annotations

import os
import sys

from dagster_pyspark import LazyPySparkResource
from dagster_pyspark.resources import spark_session_from_config
from pydantic import Field

from antenna_assets.lake import gcs as lake_gcs
from antenna_assets.resources.lake import LakeResource
from antenna_assets.settings import Settings
from antenna_assets.stack import jars


TRIGGER_EXECUTOR_LOGGER = "org.apache.spark.sql.execution.streaming.runtime.ProcessingTimeExecutor"
LOCAL_FILE_SYSTEM = "com.globalmentor.apache.hadoop.fs.BareLocalFileSystem"


def local_files_conf(settings: Settings) -> dict[str, str]:
    """Hadoop's local file system without its native library (no package here ships it) runs `chmod`
    as a process for every file and folder it creates: ~10-20 in every live micro-batch, ~8 ms each
    (BENCHMARKS.md, Speed layer). The same file system on java.nio instead. On the driver's class path,
    so for local masters only: a cluster's executors are JVMs of their own."""
    jar_paths = [str(p) for p in jars.local_fs_jars(settings.jars_dir)]
    return {"spark.driver.extraClassPath": ":".join(jar_paths), "spark.hadoop.fs.file.impl": LOCAL_FILE_SYSTEM}


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
        "spark.driver.extraJavaOptions": f"{utc} {settings.spark_driver_java_options}".strip(),
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
    if settings.spark_master.startswith("spark://") and settings.spark_app_cores:
        conf["spark.cores.max"] = str(settings.spark_app_cores)
    conf.update(lake_gcs.spark_conf(settings))
    if (extra or {}).get("spark.master", settings.spark_master).startswith("local"):
        conf.update(local_files_conf(settings))
    conf.update(extra or {})
    return conf


def build_spark_session(settings: Settings | None = None, app_name: str = "antenna_assets",
                        extra: dict[str, str] | None = None):
    """The active session if there is one, else a new one with the product's configuration, built the
    way dagster-pyspark builds its resources' sessions."""
    settings = settings or Settings.from_env()
    use_this_python()
    session = spark_session_from_config(spark_conf(settings, app_name, extra))
    quiet(session, settings.spark_log_level)
    return session


def use_this_python() -> None:
    # Spark starts its Python workers (Arrow, UDFs) with `python3` from PATH otherwise, which in a
    # Dagster run or a test process need not be this virtualenv's interpreter with its packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


def quiet(session, log_level: str) -> None:
    """Spark's log level, and no warning at every micro-batch that outlasts its trigger."""
    session.sparkContext.setLogLevel(log_level)
    # The speed layer's default trigger (500 ms) is shorter than a loaded micro-batch on purpose: the next
    # batch starts when one ends. Spark would warn that the batch "is falling behind" at every batch; the
    # stream's progress reports say how far behind Kafka it is instead.
    log4j = session.sparkContext._jvm.org.apache.logging.log4j
    log4j.core.config.Configurator.setLevel(TRIGGER_EXECUTOR_LOGGER, log4j.Level.ERROR)


class SparkResource(LazyPySparkResource):
    """dagster-pyspark's lazy Spark session, configured for its lake: `spark_config` is the whole
    configuration the session starts with (`spark_conf`: the Kafka and, for a gs:// lake, GCS
    connectors, UTC time), given in Definitions so the Resources page shows it."""

    lake: LakeResource
    log_level: str = Field(description="Spark's log level (ANTENNA_SPARK_LOG_LEVEL)")

    @classmethod
    def for_lake(cls, lake: LakeResource, extra: dict[str, str] | None = None) -> "SparkResource":
        """The product's configuration (ANTENNA_SPARK_*) for `lake`, with `extra` keys over it."""
        settings = lake.settings()
        return cls(lake=lake, spark_config=spark_conf(settings, extra=extra), log_level=settings.spark_log_level)

    def session(self):
        """The session, able to read and write the lake: created from `spark_config` on first use, and
        pointed at the lake's endpoint, project and credentials (it may predate this resource)."""
        use_this_python()
        session = self.spark_session
        quiet(session, self.log_level)
        self.lake.configure_session(session)
        return session
