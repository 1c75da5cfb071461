"""The local stack's real services answer: broker round trip, Spark's Kafka source, PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

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


def test_postgres_accepts_writes(postgres):
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("CREATE TEMP TABLE probe (v TEXT)")
        cur.execute("INSERT INTO probe VALUES (%s)", ("hello",))
        cur.execute("SELECT v FROM probe")
        assert cur.fetchone() == ("hello",)


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
    from dataclasses import replace

    from antenna_assets.settings import Settings
    from antenna_assets.stack.errors import StackError
    from antenna_assets.stack.kafka import KafkaBroker

    monkeypatch.setenv("PATH", str(tmp_path))  # no java on it
    broker = KafkaBroker(replace(Settings.from_env(), stack_dir=tmp_path, kafka_port=1, kafka_controller_port=2))
    with pytest.raises(StackError, match="Java is not installed"):
        broker.up()


def test_unreachable_external_postgres_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    env = {**os.environ, "ANTENNA_STACK_DIR": str(tmp_path),
           "ANTENNA_POSTGRES_URL": f"postgresql://postgres:x@127.0.0.1:{closed_port}/antenna"}
    proc = subprocess.run([sys.executable, "-m", "antenna_assets.cli", "stack", "up"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 1
    assert proc.stderr.startswith("antenna: error: cannot connect to PostgreSQL at postgresql://postgres:***@")
    assert "Traceback" not in proc.stderr


def test_failed_jar_download_is_a_clear_error(tmp_path):
    from antenna_assets.stack import jars
    from antenna_assets.stack.errors import StackError

    with pytest.raises(StackError, match="could not download the nonexistent jars"):
        jars.fetch("nonexistent", ("org.apache.kafka:no-such-artifact-anywhere:0.0.1",), tmp_path)
