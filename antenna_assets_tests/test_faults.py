"""Outages of the services around the pipeline, with nothing lost and nothing counted twice.

The faults run on a stack of their own (folder, ports, Kafka, PostgreSQL, GCS emulator), so the
session's stack that other test files use never sees them. On it, a real `dagster-daemon` with the
streaming sensor on keeps one `speed_layer_job` run alive, as in production. Each test sends paced
simulator traffic (a backfill of a closed hour of its own, replayed at a few hundred events a second),
breaks a service in the middle of it, restores it, and then asserts against the simulator's ground
truth: the lake, the three 5-minute speed tables and the hourly tables (the hourly job run for the
hour) hold every event exactly once, and a streaming run is alive again without any human step.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from unittest import mock

import dagster as dg
import psutil
import pytest

from antenna_assets.hours import HOUR, partition_key, utc_from_epoch_seconds, utc_now
from antenna_assets.jobs import speed_layer_job
from antenna_assets.postgres import ensure_owned_database
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.sensors import ALIVE_STATUSES
from antenna_assets.serving.schema import (BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP, BYTES_AGG_APP_1H,
                                           BYTES_AGG_USER, BYTES_AGG_USER_1H)
from antenna_assets.settings import Settings
from antenna_assets.sources.simulator import GroundTruth, SimulatorConfig, run_simulation
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets.stack.dagster_home import ensure_dagster_home
from antenna_assets.stack.env import stack_environment
from antenna_assets.stack.gcs_emulator import GcsEmulator
from antenna_assets.stack.kafka import KafkaBroker, ensure_topic
from antenna_assets.stack.postgres import DAGSTER_ROLE, EmbeddedPostgres
from antenna_assets.stack.process import pid_alive, wait_until
from antenna_assets.stack.spark_cluster import SparkCluster
from antenna_assets_tests.databases import temporary_serving_database
from antenna_assets_tests.truth import expected, query

pytestmark = pytest.mark.slow  # minutes: a stack of its own, services broken and brought back

REPO = Path(__file__).resolve().parents[1]
# Below the ephemeral range (32768+), apart from the session stack's and the demo's ports.
FAULT_PORTS = {"ANTENNA_KAFKA_PORT": "26192", "ANTENNA_POSTGRES_PORT": "26532", "ANTENNA_GCS_EMULATOR_PORT": "26543"}
FAULT_BUCKET = "antenna-faults"
LOCAL_SPARK = {"ANTENNA_SPARK_MASTER": "local[2]"}
RATE = 300  # events per second
EVENTS = 4500  # 15 s of traffic per test
RECOVERY_TIMEOUT = 300  # seconds for the pipeline to catch up after a fault
# The streaming run's heartbeat, quicker than the defaults (10 s, 180 s) so a dead run is failed within the test.
HEARTBEAT_SECONDS, HEARTBEAT_LIMIT_SECONDS = 2, 20
SPEED_TABLES = ((BYTES_AGG_ANTENNA, "antenna"), (BYTES_AGG_USER, "user"), (BYTES_AGG_APP, "app"))
HOURLY_TABLES = ((BYTES_AGG_ANTENNA_1H, "antenna"), (BYTES_AGG_APP_1H, "app"))
EMAIL = {u.id: u.email for u in PROVISIONED_USERS}
QUOTA = {u.email: u.quota for u in PROVISIONED_USERS}


@dataclass
class FaultStack:
    """Kafka, PostgreSQL, a GCS emulator and, with ANTENNA_SPARK_WORKERS, a Spark cluster of fault tests only."""

    settings: Settings
    env: dict[str, str]
    kafka: KafkaBroker
    postgres: EmbeddedPostgres
    gcs: GcsEmulator
    spark: SparkCluster | None = None

    @property
    def services(self) -> list:
        """Every service, in the order they stop."""
        return [s for s in (self.spark, self.gcs, self.kafka, self.postgres) if s is not None]


@contextmanager
def environment(env: dict[str, str]):
    with mock.patch.dict(os.environ, env, clear=True):
        yield


def _fault_stack(root: Path, ports: dict[str, str], engines: dict[str, str]) -> FaultStack:
    """`engines`: the Spark master (or ANTENNA_SPARK_WORKERS) and ANTENNA_KAFKA_BROKERS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTENNA_", "DAGSTER_"))}
    env.update(ports, **engines, ANTENNA_STACK_DIR=str(root), ANTENNA_SPARK_SHUFFLE_PARTITIONS="2",
               ANTENNA_GCS_ENDPOINT=f"http://127.0.0.1:{ports['ANTENNA_GCS_EMULATOR_PORT']}")
    with environment(env):
        settings = Settings.from_env()
    env.update(stack_environment(settings))
    return FaultStack(settings, env, KafkaBroker(settings), EmbeddedPostgres(settings), GcsEmulator(settings),
                      SparkCluster(settings) if settings.spark_workers else None)


