"""Dagster wiring: the streaming sensor, the streaming job's metadata, the instance's guards,
and the whole path driven by the product's and Dagster's own command lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from antenna_assets.assets.speed import speed_layer
from antenna_assets.jobs import STREAMING_TAG, speed_layer_job
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP_1H, BYTES_AGG_USER_1H
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.hours import hour_closes_at
from antenna_assets.settings import Settings
from antenna_assets.sensors import hourly_batch_sensor, speed_layer_decision, speed_layer_sensor
from antenna_assets.sources.simulator import SimulatorConfig, run_simulation
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets.speed.heartbeat import Heartbeat, RunDeclaredDead, declare_dead
from antenna_assets_tests.truth import execute, expected, query

REPO = Path(__file__).resolve().parents[1]


def _add_run(instance, status: dg.DagsterRunStatus) -> dg.DagsterRun:
    return instance.add_run(dg.DagsterRun(job_name="speed_layer_job", run_id=str(uuid.uuid4()), status=status))


def test_sensor_launches_one_run_and_never_a_second(settings, topic, postgres):
    instance = dg.DagsterInstance.ephemeral()
    on_topic = settings.replace(topic=topic)
    now = time.time()
    with postgres.connect() as conn:
        assert isinstance(speed_layer_decision(instance, conn, on_topic, now), dg.RunRequest)
    # Through the real sensor, as the daemon calls it.
    os.environ["ANTENNA_TOPIC"] = topic
    try:
        context = dg.build_sensor_context(instance=instance, resources={"postgres": postgres})
        [request] = speed_layer_sensor.evaluate_tick(context).run_requests
    finally:
        del os.environ["ANTENNA_TOPIC"]
    assert request.run_key is None and request.tags["antenna/streaming"] == "speed_layer"

    for alive in (dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED,
                  dg.DagsterRunStatus.CANCELING):
        run = _add_run(instance, alive)
        with postgres.connect() as conn:
            decision = speed_layer_decision(instance, conn, on_topic, now)
        assert isinstance(decision, dg.SkipReason) and run.run_id in decision.skip_message
        instance.delete_run(run.run_id)

    with postgres.connect() as conn:
        missing = speed_layer_decision(instance, conn, settings.replace(topic="no-such-topic"), now)
    assert isinstance(missing, dg.SkipReason) and "not found" in missing.skip_message


def test_sensor_backs_off_after_failures(settings, topic, postgres):
    instance = dg.DagsterInstance.ephemeral()
    on_topic = settings.replace(topic=topic)
    for _ in range(2):
        run = _add_run(instance, dg.DagsterRunStatus.STARTED)
        instance.report_run_failed(run)
    ended = instance.get_run_record_by_id(run.run_id).end_time
    assert ended is not None
    with postgres.connect() as conn:
        soon = speed_layer_decision(instance, conn, on_topic, ended + 1)
        assert isinstance(soon, dg.SkipReason) and "2 time(s) in a row" in soon.skip_message
        assert isinstance(speed_layer_decision(instance, conn, on_topic, ended + 3600), dg.RunRequest)


def _failure_message(instance, run_id: str) -> str:
    [failure] = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return failure.dagster_event.message


def test_sensor_fails_a_started_run_whose_heartbeat_stopped_then_relaunches_after_the_back_off(settings, topic,
                                                                                               serving_db):
    """On a real instance and database: a live heartbeat keeps the run; one older than the limit (the
    run's process gone with its code server) fails it with the reason in its events, declares it dead
    (were it alive after all, its next beat stops it), and the stream is relaunched after the back-off."""
    instance = dg.DagsterInstance.ephemeral()
    on_topic = settings.replace(topic=topic)
    limit = on_topic.stream_heartbeat_limit_seconds

    def decide(now: float):
        with PostgresResource(url=serving_db).connect() as conn:
            return speed_layer_decision(instance, conn, on_topic, now)

    waiting = _add_run(instance, dg.DagsterRunStatus.NOT_STARTED)  # no process yet: never taken for dead
    assert isinstance(decide(time.time() + 10 * limit), dg.SkipReason)
    assert instance.get_run_by_id(waiting.run_id).status == dg.DagsterRunStatus.NOT_STARTED
    instance.delete_run(waiting.run_id)

    run = _add_run(instance, dg.DagsterRunStatus.STARTED)
    heartbeat = Heartbeat(serving_db, run.run_id, topic, on_topic.stream_heartbeat_seconds)
    heartbeat.beat()
    alive = decide(time.time() + 10 * limit)  # the beat's age on the database's clock counts, not the sensor's
    assert isinstance(alive, dg.SkipReason) and run.run_id in alive.skip_message

    execute(serving_db, "UPDATE streaming_heartbeats SET beat_at = beat_at - make_interval(secs => %s) "
                        "WHERE run_id = %s", (limit + 5, run.run_id))
    now = time.time()
    after_failure = decide(now)
    assert instance.get_run_by_id(run.run_id).status == dg.DagsterRunStatus.FAILURE
    reason = _failure_message(instance, run.run_id)
    assert "\n" not in reason and run.run_id in reason and "last wrote its heartbeat" in reason, reason
    assert isinstance(after_failure, dg.SkipReason) and "1 time(s) in a row" in after_failure.skip_message
    assert isinstance(decide(now + on_topic.stream_backoff_seconds + 1), dg.RunRequest)
    with pytest.raises(RunDeclaredDead, match=run.run_id):
        heartbeat.beat()
    heartbeat.close()


def test_a_start_longer_than_the_limit_beats_throughout_and_learns_it_was_declared_dead(settings, topic, serving_db):
    """Spark's start (on a cluster, its executors) and the landing of what earlier runs left unlanded are
    calls with no wait loop to beat from: a thread beats while they run. On a real instance and database,
    with a 1 s limit: a block of three limits keeps its run alive, the same silence outside one fails it,
    and a run declared dead during a block raises when the block ends, its beats stopped."""
    instance = dg.DagsterInstance.ephemeral()
    on_topic = settings.replace(topic=topic, stream_heartbeat_seconds=0.25, stream_heartbeat_limit_seconds=1.0,
                                stream_backoff_seconds=0)

    def decide():
        with PostgresResource(url=serving_db).connect() as conn:
            return speed_layer_decision(instance, conn, on_topic, time.time())

    def beat_at(run_id: str):
        return query(serving_db, "SELECT beat_at FROM streaming_heartbeats WHERE run_id = %s", (run_id,))[0][0]

    starting = _add_run(instance, dg.DagsterRunStatus.STARTED)
    heartbeat = Heartbeat(serving_db, starting.run_id, topic, on_topic.stream_heartbeat_seconds)
    with heartbeat.beating():
        for _ in range(3):
            time.sleep(on_topic.stream_heartbeat_limit_seconds)
            alive = decide()
            assert isinstance(alive, dg.SkipReason) and starting.run_id in alive.skip_message, alive
    assert instance.get_run_by_id(starting.run_id).status == dg.DagsterRunStatus.STARTED
    time.sleep(on_topic.stream_heartbeat_limit_seconds + 0.5)  # the same silence, with no thread beating
    decide()
    assert instance.get_run_by_id(starting.run_id).status == dg.DagsterRunStatus.FAILURE
    assert "last wrote its heartbeat" in _failure_message(instance, starting.run_id)

    declared = _add_run(instance, dg.DagsterRunStatus.STARTED)
    late = Heartbeat(serving_db, declared.run_id, topic, on_topic.stream_heartbeat_seconds)
    with pytest.raises(RunDeclaredDead, match=declared.run_id):
        with late.beating():
            with PostgresResource(url=serving_db).connect() as conn:
                declare_dead(conn, declared.run_id)  # as the sensor does for a run it fails
            last = beat_at(declared.run_id)
            time.sleep(4 * on_topic.stream_heartbeat_seconds)
    assert beat_at(declared.run_id) == last  # the database takes no beat of a run declared dead
    heartbeat.close()
    late.close()


def test_sensor_fails_a_started_run_that_never_wrote_a_heartbeat(settings, topic, serving_db):
    instance = dg.DagsterInstance.ephemeral()
    on_topic = settings.replace(topic=topic, stream_backoff_seconds=0)
    run = _add_run(instance, dg.DagsterRunStatus.STARTED)
    since = instance.get_run_record_by_id(run.run_id).update_timestamp.timestamp()
    with PostgresResource(url=serving_db).connect() as conn:
        young = speed_layer_decision(instance, conn, on_topic, since + on_topic.stream_heartbeat_limit_seconds - 1)
        assert isinstance(young, dg.SkipReason) and run.run_id in young.skip_message
        old = speed_layer_decision(instance, conn, on_topic, since + on_topic.stream_heartbeat_limit_seconds + 1)
    assert isinstance(old, dg.RunRequest)
    assert "has written no heartbeat" in _failure_message(instance, run.run_id)
    # Its process, should it start beating now, stops at once.
    late = Heartbeat(serving_db, run.run_id, topic, on_topic.stream_heartbeat_seconds)
    with pytest.raises(RunDeclaredDead):
        late.beat()
    late.close()


@pytest.mark.slow
def test_instance_queues_a_second_streaming_run_behind_a_live_one(settings, tmp_path):
    """Two runs tagged like the streaming job, submitted to the stack's instance: its run coordinator
    (dagster.yaml's tag concurrency limit, applied by a real `dagster-daemon`) starts one and keeps the
    other QUEUED until the first ends."""
    instance = dg.DagsterInstance.get()
    assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
    alive = instance.get_runs(dg.RunsFilter(tags={STREAMING_TAG: speed_layer_job.tags[STREAMING_TAG]},
                                            statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]))
    assert not alive, f"a streaming run is already alive on this instance: {[r.run_id for r in alive]}"
    location = ["-f", str(REPO / "antenna_assets_tests" / "streaming_stand_in.py")]
    bin_dir = Path(sys.executable).parent
    runs = {}
    for name in ("first", "second"):
        release = tmp_path / f"release-{name}"
        runs[name] = (str(uuid.uuid4()), release)
        config = {"ops": {"hold_until_released": {"config": {"release_file": str(release)}}}}
        _run([str(bin_dir / "dagster"), "job", "launch", *location, "-j", "streaming_stand_in",
              "--run-id", runs[name][0], "--config-json", json.dumps(config)], os.environ.copy(), timeout=120)
    (first, release_first), (second, release_second) = runs.values()
    assert instance.get_run_by_id(second).tags[STREAMING_TAG] == speed_layer_job.tags[STREAMING_TAG]

    def status(run_id: str) -> dg.DagsterRunStatus:
        return instance.get_run_by_id(run_id).status

    def wait_for(run_id: str, wanted: dg.DagsterRunStatus, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while status(run_id) != wanted:
            assert time.monotonic() < deadline, f"run {run_id} is {status(run_id)}, not {wanted}"
            time.sleep(0.5)

    assert status(first) == status(second) == dg.DagsterRunStatus.QUEUED
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", *location], cwd=REPO, env=os.environ.copy(),
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(first, dg.DagsterRunStatus.STARTED)
        # Without the limit both leave the queue in the same dequeue pass; watch two more passes.
        deadline = time.monotonic() + 2 * instance.run_coordinator.dequeue_interval_seconds + 1
        while time.monotonic() < deadline:
            assert status(second) == dg.DagsterRunStatus.QUEUED, (tmp_path / "daemon.log").read_text()[-3000:]
            assert status(first) == dg.DagsterRunStatus.STARTED
            time.sleep(0.5)

        release_first.touch()
        wait_for(first, dg.DagsterRunStatus.SUCCESS)
        wait_for(second, dg.DagsterRunStatus.STARTED)
        assert instance.get_run_record_by_id(second).start_time >= instance.get_run_record_by_id(first).end_time
        release_second.touch()
        wait_for(second, dg.DagsterRunStatus.SUCCESS)
    finally:
        release_first.touch()
        release_second.touch()
        _stop(daemon)
        log.close()
        for run_id in (first, second):
            # A run left queued or started would hold the streaming slot of this instance.
            if not instance.get_run_by_id(run_id).is_finished:
                instance.report_run_canceled(instance.get_run_by_id(run_id))


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, so the daemon shuts its code server down; SIGKILL to its process group if it hangs."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


def test_the_sensors_tick_as_often_as_configured():
    code = ("from antenna_assets.sensors import hourly_batch_sensor, speed_layer_sensor; "
            "print(speed_layer_sensor.minimum_interval_seconds, hourly_batch_sensor.minimum_interval_seconds)")
    names = ("ANTENNA_STREAM_SENSOR_SECONDS", "ANTENNA_BATCH_SENSOR_SECONDS")
    unset = {k: v for k, v in os.environ.items() if k not in names}
    for env, ticks in (({**unset, names[0]: "7", names[1]: "11"}, ["7", "11"]), (unset, ["30", "60"])):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.split() == ticks, out.stderr[-2000:]
    with pytest.raises(ValueError, match="stream_sensor_seconds"):
        Settings(stream_sensor_seconds=0)


def test_an_hour_closes_at_its_end_plus_the_grace():
    assert hour_closes_at(datetime(2025, 7, 1, 9), timedelta(minutes=5)) == datetime(2025, 7, 1, 10, 5)


def test_streaming_job_reports_counts_and_the_batch_sensor_follows(settings, topic, serving_db, tmp_path, spark, monkeypatch):
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.5,
                                           start=datetime(2025, 7, 2, 2, 45), seed=2, malformed_fraction=0.1,
                                           progress=False))
    monkeypatch.setenv("ANTENNA_TOPIC", topic)
    config = {"trigger": "available_now", "watermark": "3650 days", "query_name": topic,
              "progress_interval_seconds": 1}
    lake = LakeResource(root=str(tmp_path))
    result = dg.materialize(
        [speed_layer], instance=dg.DagsterInstance.ephemeral(),
        resources={"postgres": PostgresResource(url=serving_db), "lake": lake, "spark": SparkResource.for_lake(lake)},
        run_config={"ops": {"speed_layer": {"config": config}}})
    assert result.success
    materializations = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()]
    by_key = {m.asset_key.path[-1]: m.metadata for m in materializations}
    assert set(by_key) == {"devices_landing", "devices_dead_letter", "bytes_agg_antenna", "bytes_agg_user",
                           "bytes_agg_app"}
    assert by_key["devices_landing"]["good_messages"].value == truth.messages
    assert by_key["devices_dead_letter"]["dead_letters"].value == truth.malformed

    # Both landed hours are long closed: the sensor asks for each, once.
    monkeypatch.setenv("ANTENNA_BATCH_LOOKBACK_HOURS", str(24 * 365 * 5))
    instance = dg.DagsterInstance.ephemeral()
    from antenna_assets.definitions import defs

    context = dg.build_sensor_context(instance=instance, resources={"postgres": PostgresResource(url=serving_db)},
                                      definitions=defs)
    requests = hourly_batch_sensor.evaluate_tick(context).run_requests
    assert [r.partition_key for r in requests] == ["2025-07-02-02:00", "2025-07-02-03:00"]


def _run(args, env, timeout=600):
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.mark.slow
def test_command_lines_end_to_end(settings, topic, serving_db, tmp_path):
    """simulate -> `antenna stream` -> `dg launch` of every hourly asset, through the
    product's settings only, on a topic, database and lake of its own (so it runs the same every time)."""
    hour = datetime(2025, 8, 1, 5)
    env = {**os.environ, "ANTENNA_TOPIC": topic, "ANTENNA_POSTGRES_URL": serving_db, "ANTENNA_LAKE_ROOT": str(tmp_path)}
    bin_dir = Path(sys.executable).parent
    _run([str(bin_dir / "antenna"), "simulate", "--backfill-hours", "1", "--start", f"{hour:%Y-%m-%dT%H:%M}",
          "--seed", "9", "--ground-truth", str(tmp_path / "truth.json"), "--no-progress"], env)
    from antenna_assets.sources.simulator import GroundTruth

    truth = GroundTruth.from_json(tmp_path / "truth.json")
    _run([str(bin_dir / "antenna"), "stream", "--available-now", "--watermark", "3650 days"], env)
    key = f"{hour:%Y-%m-%d-%H:%M}"
    _run([str(bin_dir / "dg"), "launch", "--partition", key, "--assets", "user_metadata,raw_devices,bytes_agg_antenna_1h,"
          "bytes_agg_user_1h,bytes_agg_app_1h,users_over_quota_1h"], {**env, "VIRTUAL_ENV": sys.prefix})
    url = serving_db

    def table(t):
        return {(k, d): int(v) for k, d, v in query(url, f"SELECT {t.key}, date, {t.value} FROM {t.name} WHERE date = %s", (hour,))}

    assert table(BYTES_AGG_ANTENNA_1H) == expected(truth, "antenna", hourly=True)
    assert table(BYTES_AGG_APP_1H) == expected(truth, "app", hourly=True)
    email = {u.id: u.email for u in PROVISIONED_USERS}
    assert table(BYTES_AGG_USER_1H) == {(email[k], d): v for (k, d), v in expected(truth, "user", hourly=True).items()}
    quota = {u.email: u.quota for u in PROVISIONED_USERS}
    over = {(e, d) for (e, d), v in table(BYTES_AGG_USER_1H).items() if v > quota[e]}
    assert set(query(url, "SELECT email, date FROM users_over_quota_1h WHERE date = %s", (hour,))) == over


def test_the_hourly_sensor_retries_a_failed_hour_and_reruns_an_hour_with_late_data(settings, topic, serving_db, tmp_path,
                                                                                   spark, monkeypatch):
    from antenna_assets.definitions import defs
    from antenna_assets.sensors import hourly_batch_decision
    from antenna_assets.settings import Settings
    from antenna_assets.speed.config import SpeedLayerConfig
    from antenna_assets.speed.runtime import speed_layer_targets
    from antenna_assets.speed.layer import SpeedLayer, run_until_stopped
    from antenna_assets.hours import utc_now

    monkeypatch.setenv("ANTENNA_TOPIC", topic)
    monkeypatch.setenv("ANTENNA_BATCH_LOOKBACK_HOURS", str(24 * 365 * 5))
    monkeypatch.setenv("ANTENNA_BATCH_BACKOFF_SECONDS", "0")
    hour = datetime(2025, 7, 3, 5)
    key = f"{hour:%Y-%m-%d-%H:%M}"
    lake = LakeResource(root=str(tmp_path))
    config = SpeedLayerConfig(trigger="available_now", watermark="3650 days", query_name=topic)

    def stream():
        run_until_stopped(SpeedLayer(spark, config, speed_layer_targets(Settings.from_env(), lake, serving_db, config)))

    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_job_def("hourly_batch_job")

    def tick() -> list[str]:
        with PostgresResource(url=serving_db).connect() as conn:
            decision = hourly_batch_decision(instance, conn, Settings.from_env(), utc_now(), time.time())
        return [] if isinstance(decision, dg.SkipReason) else [r.partition_key for r in decision]

    def run(postgres_url: str) -> bool:
        return job.execute_in_process(partition_key=key, instance=instance, raise_on_error=False, resources={
            "postgres": PostgresResource(url=postgres_url), "lake": lake, "spark": SparkResource.for_lake(lake)}).success

    def hourly_antenna_totals():
        return {(k, d): int(v) for k, d, v in query(serving_db, "SELECT antenna_id, date, sum_antenna_bytes "
                                                                "FROM bytes_agg_antenna_1h")}

    on_time = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                             start=hour, seed=31, progress=False))
    stream()
    assert tick() == [key]
    assert not run(settings.postgres_url_for("no_such_database"))  # the hour's run fails
    assert tick() == [key]  # retried on the next tick (back-off 0 here)
    assert run(serving_db)
    assert hourly_antenna_totals() == expected(on_time, "antenna", hourly=True)
    assert tick() == []  # done, with all its landed data

    late = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                          start=hour + timedelta(minutes=30), seed=32, progress=False))
    stream()  # lands more data for the hour after its run
    assert tick() == [key]
    assert run(serving_db)
    both = expected(on_time, "antenna", hourly=True)
    for k, v in expected(late, "antenna", hourly=True).items():
        both[k] = both.get(k, 0) + v
    assert hourly_antenna_totals() == both
    assert tick() == []


