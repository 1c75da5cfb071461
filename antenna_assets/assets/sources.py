"""The operators' source table, `user_metadata`, as an hourly-partitioned asset."""

import dagster as dg
from pydantic import Field

from antenna_assets.assets.previews import preview_table
from antenna_assets.serving.migration import migrate
from antenna_assets.sources.user_metadata import provision_users, read_snapshot, snapshot_hour
from antenna_assets.partitions import hourly_partitions, run_hours
from antenna_assets.resources import PostgresResource


class UserMetadataConfig(dg.Config):
    refresh: bool = Field(default=False, description="retake the snapshot of an hour that already has one")


@dg.asset(partitions_def=hourly_partitions, backfill_policy=dg.BackfillPolicy.single_run(), group_name="sources",
          kinds={"postgres"})
def user_metadata(context: dg.AssetExecutionContext, config: UserMetadataConfig,
                  postgres: PostgresResource) -> dg.MaterializeResult:
    """Snapshot of the operators' user_metadata table (id, name, email, hourly quota) in force for the hour.

    Creates the schema and, once per database, provisions the contract's 20 users: later runs never
    overwrite operators' edits nor bring back a user they deleted. The batch layer joins hour H with the
    snapshot of hour H; an hour that has a snapshot keeps it (unless refresh), so re-running an old hour
    reproduces it.
    """
    hours = run_hours(context)
    with postgres.connect() as conn:
        migrate(conn)
        inserted = provision_users(conn)
        outcomes = [snapshot_hour(conn, hour, config.refresh) for hour in hours]
        preview = read_snapshot(conn, hours[-1])[:20]
    if inserted:
        context.log.info(f"provisioned the contract's users in this database: {inserted} inserted")
    kept = sum(1 for _, taken in outcomes if not taken)
    if kept:
        context.log.info(f"kept the existing snapshot of {kept} hour(s) (refresh=false)")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(outcomes[-1][0]),
        "hours": dg.MetadataValue.int(len(hours)),
        "snapshots_taken_now": dg.MetadataValue.int(len(hours) - kept),
        "provisioned_users": dg.MetadataValue.int(inserted),
        "preview": preview_table(("id", "name", "email", "quota"), preview),
    })