@pytest.fixture(scope="module")
def fault_stack(base_settings):
    with own_stack(base_settings, "faults", FAULT_PORTS, LOCAL_SPARK) as stack:
        yield stack


@contextmanager
def own_stack(settings: Settings, name: str, ports: dict[str, str], engines: dict[str, str]):
    """A stack in <session stack>/`name` on `ports`: PostgreSQL, Kafka and any Spark cluster started, the
    GCS emulator left to the test that needs it; everything stopped afterwards."""
    # Inside the session stack's folder, not pytest's tmp: pytest makes /tmp/pytest-of-<user> 0700
    # whenever a session starts, which would lock the embedded server's own user out of its data.
    root = settings.stack_dir / name
    leftover = _fault_stack(root, ports, engines)
    for service in leftover.services:
        service.down()  # of an interrupted earlier run
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    # The jars and the emulator's binary are the session stack's, not fetched or built again.
    (root / "jars").symlink_to(settings.jars_dir)
    (settings.stack_dir / "bin").mkdir(parents=True, exist_ok=True)
    (root / "bin").symlink_to(settings.stack_dir / "bin")
    stack = _fault_stack(root, ports, engines)
    ensure_dagster_home(stack.settings)
    try:
        with environment(stack.env):
            for service in (stack.postgres, stack.kafka, stack.spark):
                if service is not None:
                    service.up()
        # This process's Dagster instances reach the fault stack's storage as its Dagster role, whose
        # password libpq reads from the stack's passfile (the product's own URLs name theirs).
        with mock.patch.dict(os.environ, {"PGPASSFILE": stack.env["PGPASSFILE"]}):
            yield stack
    finally:
        for service in stack.services:
            service.down()


