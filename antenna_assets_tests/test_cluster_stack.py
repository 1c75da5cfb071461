"""The stack's clusters: `ANTENNA_KAFKA_BROKERS=3 ANTENNA_SPARK_WORKERS=2 antenna stack up` starts three KRaft
nodes (every topic on all three, two in sync for a write) and a Spark standalone master with two workers from
pyspark's own jars; the product's sessions run on the workers (executors in JVMs of their own); a node killed
with SIGKILL loses no acknowledged write and `stack up` brings it back; `stack down` leaves nothing. A stack
of its own, on its own folder and ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer

from antenna_assets.stack.process import pid_alive, port_open

pytestmark = pytest.mark.slow  # minutes: a cluster of its own, started, broken and stopped

# Below Linux's ephemeral range (32768-60999), so no client socket can hold them by chance.
PORTS = {"ANTENNA_KAFKA_PORT": "31392", "ANTENNA_POSTGRES_PORT": "31732", "ANTENNA_SPARK_MASTER_PORT": "31077"}
CLI = [sys.executable, "-m", "antenna_assets.cli", "stack"]
BOOTSTRAP = "127.0.0.1:31392,127.0.0.1:31394,127.0.0.1:31396"

# Runs in a process of its own: the test run's Spark session is local, and a process has one SparkContext.
SESSION_ON_THE_CLUSTER = """
import time
from antenna_assets.resources.spark import build_spark_session
from antenna_assets.settings import Settings
spark = build_spark_session(Settings.from_env(), app_name="cluster-test")
def executors():  # registered with the driver, less the driver itself
    return spark.sparkContext._jsc.sc().getExecutorMemoryStatus().size() - 1
deadline = time.monotonic() + 60
while executors() < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
total = spark.range(200000).repartition(4).selectExpr("sum(id) AS s").first().s
print(spark.sparkContext.master, executors(), total)
spark.stop()
"""


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory):
    stack = tmp_path_factory.mktemp("cluster") / "stack"
    env = {**os.environ, "ANTENNA_STACK_DIR": str(stack), "ANTENNA_KAFKA_BROKERS": "3", "ANTENNA_SPARK_WORKERS": "2",
           **PORTS}
    for name in ("ANTENNA_KAFKA_BOOTSTRAP", "ANTENNA_POSTGRES_URL", "ANTENNA_KAFKA_CONTROLLER_PORT",
                 "ANTENNA_SPARK_MASTER", "ANTENNA_LAKE_ROOT"):
        env.pop(name, None)
    try:
        up = subprocess.run([*CLI, "up"], capture_output=True, text=True, timeout=300, env=env)
        assert up.returncode == 0, up.stderr
        assert "spark master started" in up.stdout and up.stdout.count("spark worker") == 2, up.stdout
        assert "kafka started" in up.stdout and BOOTSTRAP in up.stdout, up.stdout
        yield env, stack
    finally:  # whatever failed, this stack does not outlive the module
        subprocess.run([*CLI, "down"], capture_output=True, timeout=180, env=env)


def test_status_shows_the_master_and_each_worker_with_its_cores(cluster_env):
    env, _ = cluster_env
    status = subprocess.run([*CLI, "status"], capture_output=True, text=True, timeout=60, env=env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert "spark master: healthy" in status.stdout and "spark://127.0.0.1:31077" in status.stdout
    for worker in (0, 1):
        assert f"spark worker {worker}: healthy" in status.stdout
    assert status.stdout.count("1 core(s)") == 2


def test_product_sessions_run_on_the_cluster_executors(cluster_env):
    env, _ = cluster_env
    # Every core of the cluster (the stack's default gives an application half of them, so that the
    # streaming run leaves room for a batch run), hence one executor on each worker.
    run = subprocess.run([sys.executable, "-c", SESSION_ON_THE_CLUSTER], capture_output=True, text=True,
                         timeout=300, env={**env, "ANTENNA_SPARK_APP_CORES": "2"})
    assert run.returncode == 0, run.stderr[-2000:]
    master, executors, total = run.stdout.split()[-3:]
    assert master == "spark://127.0.0.1:31077"
    assert int(executors) == 2  # one per worker, each a JVM of its own
    assert int(total) == sum(range(200000))


def _status(env) -> str:
    status = subprocess.run([*CLI, "status"], capture_output=True, text=True, timeout=60, env=env)
    return status.stdout


def test_kafka_nodes_replicate_every_topic_and_report_the_quorum(cluster_env):
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import AdminClient, ConfigResource

    env, _ = cluster_env
    status = _status(env)
    for node in (1, 2, 3):
        assert f"kafka node {node}: healthy" in status
    assert "kafka quorum: leader node" in status and "voters [1, 2, 3]" in status
    assert "under-replicated partitions: none" in status
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    [devices] = admin.describe_topics(TopicCollection(["devices"])).values()
    assert {len(p.replicas) for p in devices.result().partitions} == {3}
    [config] = admin.describe_configs([ConfigResource("topic", "devices")]).values()
    assert config.result()["min.insync.replicas"].value == "2"


def test_a_killed_node_loses_no_acknowledged_write_and_stack_up_brings_it_back(cluster_env):
    from antenna_assets.stack.process import wait_until

    env, stack = cluster_env
    victim = int((stack / "kafka" / "node-2" / "kafka.pid").read_text())
    os.kill(victim, signal.SIGKILL)
    topic_records = [f"record-{i}".encode() for i in range(200)]
    producer = Producer({"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True})
    acknowledged = []
    for value in topic_records:
        producer.produce("devices", value, on_delivery=lambda err, msg: err is None and acknowledged.append(msg.value()))
    assert producer.flush(60) == 0
    assert sorted(acknowledged) == sorted(topic_records)  # two of three replicas in sync: writes go on
    assert wait_until(lambda: "under-replicated partitions: devices/" in _status(env), 60, interval=2)

    up = subprocess.run([*CLI, "up"], capture_output=True, text=True, timeout=300, env=env)
    assert up.returncode == 0, up.stderr
    assert wait_until(lambda: "under-replicated partitions: none" in _status(env), 120, interval=2)
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    consumer.subscribe(["devices"])
    received = []
    try:
        deadline = time.monotonic() + 60
        while len(received) < len(topic_records) and time.monotonic() < deadline:
            received += [m.value() for m in consumer.consume(500, timeout=1) if m.error() is None]
    finally:
        consumer.close()
    assert sorted(received) == sorted(topic_records)


def test_stack_down_stops_master_workers_and_everything_else(cluster_env):
    env, stack = cluster_env
    pids = [int(p.read_text().split()[0]) for p in stack.rglob("*.pid")]
    assert len([p for p in stack.rglob("*.pid") if "spark" in p.parts]) == 3
    assert len([p for p in stack.rglob("kafka.pid")]) == 3
    down = subprocess.run([*CLI, "down"], capture_output=True, text=True, timeout=180, env=env)
    assert down.returncode == 0, down.stderr
    assert "spark master stopped" in down.stdout and down.stdout.count("spark worker") == 2
    assert not any(pid_alive(pid) for pid in pids)
    assert "kafka node 1 stopped" in down.stdout and "kafka node 3 stopped" in down.stdout
    assert not any(port_open(int(port)) for port in (*PORTS.values(), "31078", "31079", "31080", "31393", "31394",
                                                     "31395", "31396", "31397"))
