"""Sensors: keep exactly one speed-layer run alive (and fail a started one whose heartbeat stopped); run each
closed hour's batch, again when it failed (with back-off) or when data landed for it after its run."""

import time
from datetime import datetime, timedelta

import dagster as dg

from antenna_assets.jobs import STREAMING_TAG, hourly_batch_job, speed_layer_job
from antenna_assets.batch.bookkeeping import landed_hours
from antenna_assets.hours import hour_closes_at, partition_key
from antenna_assets.partitions import hourly_partitions
from antenna_assets.resources import PostgresResource
from antenna_assets.kafka_client import KafkaUnavailable, librdkafka_config, topic_names
from antenna_assets.settings import Settings, SettingsError
from antenna_assets.speed.heartbeat import declare_dead, last_beat
from antenna_assets.hours import utc_now

# Runs that count as "alive": the coordinator's queue as well as the in-progress statuses.
ALIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                  dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# A streaming run in these has a process that writes its heartbeat (speed/heartbeat.py).
BEATING_STATUSES = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED)
PARTITION_TAG = "dagster/partition"  # set by Dagster on every partitioned run


def _default_status(on: bool) -> dg.DefaultSensorStatus:
    """Sensors start stopped unless their setting turns them on (the demo does)."""
    return dg.DefaultSensorStatus.RUNNING if on else dg.DefaultSensorStatus.STOPPED


def _why_no_topic(settings: Settings) -> str | None:
    """Why there is nothing to stream yet: the topic is missing, the broker does not answer or refuses
    the credentials (one line, password redacted); None when the topic exists."""
    try:
        topics = topic_names(librdkafka_config(settings), timeout=5)
    except (KafkaUnavailable, SettingsError) as exc:
        return str(exc)
    return None if settings.topic in topics else f"Kafka topic {settings.topic!r} not found at {settings.kafka_bootstrap}"


def backoff_seconds(consecutive_failures: int, base: float, maximum: float) -> float:
    if consecutive_failures == 0:
        return 0.0
    return min(base * 2 ** (consecutive_failures - 1), maximum)


def _failures_in_a_row(records) -> int:
    failures = 0
    for record in records:
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        failures += 1
    return failures


def _why_dead(conn, record: dg.RunRecord, settings: Settings, now: float) -> str | None:
    """Why a streaming run Dagster lists as starting or started is taken for dead (one line), or None."""
    run, limit = record.dagster_run, settings.stream_heartbeat_limit_seconds
    if run.status not in BEATING_STATUSES:
        return None
    setting = f"limit {limit:g} s, ANTENNA_STREAM_HEARTBEAT_LIMIT_SECONDS"
    beat = last_beat(conn, run.run_id)
    if beat is None:
        # Never beat: counted from when it became STARTING or STARTED, not from its time in the queue.
        silent = now - (record.start_time or record.update_timestamp.timestamp())
        if silent <= limit:
            return None
        return (f"speed_layer_sensor: streaming run {run.run_id} has written no heartbeat in the {silent:.0f} s since "
                f"it was {run.status.value} ({setting}): its process is gone; marked failed")
    age, pid, host = beat
    if age <= limit:
        return None
    return (f"speed_layer_sensor: streaming run {run.run_id} last wrote its heartbeat {age:.0f} s ago, pid {pid} on "
            f"{host} ({setting}): its process is gone (a host restart?); marked failed")