class Pipeline:
    """A topic, a serving database, a lake and a Dagster instance of their own on the fault stack, and
    the `dagster-daemon` whose streaming sensor keeps one speed-layer run alive on them."""

    def __init__(self, stack: FaultStack, name: str, serving_url: str, lake: LakeResource, log_dir: Path):
        self.stack, self.serving_url, self.lake, self.log_dir = stack, serving_url, lake, log_dir
        dagster_db = f"dagster_{name}"
        # Dagster's storage as the stack keeps it: a database of its own, owned by its own role.
        ensure_owned_database(stack.settings.postgres_admin_url, dagster_db, DAGSTER_ROLE)
        self.env = {**stack.env, "ANTENNA_TOPIC": f"devices-{name}", "ANTENNA_POSTGRES_URL": serving_url,
                    "ANTENNA_LAKE_ROOT": lake.effective_root, "DAGSTER_PG_DB": dagster_db,
                    "ANTENNA_AUTOSTART_STREAMING": "1", "ANTENNA_STREAM_BACKOFF_SECONDS": "1",
                    "ANTENNA_STREAM_SENSOR_SECONDS": os.environ["ANTENNA_STREAM_SENSOR_SECONDS"],
                    "ANTENNA_STREAM_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
                    "ANTENNA_STREAM_HEARTBEAT_LIMIT_SECONDS": str(HEARTBEAT_LIMIT_SECONDS)}
        ensure_topic(stack.settings.replace(topic=self.topic))
        with environment(self.env):
            self.instance = dg.DagsterInstance.from_config(self.env["DAGSTER_HOME"])
        self.daemons: list[subprocess.Popen] = []
        # Each test sends a closed hour of its own, later than the last one: an event is never behind
        # the watermark of an earlier test's events.
        self._next_hour = utc_now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=12)

    @property
    def topic(self) -> str:
        return self.env["ANTENNA_TOPIC"]

    def start_daemon(self) -> None:
        log = open(self.log_dir / f"daemon-{len(self.daemons)}.log", "w")
        self.daemons.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-m", "antenna_assets.definitions"],
            cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()

    def stop(self) -> None:
        """Kill every daemon's process group: the daemon, its code server, the runs it launched and their JVMs."""
        for daemon in self.daemons:
            _signal_group(daemon.pid, signal.SIGKILL)
        for daemon in self.daemons:
            daemon.wait(10)
            assert wait_until(lambda: not _group_members(daemon.pid), 30), _group_members(daemon.pid)
        self.instance.dispose()

    def streaming_runs(self) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(dg.RunsFilter(job_name=speed_layer_job.name)))

    def alive_streaming_runs(self) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(dg.RunsFilter(job_name=speed_layer_job.name, statuses=ALIVE_STATUSES)))

    def wait_for_streaming_run(self, timeout: float = RECOVERY_TIMEOUT) -> dg.DagsterRun:
        """The one STARTED streaming run, once the sensor has launched it."""
        def started():
            runs = self.alive_streaming_runs()
            return len(runs) == 1 and runs[0].status == dg.DagsterRunStatus.STARTED
        assert wait_until(started, timeout, interval=1), f"no streaming run started: {self.describe()}"
        [run] = self.alive_streaming_runs()
        return run

    def run_process(self, run: dg.DagsterRun) -> psutil.Process:
        """The run's Python process, from the engine event that reports it."""
        for entry in self.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
            match = re.search(r"Started process for run \(pid: (\d+)\)", entry.message or "")
            if match:
                return psutil.Process(int(match.group(1)))
        raise AssertionError(f"run {run.run_id} reports no process")

    def sensor_ticks_after(self, moment: float) -> list:
        [state] = [s for s in self.instance.all_instigator_state() if s.instigator_name == "speed_layer_sensor"]
        return list(self.instance.get_ticks(state.instigator_origin_id, state.selector_id, after=moment))

    def applied_messages(self) -> int:
        return query(self.serving_url, "SELECT coalesce(sum(good_messages), 0) FROM streaming_batches")[0][0]

    def take_hour(self) -> datetime:
        hour, self._next_hour = self._next_hour, self._next_hour + HOUR
        return hour

    def describe(self) -> str:
        runs = self.streaming_runs()
        listing = ", ".join(f"{r.run_id[:8]} {r.status.value}" for r in runs)
        logs = "\n".join(p.read_text(errors="replace")[-2000:] for p in sorted(self.log_dir.glob("daemon-*.log")))
        accounts = "\n".join(self._run_account(run) for run in runs[:3])  # the newest
        return f"streaming runs: [{listing}]\n{logs}\n{accounts}"

    def _run_account(self, run: dg.DagsterRun) -> str:
        """A run's last events and its driver's last warnings and errors: what a stalled or failed run
        was doing, from the logs a CI failure leaves nowhere else."""
        events = [f"  {e.dagster_event.event_type_value if e.dagster_event else 'log'}: {(e.message or '')[:300]}"
                  for e in self.instance.all_logs(run.run_id)[-6:]]
        stderr = [line[:300] for path in sorted(Path(self.env["DAGSTER_HOME"], "storage", run.run_id).glob("*/*.err"))
                  for line in path.read_text(errors="replace").splitlines()
                  if re.search(r"\b(WARN|ERROR)\b|Exception|Error:", line)]
        return "\n".join([f"run {run.run_id[:8]} {run.status.value}, last events:", *events,
                          "  its stderr's last warnings and errors:", *(f"  {line}" for line in stderr[-25:])])


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _group_members(pgid: int) -> list[psutil.Process]:
    """The live (not zombie) processes of a process group."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


@contextmanager
def running_pipeline(stack: FaultStack, name: str, lake_root: str, log_dir: Path):
    with ExitStack() as cleanup:
        serving_url = cleanup.enter_context(temporary_serving_database(stack.settings, f"faults_{name}"))
        lake = LakeResource(root=lake_root, endpoint=stack.env["ANTENNA_GCS_ENDPOINT"] if lake_root.startswith("gs://") else "")
        pipeline = Pipeline(stack, name, serving_url, lake, log_dir)
        cleanup.callback(pipeline.stop)
        pipeline.start_daemon()
        pipeline.wait_for_streaming_run()
        yield pipeline


@pytest.fixture(scope="module")
def pipeline(fault_stack, tmp_path_factory):
    """The local-lake pipeline the faults of Kafka, PostgreSQL and Dagster itself share."""
    root = tmp_path_factory.mktemp("fault-pipeline")
    with running_pipeline(fault_stack, "local", str(root / "lake"), root) as pipeline:
        yield pipeline


@dataclass
class Traffic:
    """Simulated traffic sent from a thread, so a fault can hit it in the middle."""

    pipeline: Pipeline
    hour: datetime
    rate: int = RATE
    events: int = EVENTS
    truth: GroundTruth | None = None
    error: BaseException | None = None
    thread: threading.Thread = field(init=False)

    def __post_init__(self):
        self.thread = threading.Thread(target=self._send, daemon=True)
        self.thread.start()

    def _send(self) -> None:
        config = SimulatorConfig(bootstrap=self.pipeline.stack.settings.kafka_bootstrap, topic=self.pipeline.topic,
                                 backfill_hours=1, start=self.hour, rate=self.rate, count=self.events,
                                 seed=self.hour.hour, progress=False)
        try:
            self.truth = run_simulation(config)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread by result()
            self.error = exc

    def result(self, timeout: float = RECOVERY_TIMEOUT) -> GroundTruth:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the simulator did not finish"
        if self.error is not None:
            raise self.error
        assert self.truth.messages == self.events
        return self.truth


def start_traffic(pipeline: Pipeline, rate: int = RATE, events: int = EVENTS) -> Traffic:
    """Paced traffic for a new hour; returns once the stream has applied some of it: mid-run."""
    before = pipeline.applied_messages()
    traffic = Traffic(pipeline, pipeline.take_hour(), rate, events)
    # As long as a recovery may take: the run the previous fault left may still be relaunching, on a
    # machine the suite's other lane keeps busy.
    assert wait_until(lambda: pipeline.applied_messages() > before, RECOVERY_TIMEOUT, interval=0.2), \
        f"the stream applied none of the traffic: {pipeline.describe()}"
    return traffic


def _rows_of_hour(url: str, table, hour: datetime) -> dict[tuple[str, datetime], int]:
    return {(k, d): int(v) for k, d, v in query(
        url, f"SELECT {table.key}, date, {table.value} FROM {table.name} WHERE date >= %s AND date < %s",
        (hour, hour + HOUR))}


def assert_speed_tables_equal_truth(pipeline: Pipeline, hour: datetime, truth: GroundTruth) -> None:
    """Waits until the 5-minute tables hold the hour's truth: a lost event never arrives, a doubled
    one overshoots and stays (the assertion then shows the difference)."""
    def exact() -> bool:
        return all(_rows_of_hour(pipeline.serving_url, t, hour) == expected(truth, per) for t, per in SPEED_TABLES)

    if not wait_until(exact, RECOVERY_TIMEOUT, interval=1):
        for table, per in SPEED_TABLES:
            got, want = _rows_of_hour(pipeline.serving_url, table, hour), expected(truth, per)
            assert got == want, f"{table.name}: {sum(got.values())} bytes, truth {sum(want.values())}\n{pipeline.describe()}"


def assert_lake_equals_truth(spark, pipeline: Pipeline, hour: datetime, truth: GroundTruth) -> None:
    """The hour's landed events, counted and summed per 5-minute window, are the truth's."""
    from pyspark.sql import functions as F

    # A batch's lake files follow its totals: wait until the ledger has every applied batch landed.
    assert wait_until(lambda: query(pipeline.serving_url, "SELECT count(*) FROM streaming_batches "
                                                          "WHERE landed_at IS NULL")[0][0] == 0,
                      RECOVERY_TIMEOUT, interval=0.5), f"batches applied but never landed\n{pipeline.describe()}"
    session = SparkResource.for_lake(pipeline.lake).session() if pipeline.lake.effective_root.startswith("gs://") else spark
    landed = (session.read.parquet(pipeline.lake.landing_path)
              .where((F.col("year") == hour.year) & (F.col("month") == hour.month) & (F.col("day") == hour.day)
                     & (F.col("hour") == hour.hour))
              .withColumn("window", F.floor(F.unix_seconds("event_time") / 300) * 300))
    assert landed.count() == truth.messages
    for column, per in (("antenna_id", "antenna"), ("id", "user"), ("app", "app")):
        rows = landed.groupBy(column, "window").agg(F.sum("bytes").alias("bytes")).collect()
        assert {(r[column], utc_from_epoch_seconds(r.window)): r.bytes for r in rows} == expected(truth, per), per


def assert_hourly_tables_equal_truth(pipeline: Pipeline, hour: datetime, truth: GroundTruth) -> None:
    """The hourly job, run for the hour once the stream caught up, gives the truth's hourly totals."""
    from antenna_assets.definitions import defs

    result = defs.resolve_job_def("hourly_batch_job").execute_in_process(
        partition_key=partition_key(hour), instance=dg.DagsterInstance.ephemeral(), raise_on_error=False,
        resources={"postgres": PostgresResource(url=pipeline.serving_url), "lake": pipeline.lake,
                   "spark": SparkResource.for_lake(pipeline.lake)})
    assert result.success
    assert_hourly_rows_equal_truth(pipeline.serving_url, hour, truth)


