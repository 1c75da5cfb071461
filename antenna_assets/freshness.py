"""Freshness, as Dagster's UI shows it: the batch layer's freshness policy (the hourly sensor's promise)
and the speed layer's lag check (seconds since the latest event the stream applied)."""

from __future__ import annotations

from datetime import timedelta

import dagster as dg

from antenna_assets.resources import PostgresResource
from antenna_assets.serving.schema import STREAMING_TABLES
from antenna_assets.serving.views import SERVING_STREAM_FRESHNESS
from antenna_assets.settings import Settings, env_name

STREAM_LAG = "stream_lag_within_limit"


def hourly_freshness(settings: Settings) -> dg.FreshnessPolicy:
    """Hour H is written between its close (H + 1 h + the grace, when the hourly sensor may run it) and
    `batch_run_minutes` later: checked at that minute of every hour, an hour not written by then is
    overdue and the asset's freshness fails until it is."""
    deadline = (settings.hour_close_grace_minutes + settings.batch_run_minutes) % 60
    return dg.FreshnessPolicy.cron(deadline_cron=f"{deadline} * * * *",
                                   lower_bound_delta=timedelta(minutes=settings.batch_run_minutes))


def _stream_lag_specs(settings: Settings) -> list[dg.AssetCheckSpec]:
    every = dg.AutomationCondition.cron_tick_passed(f"*/{settings.stream_lag_check_minutes} * * * *")
    return [dg.AssetCheckSpec(STREAM_LAG, asset=table.name, automation_condition=every,
                              description=f"The latest event the speed layer applied is at most "
                                          f"{env_name('stream_lag_limit_seconds')} old.")
            for table in STREAMING_TABLES]


@dg.multi_asset_check(specs=_stream_lag_specs(Settings.from_env()))
def stream_lag(postgres: PostgresResource):
    """The speed layer's freshness (the view serving_stream_freshness) on each of its tables: their sums
    all come from the same applied micro-batches."""
    limit = Settings.from_env().stream_lag_limit_seconds
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT latest_event_time, last_applied_at, lag_seconds FROM {SERVING_STREAM_FRESHNESS}")
        latest, applied, lag = cur.fetchone()
    metadata = {"limit_seconds": dg.MetadataValue.float(limit),
                "lag_seconds": dg.MetadataValue.float(round(lag, 1)) if lag is not None else dg.MetadataValue.null(),
                "latest_event_time": dg.MetadataValue.text(f"{latest:%Y-%m-%d %H:%M:%S} UTC" if latest else "none"),
                "last_applied_at": dg.MetadataValue.text(f"{applied:%Y-%m-%d %H:%M:%S} UTC" if applied else "none")}
    for table in STREAMING_TABLES:
        yield dg.AssetCheckResult(asset_key=table.name, check_name=STREAM_LAG,
                                  passed=lag is not None and lag <= limit, metadata=metadata)
