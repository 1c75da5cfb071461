"""Fetch and cache the Java artifacts: the Kafka broker, Spark's Kafka connector, the GCS connector,
a local file system for Hadoop that starts no processes.

Maven resolves them (with transitive dependencies) from the configured repository into
`<stack>/jars/<set>/`. A marker file records the coordinates, so a second call is free and a
version bump refetches.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from antenna_assets.settings import KAFKA_VERSION, SPARK_VERSION
from antenna_assets.errors import StackError

KAFKA_ARTIFACTS = (
    f"org.apache.kafka:kafka_2.13:{KAFKA_VERSION}",
    f"org.apache.kafka:kafka-tools:{KAFKA_VERSION}",
    "org.apache.logging.log4j:log4j-slf4j-impl:2.24.3",
)
# Only what pyspark does not already ship; the version is pinned to the pyspark version.
SPARK_KAFKA_ARTIFACTS = (f"org.apache.spark:spark-sql-kafka-0-10_2.13:{SPARK_VERSION}",)
# Hadoop's GCS connector, shaded. 4.0.x is the line that runs on pyspark 4.2's Hadoop 3.5 client:
# 3.1.x fails reading Parquet (NoSuchMethodError VectoredReadUtils.validateRangeRequest), and the
# releases after 4.0.4 publish no shaded jar.
GCS_CONNECTOR_VERSION = "4.0.4"
GCS_CONNECTOR_ARTIFACTS = (f"com.google.cloud.bigdataoss:gcs-connector:{GCS_CONNECTOR_VERSION}:shaded",)
# Hadoop's local file system through java.nio (resources/spark.py says why); alone, without the older
# hadoop-common it was built against: pyspark's Hadoop client provides those classes.
LOCAL_FS_ARTIFACTS = ("com.globalmentor:hadoop-bare-naked-local-fs:0.1.0",)

_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>antenna</groupId><artifactId>jars</artifactId><version>1</version>
  <dependencies>{deps}</dependencies>
</project>
"""


def _dependency(coordinate: str, transitive: bool) -> str:
    """`group:artifact:version`, or `group:artifact:version:classifier` for a self-contained (shaded) jar."""
    g, a, v, *classifier = coordinate.split(":")
    xml = f"<groupId>{g}</groupId><artifactId>{a}</artifactId><version>{v}</version>"
    if classifier:
        xml += f"<classifier>{classifier[0]}</classifier>"
    if classifier or not transitive:
        # A shaded jar bundles its dependencies, a non-transitive one uses those already on the class path:
        # resolving them would only add conflicts.
        xml += "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion></exclusions>"
    return f"<dependency>{xml}</dependency>"


def _pom(coordinates: tuple[str, ...], transitive: bool = True) -> str:
    return _POM.format(deps="".join(_dependency(c, transitive) for c in coordinates))


def _pyspark_jar_names() -> set[str]:
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    return {_artifact_name(p.name) for p in jars.glob("*.jar")}


def _artifact_name(jar_file: str) -> str:
    """`kafka-clients-3.9.2.jar` -> `kafka-clients`."""
    stem = jar_file[: -len(".jar")]
    parts = stem.split("-")
    while parts and parts[-1][:1].isdigit():
        parts.pop()
    return "-".join(parts) or stem


def fetch(name: str, coordinates: tuple[str, ...], jars_dir: Path, skip_provided_by_pyspark: bool = False,
          transitive: bool = True) -> list[Path]:
    """Resolve `coordinates` (with their dependencies if `transitive`) into `jars_dir/name` once; return
    the jar paths."""
    target = jars_dir / name
    marker = target / ".coordinates"
    wanted = "\n".join(coordinates)
    if marker.exists() and marker.read_text() == wanted:
        return sorted(target.glob("*.jar"))
    if shutil.which("mvn") is None:
        raise StackError("Maven (mvn) is not installed: it fetches the Kafka and Spark jars. Install it (apt-get install maven).")
    with tempfile.TemporaryDirectory() as build:
        (Path(build) / "pom.xml").write_text(_pom(coordinates, transitive))
        staging = Path(build) / "out"
        proc = subprocess.run(
            ["mvn", "-q", "-B", "dependency:copy-dependencies", f"-DoutputDirectory={staging}", "-DincludeScope=runtime"],
            cwd=build, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            detail = next((line for line in proc.stdout.splitlines() if "ERROR" in line), proc.stderr.strip()[:300])
            raise StackError(f"could not download the {name} jars ({', '.join(coordinates)}): {detail}. "
                             "Check the network and the Maven settings, then retry.")
        provided = _pyspark_jar_names() if skip_provided_by_pyspark else set()
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for jar in staging.glob("*.jar"):
            if _artifact_name(jar.name) not in provided:
                shutil.copy2(jar, target / jar.name)
    marker.write_text(wanted)
    return sorted(target.glob("*.jar"))


def kafka_jars(jars_dir: Path) -> list[Path]:
    return fetch("kafka", KAFKA_ARTIFACTS, jars_dir)


def spark_jars(jars_dir: Path) -> list[Path]:
    return fetch("spark", SPARK_KAFKA_ARTIFACTS, jars_dir, skip_provided_by_pyspark=True)


def gcs_jars(jars_dir: Path) -> list[Path]:
    return fetch("gcs", GCS_CONNECTOR_ARTIFACTS, jars_dir)


def local_fs_jars(jars_dir: Path) -> list[Path]:
    return fetch("local_fs", LOCAL_FS_ARTIFACTS, jars_dir, transitive=False)