def assert_hourly_rows_equal_truth(url: str, hour: datetime, truth: GroundTruth) -> None:
    """The hourly tables and the users over quota, after the hour's hourly job, are the truth's."""
    for table, per in HOURLY_TABLES:
        assert _rows_of_hour(url, table, hour) == expected(truth, per, hourly=True), table.name
    by_email = {(EMAIL[k], d): v for (k, d), v in expected(truth, "user", hourly=True).items()}
    assert _rows_of_hour(url, BYTES_AGG_USER_1H, hour) == by_email
    over = {(e, d) for (e, d), v in by_email.items() if v > QUOTA[e]}
    assert set(query(url, "SELECT email, date FROM users_over_quota_1h WHERE date = %s", (hour,))) == over


def assert_exact_and_recovered(spark, pipeline: Pipeline, traffic: Traffic) -> dg.DagsterRun:
    """Every table exact, and one streaming run alive: the first, or the sensor's relaunch after failures."""
    truth = traffic.result()
    assert_speed_tables_equal_truth(pipeline, traffic.hour, truth)
    assert_lake_equals_truth(spark, pipeline, traffic.hour, truth)
    assert_hourly_tables_equal_truth(pipeline, traffic.hour, truth)
    alive = pipeline.wait_for_streaming_run()
    ended = {r.run_id: r.status for r in pipeline.streaming_runs() if r.run_id != alive.run_id}
    assert set(ended.values()) <= {dg.DagsterRunStatus.FAILURE}, ended
    return alive


