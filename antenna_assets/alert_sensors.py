"""The alert rules in Dagster: a sensor evaluates them every `alerts_evaluate_seconds` (alerts/evaluate.py),
another enqueues the alert of every failed run of the two jobs. Both start running with Dagster: they only
decide and write the outbox, a few small queries each time; what is delivered where is the channels' settings.

Sensors, not a schedule or an asset: a schedule ticks once a minute at most, and an asset would launch a run
(a process, a run record) every 15 seconds to do a few queries; a sensor's tick is cheap and its one-line
skip reason shows in the UI what each evaluation enqueued."""

import dagster as dg

from antenna_assets.alerts.evaluate import evaluate, record_run_failure
from antenna_assets.hours import utc_now
from antenna_assets.jobs import hourly_batch_job, speed_layer_job
from antenna_assets.resources import PostgresResource
from antenna_assets.sensors import PARTITION_TAG
from antenna_assets.settings import Settings


@dg.sensor(
    minimum_interval_seconds=Settings.from_env().alerts_evaluate_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Evaluates the alert rules (quota: provisional, final, withdrawn; health: stream lag, dead letters, "
                "overdue hours) and enqueues what is due in the alerts outbox, each alert once.",
)
def alert_rules_sensor(context: dg.SensorEvaluationContext, postgres: PostgresResource):
    with postgres.connect() as conn:
        evaluation = evaluate(conn, Settings.from_env(), utc_now())
    return dg.SkipReason(evaluation.summary())


@dg.run_failure_sensor(
    monitored_jobs=[speed_layer_job, hourly_batch_job],
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Enqueues a run.failure alert for every failed run of the streaming or the hourly job (once per run).",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, postgres: PostgresResource):
    run = context.dagster_run
    with postgres.connect() as conn:
        new = record_run_failure(conn, run.run_id, run.job_name, context.failure_event.message or "",
                                 run.tags.get(PARTITION_TAG))
    return dg.SkipReason(f"run {run.run_id} of {run.job_name} failed: alert "
                         f"{'enqueued' if new else 'was enqueued already'}")
