"""The code location: every asset, job, sensor and resource of antenna_assets."""

import dagster as dg

from antenna_assets.assets.batch import hourly_tables, raw_devices
from antenna_assets.assets.serving import ANTENNA_USAGE_DASHBOARD, serving_views
from antenna_assets.assets.sources import user_metadata
from antenna_assets.assets.speed import devices_topic, speed_layer
from antenna_assets.jobs import hourly_batch_job, speed_layer_job
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.sensors import hourly_batch_sensor, speed_layer_sensor
from antenna_assets.settings import Settings, env_name

settings = Settings.from_env()


def from_environment(field: str) -> dg.EnvVar | str:
    """A setting given in the environment reaches its resource as `dg.EnvVar`: Dagster resolves it in
    the run and the UI shows the variable's name, never its value (URLs carry passwords). Otherwise
    empty, and the resource uses the settings' default when it runs."""
    return dg.EnvVar(env_name(field)) if settings.from_environment(field) else ""


defs = dg.Definitions(
    assets=[devices_topic, user_metadata, speed_layer, raw_devices, hourly_tables, serving_views,
            ANTENNA_USAGE_DASHBOARD],
    jobs=[speed_layer_job, hourly_batch_job],
    sensors=[speed_layer_sensor, hourly_batch_sensor],
    resources={
        "postgres": PostgresResource(url=from_environment("postgres_url")),
        "spark": SparkResource(),  # its master and the rest come from the settings (ANTENNA_SPARK_*)
        "lake": LakeResource(root=from_environment("lake_root"), checkpoints=from_environment("checkpoint_root"),
                             project=from_environment("gcs_project"), endpoint=from_environment("gcs_endpoint")),
    },
)
