"""The code location: every asset, job, sensor and resource of antenna_assets."""

from dagster import Definitions

from antenna_assets.assets.batch import hourly_tables, raw_devices
from antenna_assets.assets.serving import ANTENNA_USAGE_DASHBOARD, serving_views
from antenna_assets.assets.sources import user_metadata
from antenna_assets.assets.speed import devices_topic, speed_layer
from antenna_assets.jobs import hourly_batch_job, speed_layer_job
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.sensors import hourly_batch_sensor, speed_layer_sensor

defs = Definitions(
    assets=[devices_topic, user_metadata, speed_layer, raw_devices, hourly_tables, serving_views,
            ANTENNA_USAGE_DASHBOARD],
    jobs=[speed_layer_job, hourly_batch_job],
    sensors=[speed_layer_sensor, hourly_batch_sensor],
    resources={
        "postgres": PostgresResource(),
        "spark": SparkResource(),
        "lake": LakeResource(),
    },
)
