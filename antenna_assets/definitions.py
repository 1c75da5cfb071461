"""The code location: every asset, check, job, sensor and resource of antenna_assets."""

import dagster as dg

from antenna_assets.alert_sensors import alert_rules_sensor, run_failure_alert_sensor
from antenna_assets.assets.batch import hourly_tables, raw_devices
from antenna_assets.assets.retention import retention_job, retention_schedule, storage_retention
from antenna_assets.assets.serving import ANTENNA_USAGE_DASHBOARD, serving_views
from antenna_assets.assets.sources import user_metadata
from antenna_assets.assets.speed import devices_topic, speed_layer
from antenna_assets.automation import automation_sensor
from antenna_assets.catalog import catalogued
from antenna_assets.freshness import stream_lag
from antenna_assets.jobs import hourly_batch_job, speed_layer_job
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.sensors import hourly_batch_sensor, speed_layer_sensor
from antenna_assets.settings import Settings

settings = Settings.from_env()
# Every resource value is given here, from the settings, so the Resources page shows what a run uses;
# a PostgreSQL URL from the environment is an EnvVar (it may hold a password).
lake = LakeResource.from_settings(settings)

defs = dg.Definitions(
    assets=catalogued([devices_topic, user_metadata, speed_layer, raw_devices, hourly_tables, serving_views,
                       ANTENNA_USAGE_DASHBOARD, storage_retention], settings),
    asset_checks=[stream_lag],
    jobs=[speed_layer_job, hourly_batch_job, retention_job],
    schedules=[retention_schedule(settings)],
    sensors=[speed_layer_sensor, hourly_batch_sensor, automation_sensor, alert_rules_sensor, run_failure_alert_sensor],
    resources={"postgres": PostgresResource.from_settings(settings), "lake": lake, "spark": SparkResource.for_lake(lake),
               "retention_postgres": PostgresResource.for_retention(settings)},
)