def test_gcs_emulator_frozen_for_30_s(fault_stack, spark, tmp_path, monkeypatch):
    """The lake on GCS (the emulator) stops answering for 30 s mid-run. fake-gcs-server keeps objects in
    memory only (its filesystem backend cannot hold the connector's `dir/` placeholders), so a restart
    would empty the bucket; the outage is its process stopped with SIGSTOP and continued with SIGCONT."""
    # The GCS client and the session's connector are pointed at this emulator below; both go back
    # to the session stack's afterwards, for the test files that follow.
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", os.environ.get("STORAGE_EMULATOR_HOST", ""))
    fault_stack.gcs.up()
    fault_stack.gcs.ensure_bucket(FAULT_BUCKET)
    try:
        with running_pipeline(fault_stack, "gcs", f"gs://{FAULT_BUCKET}/lake", tmp_path) as pipeline:
            traffic = start_traffic(pipeline)
            pid = fault_stack.gcs.pid()
            os.kill(pid, signal.SIGSTOP)
            try:
                time.sleep(30)  # the outage
            finally:
                os.kill(pid, signal.SIGCONT)
            assert_exact_and_recovered(spark, pipeline, traffic)
    finally:
        LakeResource.from_settings(Settings.from_env()).configure_session(spark)


def test_kafka_killed_with_sigkill_and_back_after_20_s(fault_stack, pipeline, spark):
    traffic = start_traffic(pipeline)
    broker = fault_stack.kafka
    pid = broker.pid()
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not pid_alive(pid), 30)
    time.sleep(20)  # the outage
    with environment(fault_stack.env):
        broker.up()
    assert_exact_and_recovered(spark, pipeline, traffic)


