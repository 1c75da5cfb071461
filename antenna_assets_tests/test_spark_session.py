"""The Spark driver's JVM runs with the product's options (the shared test session is built as production's)."""

from __future__ import annotations

import os
import stat

from antenna_assets.resources.spark import LOCAL_FILE_SYSTEM, TRIGGER_EXECUTOR_LOGGER, spark_conf


def _jvm_arguments(spark) -> list[str]:
    runtime = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
    return list(runtime.getInputArguments())


def _garbage_collectors(spark) -> set[str]:
    beans = spark.sparkContext._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()
    return {bean.getName() for bean in beans}


def test_driver_runs_with_utc_and_the_configured_java_options(spark, settings):
    arguments = _jvm_arguments(spark)
    assert "-Duser.timezone=UTC" in arguments
    for option in settings.spark_driver_java_options.split():
        assert option in arguments
    if "-XX:+UseSerialGC" in settings.spark_driver_java_options.split():
        # The serial collector's two generations; G1's are "G1 Young Generation" / "G1 Old Generation".
        assert _garbage_collectors(spark) == {"Copy", "MarkSweepCompact"}


def test_java_options_follow_the_time_zone_and_can_be_emptied(settings):
    assert spark_conf(settings.replace(spark_driver_java_options=""))["spark.driver.extraJavaOptions"] == \
        "-Duser.timezone=UTC"
    assert spark_conf(settings.replace(spark_driver_java_options="-XX:+UseG1GC -Xss4m"))[
        "spark.driver.extraJavaOptions"] == "-Duser.timezone=UTC -XX:+UseG1GC -Xss4m"


def test_a_trigger_shorter_than_the_batch_is_not_a_warning_per_batch(spark):
    log4j = spark.sparkContext._jvm.org.apache.logging.log4j
    logger = log4j.LogManager.getLogger(TRIGGER_EXECUTOR_LOGGER)
    # The class must still exist under that name, or the setting silences nothing.
    spark.sparkContext._jvm.java.lang.Class.forName(TRIGGER_EXECUTOR_LOGGER)
    assert not logger.isWarnEnabled() and logger.isErrorEnabled()


def test_local_files_go_through_java_with_their_permissions(spark, tmp_path):
    """Hadoop's own local file system would run `chmod` as a process for each of these calls."""
    jvm = spark.sparkContext._jvm
    hadoop = jvm.org.apache.hadoop.fs
    folder = hadoop.Path(tmp_path.as_uri() + "/made")
    file_system = folder.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())
    assert file_system.getClass().getName() == LOCAL_FILE_SYSTEM
    assert file_system.mkdirs(folder, hadoop.permission.FsPermission.valueOf("drwxr-x---"))
    assert stat.S_IMODE(os.stat(tmp_path / "made").st_mode) == 0o750
    data = hadoop.Path(folder, "data")
    file_system.create(data, True).close()
    file_system.setPermission(data, hadoop.permission.FsPermission.valueOf("-rw-r-----"))
    assert stat.S_IMODE(os.stat(tmp_path / "made" / "data").st_mode) == 0o640
    assert str(file_system.getFileStatus(data).getPermission()) == "rw-r-----"


def test_a_cluster_keeps_hadoops_own_local_file_system(settings):
    """Its executors are other JVMs, without the driver's class path."""
    assert spark_conf(settings)["spark.hadoop.fs.file.impl"] == LOCAL_FILE_SYSTEM
    cluster = spark_conf(settings, extra={"spark.master": "spark://spark-master:7077"})
    assert "spark.hadoop.fs.file.impl" not in cluster and "spark.driver.extraClassPath" not in cluster
