"""Faults on the clusters: three Kafka brokers and a Spark standalone master with two workers, with nothing
lost and nothing counted twice.

A stack of its own (folder, ports): `ANTENNA_KAFKA_BROKERS=3` (every topic on three brokers, a write needs
two in sync), `ANTENNA_SPARK_WORKERS=2` (1 core, 1g each), PostgreSQL and the lake on the GCS emulator. A
real `dagster-daemon` whose streaming sensor keeps one speed_layer_job run alive on the `spark://` master,
as test_faults.py does on local[2] with its machinery and assertions. Paced simulator traffic (a closed
hour's backfill at a few hundred events a second) meets, one after the other and without a pause between
them:
- `kill -9` of the broker that leads a partition of the topic: the same streaming run goes on;
- `kill -9` of the Spark worker running the stream's executor, with that executor: Spark reschedules on
  the other worker (or the run fails and the sensor relaunches it); the worker is started again;
- `kill -9` of a second broker while the first is down: one broker answers, fewer than min.insync.replicas,
  so nothing is acknowledged; the simulator waits and says so in one line (NOT_ENOUGH_REPLICAS); both
  brokers are started again and the waiting messages delivered.
Then the closed hour's hourly batch runs on the cluster (`dagster job execute`, beside the streaming run),
and the lake, the three 5-minute tables and the hourly tables equal the simulator's ground truth.

Run it alone with `pytest -m cluster`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from antenna_assets.hours import partition_key
from antenna_assets.kafka_client import admin_client, librdkafka_config
from antenna_assets.resources import LakeResource
from antenna_assets.settings import Settings
from antenna_assets.stack.process import pid_alive, wait_until
from antenna_assets_tests.test_faults import (REPO, RECOVERY_TIMEOUT, FaultStack, Pipeline, assert_hourly_rows_equal_truth,
                                              assert_lake_equals_truth, assert_speed_tables_equal_truth, environment,
                                              own_stack, running_pipeline, start_traffic)

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

# Below the ephemeral range (32768+), apart from the session stack's, test_faults.py's and test_cluster_stack.py's.
# Kafka's nodes listen on 27392/27394/27396 (controllers on the next port each); Spark's master on 27077,
# its web UI on 27078 and the workers' on 27079-27080.
CLUSTER_PORTS = {"ANTENNA_KAFKA_PORT": "27392", "ANTENNA_POSTGRES_PORT": "27732", "ANTENNA_GCS_EMULATOR_PORT": "27543",
                 "ANTENNA_SPARK_MASTER_PORT": "27077"}
CLUSTERS = {"ANTENNA_KAFKA_BROKERS": "3", "ANTENNA_SPARK_WORKERS": "2"}
BUCKET = "antenna-cluster-faults"
RATE = 300  # events per second
EVENTS = 60_000  # 200 s of traffic: long enough for the three faults one after the other
PROGRESS = RATE * 5  # events applied that show the stream going on after a fault


@pytest.fixture(scope="module")
def cluster_stack(base_settings):
    with own_stack(base_settings, "cluster-faults", CLUSTER_PORTS, CLUSTERS) as stack:
        stack.gcs.up()
        stack.gcs.ensure_bucket(BUCKET)
        yield stack


def _leader_of_a_partition(stack: FaultStack, topic: str):
    """The Kafka node leading partition 0 of `topic`."""
    metadata = admin_client(librdkafka_config(stack.settings)).list_topics(topic, timeout=10)
    leader = metadata.topics[topic].partitions[0].leader
    [node] = [n for n in stack.kafka.nodes if n.node.node_id == leader]
    return node


def _kill(pid: int, with_children: bool = False) -> None:
    process = psutil.Process(pid)
    victims = [process, *(process.children(recursive=True) if with_children else ())]
    for victim in victims:
        victim.send_signal(signal.SIGKILL)
    psutil.wait_procs(victims, timeout=30)
    assert not any(pid_alive(v.pid) for v in victims)


def _goes_on(stack: FaultStack, pipeline: Pipeline, what: str) -> float:
    """The stream applies more of the traffic, whichever streaming run does it; returns how long that took
    (it includes the PROGRESS events' own 5 s)."""
    before, fault = pipeline.applied_messages(), time.monotonic()
    assert wait_until(lambda: pipeline.applied_messages() >= before + PROGRESS, RECOVERY_TIMEOUT, interval=0.5), \
        f"the stream applied no more after {what}: {_cluster_state(stack)}\n{pipeline.describe()}"
    return time.monotonic() - fault


def _cluster_state(stack: FaultStack) -> str:
    """`stack status`'s lines for the master, workers (cores in use) and Kafka nodes, and the master's
    applications: who holds the cores when a stream stalls. (Not the quorum report: it needs a quorum.)"""
    apps = [f"{a.get('id')} {a.get('state')} cores {a.get('cores')}"
            for a in (stack.spark.master.state() or {}).get("activeapps", [])]
    return "\n".join([stack.spark.status()[1], f"spark applications: {apps}",
                      *(node.status()[1] for node in stack.kafka.nodes)])


def _run_hourly_batch(stack: FaultStack, pipeline: Pipeline, hour, log_dir) -> None:
    """The hour's hourly_batch_job as an operator runs it, in a process of its own with the pipeline's
    settings: its session on the spark:// master, beside the streaming run's."""
    def apps() -> dict[str, str]:
        state = stack.spark.master.state()
        return {app["id"]: app["state"] for app in state["activeapps"] + state["completedapps"]}

    before = apps()
    with open(log_dir / "hourly.log", "w") as log:
        run = subprocess.run([str(Path(sys.executable).with_name("dagster")), "job", "execute",
                              "-m", "antenna_assets.definitions", "-j", "hourly_batch_job",
                              "--tags", json.dumps({"dagster/partition": partition_key(hour)})],
                             cwd=REPO, env=pipeline.env, stdout=log, stderr=subprocess.STDOUT, timeout=RECOVERY_TIMEOUT)
    assert run.returncode == 0, (log_dir / "hourly.log").read_text()[-3000:]
    # It ran on the cluster: an application of the master's, finished since.
    assert wait_until(lambda: "FINISHED" in {s for a, s in apps().items() if a not in before}, 30), (before, apps())


def test_broker_worker_and_quorum_of_replicas_lost_mid_stream_nothing_lost(cluster_stack, spark, tmp_path, monkeypatch,
                                                                           capfd):
    stack = cluster_stack
    # The GCS client and this process's session read the fault stack's emulator below; both go back to
    # the session stack's afterwards, for the test files that follow.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", os.environ.get("STORAGE_EMULATOR_HOST", ""))
    try:
        # test_faults' 20 s heartbeat limit: a run beats while its Spark application starts on the cluster,
        # a start that outlasted the limit on a slow host before it did.
        with running_pipeline(stack, "cluster", f"gs://{BUCKET}/lake", tmp_path) as pipeline:
            assert pipeline.env["ANTENNA_SPARK_MASTER"] == stack.spark.master.address
            pipeline.wait_for_streaming_run()
            traffic = start_traffic(pipeline, RATE, EVENTS)
            runs = {r.run_id for r in pipeline.streaming_runs()}

            # 1. The leader of a partition of the topic: its partitions get new leaders, the same run goes on.
            first = _leader_of_a_partition(stack, pipeline.topic)
            _kill(first.pid())
            recoveries = {"leader node killed": _goes_on(stack, pipeline, f"{first.name} was killed")}
            assert {r.run_id for r in pipeline.streaming_runs()} == runs, pipeline.describe()  # no relaunch

            # 2. The worker running the stream's executor, and the executor with it.
            [busy] = [w for w in stack.spark.workers if (w.registration() or {}).get("coresused")]
            _kill(busy.pid(), with_children=True)
            recoveries["worker with the executor killed"] = _goes_on(stack, pipeline, f"{busy.name} was killed")
            with environment(stack.env):
                busy.up()

            # 3. A second broker while the first is down: one answers, min.insync.replicas is 2.
            assert traffic.thread.is_alive(), "the traffic ended before the brokers' outage"
            [second] = [n for n in stack.kafka.nodes if n is not first and n.pid() is not None][:1]
            _kill(second.pid())
            said: list[str] = []  # the simulator's lines about it

            def waiting_said() -> bool:
                said.extend(line for line in capfd.readouterr().err.splitlines() if "NOT_ENOUGH_REPLICAS" in line)
                return bool(said)

            assert wait_until(waiting_said, 60, interval=1), "the simulator did not say it waits for replicas"
            with environment(stack.env):
                stack.kafka.up()  # starts the two dead nodes again
            truth = traffic.result()
            waiting_said()
            assert len(said) == 1, said  # one line, and nothing acknowledged was lost (the truth below)

            assert_speed_tables_equal_truth(pipeline, traffic.hour, truth)
            assert_lake_equals_truth(spark, pipeline, traffic.hour, truth)
            _run_hourly_batch(stack, pipeline, traffic.hour, tmp_path)
            assert_hourly_rows_equal_truth(pipeline.serving_url, traffic.hour, truth)
            alive = pipeline.wait_for_streaming_run()
            ended = {r.run_id: r.status.value for r in pipeline.streaming_runs() if r.run_id != alive.run_id}
            assert set(ended.values()) <= {"FAILURE"}, ended
            with capfd.disabled():  # `-s` shows them; BENCHMARKS.md records them
                print("".join(f"\n{fault}: {PROGRESS:,} more events applied after {seconds:.1f} s"
                              for fault, seconds in recoveries.items()))
    finally:
        LakeResource.from_settings(Settings.from_env()).configure_session(spark)
