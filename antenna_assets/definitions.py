"""The code location: every asset, job, sensor and resource of antenna_assets."""

from dagster import Definitions

from antenna_assets.assets.sources import user_metadata
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource

defs = Definitions(
    assets=[user_metadata],
    resources={
        "postgres": PostgresResource(),
        "spark": SparkResource(),
        "lake": LakeResource(),
    },
)
