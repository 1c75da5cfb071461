"""Sensors: keep exactly one speed-layer run alive; run each hour's batch once the hour is closed."""

import os
import time
from datetime import datetime, timedelta

import dagster as dg
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from antenna_assets.assets.batch import hourly_batch_job
from antenna_assets.assets.speed import STREAMING_TAG, speed_layer_job
from antenna_assets.db.speed_comparison import landed_hours, stream_progress
from antenna_assets.partitions import hourly_partitions
from antenna_assets.resources import PostgresResource
from antenna_assets.settings import Settings

# Runs that count as "alive": the coordinator's queue as well as the in-progress statuses.
ALIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, *IN_PROGRESS_RUN_STATUSES]
BACKOFF_BASE_SECONDS = float(os.environ.get("ANTENNA_STREAM_BACKOFF_SECONDS", "30"))
BACKOFF_MAX_SECONDS = float(os.environ.get("ANTENNA_STREAM_BACKOFF_MAX_SECONDS", "900"))


def _status_from_env(variable: str) -> dg.DefaultSensorStatus:
    """Sensors start stopped unless `variable` is 1 (the demo turns them on)."""
    return dg.DefaultSensorStatus.RUNNING if os.environ.get(variable) == "1" else dg.DefaultSensorStatus.STOPPED


def _topic_exists(settings: Settings) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        metadata = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=5)
    except Exception:  # noqa: BLE001 - unreachable broker: nothing to stream yet
        return False
    return settings.topic in metadata.topics


def backoff_seconds(consecutive_failures: int) -> float:
    if consecutive_failures == 0:
        return 0.0
    return min(BACKOFF_BASE_SECONDS * 2 ** (consecutive_failures - 1), BACKOFF_MAX_SECONDS)


def speed_layer_decision(instance: dg.DagsterInstance, settings: Settings, now: float) -> dg.RunRequest | dg.SkipReason:
    """Launch the streaming job unless a run of it is alive, the topic is missing, or it failed recently."""
    alive = instance.get_run_records(dg.RunsFilter(job_name=speed_layer_job.name, statuses=ALIVE_STATUSES), limit=1)
    if alive:
        return dg.SkipReason(f"speed layer run {alive[0].dagster_run.run_id} is {alive[0].dagster_run.status.value}")
    if not _topic_exists(settings):
        return dg.SkipReason(f"Kafka topic {settings.topic!r} not found at {settings.kafka_bootstrap}")
    recent = instance.get_run_records(dg.RunsFilter(job_name=speed_layer_job.name), limit=10)
    failures = 0
    for record in recent:
        if record.dagster_run.status != dg.DagsterRunStatus.FAILURE:
            break
        failures += 1
    if failures:
        wait = backoff_seconds(failures)
        ended = recent[0].end_time or 0
        if now - ended < wait:
            return dg.SkipReason(f"speed layer failed {failures} time(s) in a row; retrying in {wait - (now - ended):.0f} s")
    # No run_key: a run key launches at most once per sensor lifetime, and the stream must be relaunched.
    return dg.RunRequest(tags={STREAMING_TAG: "speed_layer"})


@dg.sensor(
    job=speed_layer_job,
    minimum_interval_seconds=30,
    default_status=_status_from_env("ANTENNA_AUTOSTART_STREAMING"),
    description="Keeps one speed-layer run alive: launches it when none is queued or running, backs off after failures.",
)
def speed_layer_sensor(context: dg.SensorEvaluationContext):
    return speed_layer_decision(context.instance, Settings.from_env(), time.time())


HOUR_CLOSE_GRACE = timedelta(minutes=float(os.environ.get("ANTENNA_HOUR_CLOSE_GRACE_MINUTES", "5")))
BATCH_LOOKBACK_HOURS = int(os.environ.get("ANTENNA_BATCH_LOOKBACK_HOURS", "48"))


def closed_hour_window(progress: datetime, grace: timedelta, lookback_hours: int) -> tuple[datetime, datetime]:
    """[start, end) of the hours whose end plus `grace` the stream has passed, the newest `lookback_hours`."""
    end = (progress - grace).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(hours=lookback_hours), end


@dg.sensor(
    job=hourly_batch_job,
    minimum_interval_seconds=60,
    default_status=_status_from_env("ANTENNA_AUTOMATION"),
    description="When the stream's event time passes an hour's end plus the grace, runs that hour's batch job.",
)
def hourly_batch_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    with postgres.connect() as conn:
        progress = stream_progress(conn)
        if progress is None:
            return dg.SkipReason("the speed layer has committed no batch yet")
        start, end = closed_hour_window(progress, HOUR_CLOSE_GRACE, BATCH_LOOKBACK_HOURS)
        hours = landed_hours(conn, max(start, hourly_partitions.start.replace(tzinfo=None)), end)
    done = context.instance.get_materialized_partitions(dg.AssetKey("raw_devices"))
    pending = [key for key in (f"{hour:%Y-%m-%d-%H:%M}" for hour in hours) if key not in done]
    if not pending:
        return dg.SkipReason(f"every closed hour with data up to stream time {progress:%Y-%m-%d %H:%M} is materialized")
    # The run key makes each hour's run happen once; a failed hour is re-run from the UI.
    return [dg.RunRequest(run_key=f"hourly-{key}", partition_key=key) for key in pending]
