"""The operators' source table, `user_metadata`, as an hourly-partitioned asset."""

from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from antenna_assets.db.schema import migrate
from antenna_assets.db.user_metadata import provision_users, read_snapshot, snapshot_hour
from antenna_assets.partitions import hourly_partitions, partition_hour
from antenna_assets.resources import PostgresResource


class UserMetadataConfig(Config):
    refresh: bool = Field(default=False, description="retake the snapshot of an hour that already has one")


@asset(partitions_def=hourly_partitions, group_name="sources", kinds={"postgres"})
def user_metadata(context: AssetExecutionContext, config: UserMetadataConfig, postgres: PostgresResource) -> MaterializeResult:
    """Snapshot of the operators' user_metadata table (id, name, email, hourly quota) in force for the hour.

    Creates the schema and provisions the contract's 20 users if missing, without overwriting
    operators' edits. The batch layer joins hour H with the snapshot of hour H.
    """
    hour = partition_hour(context.partition_key)
    with postgres.connect() as conn:
        migrate(conn)
        inserted = provision_users(conn)
        rows, taken = snapshot_hour(conn, hour, config.refresh)
        preview = read_snapshot(conn, hour)[:20]
    if inserted:
        context.log.info(f"provisioned {inserted} missing default users")
    if not taken:
        context.log.info(f"kept the existing snapshot of {hour:%Y-%m-%d %H:00} (refresh=false)")
    table = "| id | name | email | quota |\n|---|---|---|---|\n" + "\n".join(
        f"| {i} | {n} | {e} | {q} |" for i, n, e, q in preview)
    return MaterializeResult(metadata={
        "row_count": MetadataValue.int(rows),
        "snapshot_taken_now": MetadataValue.bool(taken),
        "provisioned_users": MetadataValue.int(inserted),
        "preview": MetadataValue.md(table),
    })
