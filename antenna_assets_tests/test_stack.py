"""The local stack's real services answer: broker round trip, Spark's Kafka source, PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer


def test_kafka_round_trip(settings, topic):
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    payload = json.dumps({"probe": uuid.uuid4().hex})
    producer.produce(topic, payload.encode())
    assert producer.flush(10) == 0

    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    try:
        received = None
        for _ in range(60):
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                received = msg.value().decode()
                break
    finally:
        consumer.close()
    assert received == payload


def test_spark_batch_reads_topic(settings, spark, topic):
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(7):
        producer.produce(topic, json.dumps({"i": i}).encode())
    assert producer.flush(10) == 0
    rows = (spark.read.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest").option("endingOffsets", "latest")
            .load().selectExpr("CAST(value AS STRING) AS v").collect())
    assert sorted(json.loads(r.v)["i"] for r in rows) == list(range(7))


def test_spark_session_is_utc(spark):
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
    [row] = spark.sql("SELECT CAST(CAST(0 AS TIMESTAMP) AS STRING) AS t").collect()
    assert row.t == "1970-01-01 00:00:00"


CONTRACT_TABLES = {  # DATA_CONTRACT.md section 4, and the operators' table of section 3
    "user_metadata": (["id", "name", "email", "quota"], ["id"]),
    "bytes_agg_antenna": (["antenna_id", "date", "sum_antenna_bytes"], ["antenna_id", "date"]),
    "bytes_agg_user": (["id", "date", "sum_user_bytes"], ["id", "date"]),
    "bytes_agg_app": (["app", "date", "sum_app_bytes"], ["app", "date"]),
    "bytes_agg_antenna_1h": (["antenna_id", "date", "sum_antenna_bytes"], ["antenna_id", "date"]),
    "bytes_agg_user_1h": (["email", "date", "sum_user_bytes"], ["email", "date"]),
    "bytes_agg_app_1h": (["app", "date", "sum_app_bytes"], ["app", "date"]),
    "users_over_quota_1h": (["email", "date", "quota", "sum_user_bytes"], ["email", "date"]),
}


def test_migration_gives_every_contract_table_its_columns_and_primary_key(serving_db):
    """The original's first defect was tables without keys, so every re-run appended duplicates."""
    import psycopg2

    from antenna_assets.serving.migration import migrate
    from antenna_assets_tests.truth import query

    conn = psycopg2.connect(serving_db)
    try:
        migrate(conn)  # a second migration changes nothing
        for table, (columns, key) in CONTRACT_TABLES.items():
            found = query(serving_db, "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                                      "ORDER BY ordinal_position", (table,))
            assert [c for (c,) in found][:len(columns)] == columns, table
            primary = query(serving_db, "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                                        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s::regclass AND i.indisprimary",
                            (table,))
            assert sorted(c for (c,) in primary) == sorted(key), table
        with pytest.raises(psycopg2.errors.UniqueViolation), conn.cursor() as cur:
            for _ in range(2):
                cur.execute("INSERT INTO bytes_agg_app_1h VALUES ('SKYPE', '2026-01-01 00:00', 1)")
    finally:
        conn.close()


def test_stack_cli_status_and_idempotent_up(settings):
    cli = [sys.executable, "-m", "antenna_assets.cli", "stack"]
    up = subprocess.run([*cli, "up"], capture_output=True, text=True, timeout=120)
    assert up.returncode == 0, up.stderr
    assert "already running" in up.stdout
    status = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0
    assert "kafka: healthy" in status.stdout and "postgres: healthy" in status.stdout


def test_port_in_use_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = {"ANTENNA_STACK_DIR": str(tmp_path), "ANTENNA_POSTGRES_PORT": str(port),
               "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
        proc = subprocess.run([sys.executable, "-m", "antenna_assets.cli", "stack", "up"], capture_output=True,
                              text=True, timeout=60, env=env)
    assert proc.returncode == 1
    assert f"port {port} is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_java_is_a_clear_error(tmp_path, monkeypatch):

    from antenna_assets.settings import Settings
    from antenna_assets.errors import StackError
    from antenna_assets.stack.kafka import KafkaBroker

    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    broker = KafkaBroker(Settings.from_env().replace(stack_dir=tmp_path, kafka_port=1, kafka_controller_port=2))
    with pytest.raises(StackError, match="Java is not installed"):
        broker.up()


def _closed_port() -> int:
    """A port nothing listens on: bound, then released."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_external_postgres_is_a_clear_error(tmp_path):
    env = {**os.environ, "ANTENNA_STACK_DIR": str(tmp_path),
           "ANTENNA_POSTGRES_URL": f"postgresql://postgres:x@127.0.0.1:{_closed_port()}/antenna"}
    proc = subprocess.run([sys.executable, "-m", "antenna_assets.cli", "stack", "up"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("antenna: error: cannot connect to PostgreSQL at postgresql://postgres:***@")
    assert "Traceback" not in proc.stderr


def test_failed_jar_download_is_a_clear_error(tmp_path):
    from antenna_assets.stack import jars
    from antenna_assets.errors import StackError

    with pytest.raises(StackError, match="could not download the nonexistent jars"):
        jars.fetch("nonexistent", ("org.apache.kafka:no-such-artifact-anywhere:0.0.1",), tmp_path)


def test_a_bad_setting_is_one_line_for_the_cli_and_for_dagsters_load(tmp_path):
    env = {**os.environ, "ANTENNA_KAFKA_PORT": "not-a-port"}
    cli = subprocess.run([sys.executable, "-m", "antenna_assets.cli", "stack", "status"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert cli.returncode == 1
    assert cli.stderr == "antenna: error: ANTENNA_KAFKA_PORT='not-a-port' is not an integer\n"
    dagster = subprocess.run([str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-m",
                              "antenna_assets.definitions"], capture_output=True, text=True, timeout=300, env=env,
                             cwd=tmp_path)
    assert dagster.returncode != 0
    assert "ANTENNA_KAFKA_PORT='not-a-port' is not an integer" in dagster.stdout + dagster.stderr


def test_the_stream_against_an_unreachable_postgres_is_one_line(tmp_path):
    env = {**os.environ, "ANTENNA_LAKE_ROOT": str(tmp_path),
           "ANTENNA_POSTGRES_URL": f"postgresql://postgres:secret@127.0.0.1:{_closed_port()}/antenna"}
    proc = subprocess.run([sys.executable, "-m", "antenna_assets.cli", "stream", "--available-now"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("antenna: error: cannot connect to PostgreSQL at postgresql://postgres:***@")
    assert proc.stderr.count("\n") == 1 and "secret" not in proc.stderr


def test_stack_down_leaves_no_process_and_no_port(tmp_path):
    """A second stack on its own folder and ports, up then down: nothing of it is left."""
    from antenna_assets.stack.process import pid_alive, port_open

    # Below Linux's ephemeral range (32768-60999), so no client socket can hold them by chance.
    ports = {"ANTENNA_KAFKA_PORT": "31192", "ANTENNA_POSTGRES_PORT": "31532"}
    env = {**os.environ, "ANTENNA_STACK_DIR": str(tmp_path / "stack"), **ports}
    for name in ("ANTENNA_KAFKA_BOOTSTRAP", "ANTENNA_POSTGRES_URL", "ANTENNA_KAFKA_CONTROLLER_PORT"):
        env.pop(name, None)
    cli = [sys.executable, "-m", "antenna_assets.cli", "stack"]
    try:
        up = subprocess.run([*cli, "up"], capture_output=True, text=True, timeout=180, env=env)
        assert up.returncode == 0, up.stderr
        pids = [int(p.read_text().split()[0]) for p in (tmp_path / "stack").rglob("*.pid")]
        pids.append(int((tmp_path / "stack/postgres/data/postmaster.pid").read_text().splitlines()[0]))
        assert len(pids) >= 2 and all(pid_alive(pid) for pid in pids)
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, timeout=180, env=env)
        assert down.returncode == 0, down.stderr
        assert not any(pid_alive(pid) for pid in pids)
        assert not any(port_open(int(port)) for port in (*ports.values(), "31193"))
    finally:  # whatever failed above, this stack does not outlive the test
        subprocess.run([*cli, "down"], capture_output=True, timeout=180, env=env)