def test_postgres_stopped_for_30_s(fault_stack, pipeline, spark):
    traffic = start_traffic(pipeline)
    fault_stack.postgres.down()  # pg_ctl stop -m fast
    try:
        time.sleep(30)  # the outage
    finally:
        with environment(fault_stack.env):
            fault_stack.postgres.up()
    assert_exact_and_recovered(spark, pipeline, traffic)


def test_daemon_killed_and_restarted_keeps_one_streaming_run(pipeline, spark):
    run = pipeline.wait_for_streaming_run()
    runs_before = {r.run_id for r in pipeline.streaming_runs()}
    traffic = start_traffic(pipeline)
    daemon = pipeline.daemons[-1]
    os.kill(daemon.pid, signal.SIGKILL)
    daemon.wait(10)
    restarted = time.time()
    pipeline.start_daemon()
    # The new daemon's sensor has looked and found the run alive.
    assert wait_until(lambda: any(t.status.value == "SKIPPED" and run.run_id in (t.skip_reason or "")
                                  for t in pipeline.sensor_ticks_after(restarted)), 120, interval=1), pipeline.describe()
    assert assert_exact_and_recovered(spark, pipeline, traffic).run_id == run.run_id
    assert {r.run_id for r in pipeline.streaming_runs()} == runs_before


def test_streaming_run_process_killed_is_marked_failed_and_relaunched(pipeline, spark):
    run = pipeline.wait_for_streaming_run()
    traffic = start_traffic(pipeline)
    process = pipeline.run_process(run)
    victims = [process, *process.children(recursive=True)]  # the run's Python process and its Spark JVM
    for victim in victims:
        # A child may already be gone: the JVM's launcher exits with its parent.
        with suppress(psutil.NoSuchProcess):
            victim.kill()
    psutil.wait_procs(victims, timeout=30)
    assert wait_until(lambda: pipeline.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
                      120, interval=1), pipeline.describe()
    # Marked by the code server that launched it: the default run launcher gives run monitoring no
    # way to check a run's process.
    assert any("terminated" in (entry.message or "") for entry in pipeline.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT))
    relaunched = assert_exact_and_recovered(spark, pipeline, traffic)
    assert relaunched.run_id != run.run_id
    assert len(pipeline.alive_streaming_runs()) == 1


def test_run_killed_with_its_code_server_is_failed_by_its_heartbeat_and_relaunched(pipeline, spark):
    """A host restart as the streaming run meets it: the run's whole process group killed at once, which
    is the daemon's (the daemon, its code server, the run and its Spark JVM). Nothing is left to tell
    Dagster, so the run stays STARTED; the restarted daemon's sensor finds its heartbeat older than the
    limit, marks it failed with the reason, and launches a new run, which applies the traffic exactly once."""
    traffic = start_traffic(pipeline)
    run = pipeline.wait_for_streaming_run()  # the run applying the traffic
    [(pid, beat_age)] = query(pipeline.serving_url, "SELECT pid, extract(epoch FROM (now() AT TIME ZONE 'UTC') "
                                                    "- beat_at) FROM streaming_heartbeats WHERE run_id = %s",
                              (run.run_id,))
    assert beat_age < HEARTBEAT_LIMIT_SECONDS
    process = pipeline.run_process(run)
    assert pid in {process.pid, *(child.pid for child in process.children(recursive=True))}
    group = os.getpgid(pid)
    daemon = pipeline.daemons[-1]
    assert group == daemon.pid != os.getpgrp()
    os.killpg(group, signal.SIGKILL)
    killed = time.time()
    daemon.wait(10)
    assert wait_until(lambda: not _group_members(group), 30), _group_members(group)
    time.sleep(HEARTBEAT_SECONDS)
    assert pipeline.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.STARTED  # nobody told Dagster

    pipeline.start_daemon()
    assert wait_until(lambda: pipeline.instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE,
                      HEARTBEAT_LIMIT_SECONDS + 120, interval=1), pipeline.describe()
    [failure] = pipeline.instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    reason = failure.dagster_event.message
    assert "\n" not in reason and "last wrote its heartbeat" in reason and f"pid {pid}" in reason, reason
    assert failure.timestamp - killed >= HEARTBEAT_LIMIT_SECONDS - HEARTBEAT_SECONDS  # not before its beats stopped
    relaunched = assert_exact_and_recovered(spark, pipeline, traffic)
    assert relaunched.run_id != run.run_id
    assert len(pipeline.alive_streaming_runs()) == 1
