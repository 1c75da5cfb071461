"""The stack's clusters: `ANTENNA_SPARK_WORKERS=2 antenna stack up` starts a Spark standalone master and two
workers from pyspark's own jars, the product's sessions run on them (executors in JVMs of their own), and
`stack down` leaves nothing. A stack of its own, on its own folder and ports."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from antenna_assets.stack.process import pid_alive, port_open

# Below Linux's ephemeral range (32768-60999), so no client socket can hold them by chance.
PORTS = {"ANTENNA_KAFKA_PORT": "31392", "ANTENNA_POSTGRES_PORT": "31732", "ANTENNA_SPARK_MASTER_PORT": "31077"}
CLI = [sys.executable, "-m", "antenna_assets.cli", "stack"]

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
    env = {**os.environ, "ANTENNA_STACK_DIR": str(stack), "ANTENNA_SPARK_WORKERS": "2", **PORTS}
    for name in ("ANTENNA_KAFKA_BOOTSTRAP", "ANTENNA_POSTGRES_URL", "ANTENNA_KAFKA_CONTROLLER_PORT",
                 "ANTENNA_SPARK_MASTER", "ANTENNA_LAKE_ROOT"):
        env.pop(name, None)
    try:
        up = subprocess.run([*CLI, "up"], capture_output=True, text=True, timeout=300, env=env)
        assert up.returncode == 0, up.stderr
        assert "spark master started" in up.stdout and up.stdout.count("spark worker") == 2, up.stdout
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
    run = subprocess.run([sys.executable, "-c", SESSION_ON_THE_CLUSTER], capture_output=True, text=True,
                         timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    master, executors, total = run.stdout.split()[-3:]
    assert master == "spark://127.0.0.1:31077"
    assert int(executors) == 2  # one per worker, each a JVM of its own
    assert int(total) == sum(range(200000))


def test_stack_down_stops_master_workers_and_everything_else(cluster_env):
    env, stack = cluster_env
    pids = [int(p.read_text().split()[0]) for p in stack.rglob("*.pid")]
    assert len([p for p in stack.rglob("*.pid") if "spark" in p.parts]) == 3
    down = subprocess.run([*CLI, "down"], capture_output=True, text=True, timeout=180, env=env)
    assert down.returncode == 0, down.stderr
    assert "spark master stopped" in down.stdout and down.stdout.count("spark worker") == 2
    assert not any(pid_alive(pid) for pid in pids)
    assert not any(port_open(int(port)) for port in (*PORTS.values(), "31078", "31079", "31080"))
