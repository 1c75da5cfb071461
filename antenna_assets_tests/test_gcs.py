"""The lake on Google Cloud Storage, against a real GCS API emulator (fake-gcs-server) started here.

Spark reads and writes gs:// through the shaded Hadoop GCS connector; the Python side goes through
dagster-gcp's GCSResource. Data is tiny.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from antenna_assets.lake import gcs as lake_gcs
from antenna_assets.lake.gcs import GcsLakeError
from antenna_assets.lake.layout import hour_partition_dir
from antenna_assets.resources.lake import LakeResource
from antenna_assets.resources.spark import spark_conf
from antenna_assets.errors import StackError
from antenna_assets.stack.gcs_emulator import FAKE_GCS_SERVER_VERSION, GcsEmulator
from antenna_assets_tests.conftest import GCS_BUCKET as BUCKET

HOUR = datetime(2026, 11, 28, 13, tzinfo=timezone.utc)


@pytest.fixture
def gcs_lake(gcs_emulator) -> LakeResource:
    root = f"gs://{BUCKET}/run-{uuid.uuid4().hex[:10]}"
    return LakeResource(root=root, checkpoints=f"{root}/_checkpoints", endpoint=gcs_emulator.endpoint)


def test_spark_conf_adds_the_connector_only_for_a_gcs_lake(settings, tmp_path):
    local = settings.replace(lake_root=str(tmp_path), checkpoint_root=str(tmp_path / "cp"), gcs_endpoint="")
    assert not any(key.startswith("spark.hadoop.fs.gs") for key in spark_conf(local))
    assert "gcs-connector" not in spark_conf(local)["spark.jars"]

    production = local.replace(lake_root="gs://bucket/lake", gcs_project="proj",
                         gcs_credentials_file="/secrets/key.json")
    conf = spark_conf(production)
    assert "gcs-connector-" in conf["spark.jars"] and "spark-sql-kafka" in conf["spark.jars"]
    assert conf["spark.hadoop.fs.gs.impl"] == "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFileSystem"
    assert conf["spark.hadoop.fs.AbstractFileSystem.gs.impl"] == "com.google.cloud.hadoop.fs.gcs.GoogleHadoopFS"
    assert conf["spark.hadoop.fs.gs.project.id"] == "proj"
    assert conf["spark.hadoop.fs.gs.auth.type"] == "SERVICE_ACCOUNT_JSON_KEYFILE"
    assert conf["spark.hadoop.fs.gs.auth.service.account.json.keyfile"] == "/secrets/key.json"
    assert "spark.hadoop.fs.gs.storage.root.url" not in conf

    adc = spark_conf(production.replace(gcs_credentials_file=""))
    assert adc["spark.hadoop.fs.gs.auth.type"] == "APPLICATION_DEFAULT"


def test_emulator_serves_the_bucket(gcs_emulator, settings):
    assert gcs_emulator.status()[0]
    client = lake_gcs.gcs_client(settings)
    assert client.lookup_bucket(BUCKET) is not None


def test_parquet_round_trip_partitioned_by_utc_hour(spark, gcs_lake):
    from pyspark.sql import functions as F

    start = int(HOUR.timestamp())
    rows = [(f"user-{i:02d}", start + i * 900, i * 100) for i in range(8)]  # 13:00 .. 14:45 UTC
    ts = F.timestamp_seconds("timestamp")
    frame = (spark.createDataFrame(rows, "id string, timestamp long, bytes long")
             .select("*", F.year(ts).alias("year"), F.month(ts).alias("month"),
                     F.dayofmonth(ts).alias("day"), F.hour(ts).alias("hour")))
    path = gcs_lake.raw_devices_path
    frame.write.mode("overwrite").partitionBy("year", "month", "day", "hour").parquet(path)

    back = spark.read.parquet(path)
    assert sorted(back.select(*frame.columns).collect()) == sorted(frame.collect())
    assert all(f.startswith(f"{path}/") for f in back.inputFiles())
    one_hour = spark.read.parquet(f"{path}/{hour_partition_dir(HOUR)}")
    assert sorted(r.id for r in one_hour.collect()) == ["user-00", "user-01", "user-02", "user-03"]

    files = gcs_lake.list_files(path)
    for hour in (HOUR, HOUR + timedelta(hours=1)):
        assert any(f.startswith(f"{path}/{hour_partition_dir(hour)}/part-") for f in files), files
    # Dynamic partition overwrite (the product's mode) commits by renames: nothing staged may remain.
    assert not any("_temporary" in f or ".spark-staging" in f for f in files), files


def test_streaming_checkpoint_on_gcs_resumes_after_restart(spark, gcs_lake, settings):
    bucket = lake_gcs.gcs_client(settings).bucket(BUCKET)
    _, root_prefix = lake_gcs.split_gcs_url(gcs_lake.effective_root)
    inbox, sink = f"{gcs_lake.effective_root}/inbox", f"{gcs_lake.effective_root}/copied"
    checkpoint = gcs_lake.checkpoint_path("copy")

    def drop(name: str, ids: list[int]) -> None:
        lines = "\n".join(json.dumps({"id": i}) for i in ids)
        bucket.blob(f"{root_prefix}/inbox/{name}.json").upload_from_string(lines)

    def run_until_caught_up() -> list[dict]:
        query = (spark.readStream.schema("id long").json(inbox)
                 .writeStream.format("parquet").option("checkpointLocation", checkpoint)
                 .trigger(availableNow=True).start(sink))
        query.awaitTermination(180)
        assert query.exception() is None
        return [p for p in query.recentProgress if p["numInputRows"]]

    drop("a", [1, 2, 3])
    first = run_until_caught_up()
    assert [(p["batchId"], p["numInputRows"]) for p in first] == [(0, 3)]

    drop("b", [4, 5])
    second = run_until_caught_up()  # a new query on the same checkpoint: only the new file
    assert [(p["batchId"], p["numInputRows"]) for p in second] == [(1, 2)]

    assert sorted(r.id for r in spark.read.parquet(sink).collect()) == [1, 2, 3, 4, 5]
    committed = gcs_lake.list_files(f"{checkpoint}/commits")
    assert [f.rsplit("/", 1)[1] for f in committed] == ["0", "1"]


def test_validate_accepts_an_existing_bucket_and_creates_a_local_root(gcs_lake, tmp_path):
    gcs_lake.validate()
    local = LakeResource(root=str(tmp_path / "lake"), checkpoints=str(tmp_path / "checkpoints"))
    local.validate()
    assert (tmp_path / "lake").is_dir() and (tmp_path / "checkpoints").is_dir()


def test_validate_names_a_missing_bucket(gcs_emulator):
    lake = LakeResource(root="gs://antenna-no-such-bucket/lake", checkpoints="gs://antenna-no-such-bucket/cp",
                        endpoint=gcs_emulator.endpoint)
    with pytest.raises(GcsLakeError) as failure:
        lake.validate()
    message = str(failure.value)
    assert "'antenna-no-such-bucket' does not exist" in message and "ANTENNA_LAKE_ROOT" in message
    assert "\n" not in message


@pytest.mark.parametrize("credentials_file", ["", "/nonexistent/antenna-key.json"])
def test_validate_says_which_variable_sets_credentials(tmp_path, credentials_file):
    """Without an emulator and without credentials; run apart so no client state is shared."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ANTENNA_GCS_ENDPOINT", "STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")}
    env.update(
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),  # no gcloud login of the machine's user
        # No probe of a cloud metadata server: it would leave the loopback.
        NO_GCE_CHECK="true", GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
    )
    if credentials_file:
        env["GOOGLE_APPLICATION_CREDENTIALS"] = credentials_file
    code = (
        "from antenna_assets.lake.gcs import GcsLakeError\n"
        "from antenna_assets.resources import LakeResource\n"
        "try:\n"
        "    LakeResource(root='gs://antenna-lake/x', checkpoints='gs://antenna-lake/cp').validate()\n"
        "except GcsLakeError as exc:\n"
        "    print(exc)\n"
        "    raise SystemExit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    message = proc.stdout.strip()
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message and "\n" not in message
    if credentials_file:
        assert credentials_file in message and "no such file" in message
    else:
        assert "no Google Cloud credentials" in message


def test_emulator_refuses_a_port_in_use(settings, tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        emulator = GcsEmulator(settings.replace(stack_dir=tmp_path, gcs_emulator_port=port))
        with pytest.raises(StackError, match=f"port {port} is already in use"):
            emulator.up()


def test_emulator_build_says_go_is_missing(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match="Go is not installed"):
        GcsEmulator(settings.replace(stack_dir=tmp_path)).install()


def test_emulator_that_exits_at_start_is_reported_with_its_log(settings, tmp_path):
    emulator = GcsEmulator(settings.replace(stack_dir=tmp_path, gcs_emulator_port=_free_port()))
    emulator.binary.parent.mkdir(parents=True)
    emulator.binary.write_text("#!/bin/sh\necho 'listen: address unavailable' >&2\nexit 3\n")
    emulator.binary.chmod(0o755)
    emulator.binary.with_name("fake-gcs-server.version").write_text(FAKE_GCS_SERVER_VERSION)
    with pytest.raises(StackError, match="gcs emulator did not start(.|\n)*listen: address unavailable"):
        emulator.up()
    assert not emulator.pid_file.exists()
    assert emulator.status() == (False, "gcs emulator: not running")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_gcs_lake_named_only_in_resource_config_works(settings, gcs_emulator, spark, topic, serving_db, monkeypatch):
    """gs:// root, project and emulator endpoint given only as LakeResource config: the speed layer
    lands the hour in the bucket, then raw_devices and the hourly tables read it back from there."""
    import dagster as dg

    from antenna_assets.assets.batch import hourly_tables, raw_devices
    from antenna_assets.assets.sources import user_metadata
    from antenna_assets.assets.speed import speed_layer
    from antenna_assets.serving.schema import BYTES_AGG_APP_1H
    from antenna_assets.resources import PostgresResource, SparkResource
    from antenna_assets.sources.simulator import SimulatorConfig, run_simulation
    from antenna_assets_tests.truth import expected, query

    # A bucket of its own: Hadoop caches one gs:// file system per bucket, built from the configuration
    # of its first use, and the earlier tests' bucket was first used with the environment's endpoint.
    bucket = f"antenna-resource-{uuid.uuid4().hex[:8]}"
    gcs_emulator.ensure_bucket(bucket)
    for variable in ("ANTENNA_GCS_ENDPOINT", "ANTENNA_LAKE_ROOT", "ANTENNA_CHECKPOINT_ROOT", "STORAGE_EMULATOR_HOST"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ANTENNA_TOPIC", topic)
    # The shared session started with the environment's emulator endpoint; point it nowhere, so only
    # the resource can lead the connector to the emulator.
    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    before = hadoop.get("fs.gs.storage.root.url")
    hadoop.set("fs.gs.storage.root.url", "http://127.0.0.1:9")
    hour = datetime(2025, 9, 3, 7)
    try:
        truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                               start=hour + timedelta(minutes=10), seed=5, progress=False))
        lake = LakeResource(root=f"gs://{bucket}/lake", project="antenna-resource-test",
                            endpoint=gcs_emulator.endpoint)
        resources = {"postgres": PostgresResource(url=serving_db), "lake": lake, "spark": SparkResource.for_lake(lake)}
        streamed = dg.materialize(
            [speed_layer], instance=dg.DagsterInstance.ephemeral(), resources=resources,
            run_config={"ops": {"speed_layer": {"config": {"trigger": "available_now", "watermark": "3650 days",
                                                           "query_name": topic}}}})
        assert streamed.success
        batch = dg.materialize([user_metadata, raw_devices, hourly_tables], instance=dg.DagsterInstance.ephemeral(),
                               resources=resources, partition_key=f"{hour:%Y-%m-%d-%H:%M}")
        assert batch.success
    finally:
        if before is None:
            hadoop.unset("fs.gs.storage.root.url")
        else:
            hadoop.set("fs.gs.storage.root.url", before)

    files = lake.list_files(f"gs://{bucket}/lake")
    assert any(f.startswith(f"gs://{bucket}/lake/landing/devices/{hour_partition_dir(hour)}/") for f in files), files
    assert any(f.startswith(f"gs://{bucket}/lake/raw_devices/{hour_partition_dir(hour)}/part-") for f in files), files
    assert any(f.startswith(f"gs://{bucket}/lake/_checkpoints/{topic}/commits/") for f in files), files
    apps = query(serving_db, f"SELECT {BYTES_AGG_APP_1H.key}, date, {BYTES_AGG_APP_1H.value} FROM {BYTES_AGG_APP_1H.name}")
    assert {(k, d): int(v) for k, d, v in apps} == expected(truth, "app", hourly=True)
