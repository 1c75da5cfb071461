"""The code location: every asset, job, sensor and resource of antenna_assets."""

from dagster import Definitions

from antenna_assets.assets.sources import user_metadata
from antenna_assets.assets.speed import DEVICES_TOPIC, speed_layer, speed_layer_job
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.sensors import speed_layer_sensor

defs = Definitions(
    assets=[DEVICES_TOPIC, user_metadata, speed_layer],
    jobs=[speed_layer_job],
    sensors=[speed_layer_sensor],
    resources={
        "postgres": PostgresResource(),
        "spark": SparkResource(),
        "lake": LakeResource(),
    },
)