def speed_layer_decision(instance: dg.DagsterInstance, conn, settings: Settings,
                         now: float) -> dg.RunRequest | dg.SkipReason:
    """Launch the streaming job unless a run of it is alive, the topic is missing, or it failed recently.
    A starting or started run whose heartbeat is older than the limit is marked failed first: nothing
    else would (its process and the code server that launched it died together, e.g. a host restart)."""
    alive = []
    for record in instance.get_run_records(dg.RunsFilter(job_name=speed_layer_job.name, statuses=ALIVE_STATUSES)):
        reason = _why_dead(conn, record, settings, now)
        if reason is None:
            alive.append(record)
            continue
        declare_dead(conn, record.dagster_run.run_id)
        conn.commit()  # declared before Dagster is told: were the run alive, it stops at its next beat
        instance.report_run_failed(record.dagster_run, reason)
    if alive:
        return dg.SkipReason(f"speed layer run {alive[0].dagster_run.run_id} is {alive[0].dagster_run.status.value}")
    no_topic = _why_no_topic(settings)
    if no_topic:
        return dg.SkipReason(no_topic)
    recent = instance.get_run_records(dg.RunsFilter(job_name=speed_layer_job.name), limit=10)
    failures = _failures_in_a_row(recent)
    if failures:
        wait = backoff_seconds(failures, settings.stream_backoff_seconds, settings.stream_backoff_max_seconds)
        ended = recent[0].end_time or 0
        if now - ended < wait:
            return dg.SkipReason(f"speed layer failed {failures} time(s) in a row; retrying in {wait - (now - ended):.0f} s")
    # No run_key: a run key launches at most once per sensor lifetime, and the stream must be relaunched.
    return dg.RunRequest(tags={STREAMING_TAG: "speed_layer"})


@dg.sensor(
    job=speed_layer_job,
    minimum_interval_seconds=Settings.from_env().stream_sensor_seconds,
    default_status=_default_status(Settings.from_env().autostart_streaming),
    description="Keeps one speed-layer run alive: launches it when none is queued or running, backs off after "
                "failures; fails a started run whose heartbeat stopped.",
)
def speed_layer_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    """A sensor, not an automation condition: Declarative Automation launches runs that bring assets up to
    date; it cannot keep one never-ending run alive, fail a run whose heartbeat stopped, or back off."""
    with postgres.connect() as conn:
        return speed_layer_decision(context.instance, conn, Settings.from_env(), time.time())


def hourly_batch_decision(instance: dg.DagsterInstance, conn, settings: Settings, now: datetime, epoch_now: float):
    """The closed hours with landed data whose batch is due: never run, data landed since its last
    compaction, or its last run failed (retried with back-off). None is launched twice at once."""
    start = max(now - timedelta(hours=settings.batch_lookback_hours), hourly_partitions.start.replace(tzinfo=None))
    requests, waiting = [], []
    for hour, stale in landed_hours(conn, start, now):
        if hour_closes_at(hour, settings.hour_close_grace) > now:
            continue
        key = partition_key(hour)
        runs = instance.get_run_records(dg.RunsFilter(job_name=hourly_batch_job.name, tags={PARTITION_TAG: key}),
                                        limit=10)
        if runs and runs[0].dagster_run.status in ALIVE_STATUSES:
            continue
        failures = _failures_in_a_row(runs)
        if not stale and not failures:
            continue
        wait = backoff_seconds(failures, settings.batch_backoff_seconds, settings.batch_backoff_max_seconds)
        if failures and epoch_now - (runs[0].end_time or 0) < wait:
            waiting.append(key)
            continue
        # The key is spent once per attempt: a tick that comes before the run is listed cannot double it.
        after = runs[0].dagster_run.run_id if runs else "none"
        requests.append(dg.RunRequest(run_key=f"hourly-{key}-after-{after}", partition_key=key))
    if requests:
        return requests
    if waiting:
        return dg.SkipReason(f"hour(s) {', '.join(waiting)} failed; retrying after the back-off")
    return dg.SkipReason("every closed hour with landed data is materialized with all of it")


@dg.sensor(
    job=hourly_batch_job,
    minimum_interval_seconds=Settings.from_env().batch_sensor_seconds,
    default_status=_default_status(Settings.from_env().automation),
    description="Runs each closed hour with landed data once, again when its run failed (with back-off) "
                "or when data landed for it after its run.",
)
def hourly_batch_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    """A sensor, not an automation condition: Declarative Automation sees missing or stale partitions in
    Dagster's events, not data that landed in the lake after an hour's run, and has no back-off for a
    failed hour."""
    with postgres.connect() as conn:
        return hourly_batch_decision(context.instance, conn, Settings.from_env(), utc_now(), time.time())