def test_the_hourly_sensor_skips_open_hours_hours_done_and_no_data(serving_db, monkeypatch):
    from antenna_assets.sensors import hourly_batch_decision
    from antenna_assets.settings import Settings
    from antenna_assets.hours import utc_now

    instance = dg.DagsterInstance.ephemeral()
    settings = Settings.from_env()
    now = utc_now()

    def decide():
        with PostgresResource(url=serving_db).connect() as conn:
            return hourly_batch_decision(instance, conn, settings, now, time.time())

    nothing = decide()
    assert isinstance(nothing, dg.SkipReason) and "materialized" in nothing.skip_message
    this_hour = now.replace(minute=0, second=0, microsecond=0)
    done_hour, closed_hour = this_hour - timedelta(hours=3), this_hour - timedelta(hours=2)
    with PostgresResource(url=serving_db).connect() as conn, conn.cursor() as cur:
        for hour in (this_hour, done_hour, closed_hour):  # landed data in the open hour too
            cur.execute("INSERT INTO landing_hours (hour, last_batch_at) VALUES (%s, %s)", (hour, now - timedelta(minutes=90)))
        cur.execute("INSERT INTO compacted_hours (hour, landed_through) VALUES (%s, %s)", (done_hour, now - timedelta(minutes=90)))
    [request] = decide()  # not the open hour, not the one compacted with all its data
    assert request.partition_key == f"{closed_hour:%Y-%m-%d-%H:%M}"
    # A run of it queued or running: not launched twice.
    instance.add_run(dg.DagsterRun(job_name="hourly_batch_job", run_id=str(uuid.uuid4()),
                                   status=dg.DagsterRunStatus.STARTED, tags={"dagster/partition": request.partition_key}))
    assert isinstance(decide(), dg.SkipReason)
