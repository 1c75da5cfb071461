"""Dagster resources: Spark, PostgreSQL and the lake (local folder or GCS)."""

from antenna_assets.resources.lake import LakeResource
from antenna_assets.resources.postgres import PostgresResource
from antenna_assets.resources.spark import SparkResource

__all__ = ["LakeResource", "PostgresResource", "SparkResource"]
