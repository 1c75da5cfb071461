"""The batch layer: hourly-partitioned assets computed with Spark from closed hours of the lake."""

import dagster as dg
from pydantic import Field

from antenna_assets import checks
from antenna_assets.assets.previews import preview_table
from antenna_assets.batch import layer as batch_layer
from antenna_assets.serving.writes import written_hours
from antenna_assets.batch.bookkeeping import hourly_sums_from_speed, landing_marks, record_compaction
from antenna_assets.freshness import hourly_freshness
from antenna_assets.hours import HOUR, hour_closes_at
from antenna_assets.lake.gcs import arrow_filesystem
from antenna_assets.retention.landing import restore_pruned_hours
from antenna_assets.partitions import hourly_partitions, run_hours
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.settings import Settings
from antenna_assets.hours import utc_now

BATCH_GROUP = "batch"
HOURLY_FRESHNESS = hourly_freshness(Settings.from_env())


class RawDevicesConfig(dg.Config):
    max_records_per_file: int = Field(default=5_000_000, gt=0, description="rows per compacted Parquet file at most")


def _hour_range(context: dg.AssetExecutionContext):
    hours = run_hours(context)
    return hours, hours[0], hours[-1] + HOUR


@dg.asset(partitions_def=hourly_partitions, backfill_policy=dg.BackfillPolicy.single_run(), deps=["devices_landing"],
          group_name=BATCH_GROUP, kinds={"spark", "parquet"}, freshness_policy=HOURLY_FRESHNESS)
def raw_devices(context: dg.AssetExecutionContext, config: RawDevicesConfig, spark: SparkResource,
                lake: LakeResource, postgres: PostgresResource) -> dg.MaterializeResult:
    """One closed UTC hour of the raw lake: the stream's small files compacted under raw_devices/year=/month=/day=/hour=."""
    hours, start, end = _hour_range(context)
    closes_at = hour_closes_at(hours[-1], Settings.from_env().hour_close_grace)
    if closes_at > utc_now():
        raise dg.Failure(f"hour(s) up to {end:%Y-%m-%d %H:%M} UTC are not closed until {closes_at:%H:%M} UTC "
                         "(end plus ANTENNA_HOUR_CLOSE_GRACE_MINUTES): the stream may still land messages there")
    lake.validate()
    # Read before the files: whatever lands after this is newer than the compaction, and the hourly
    # sensor runs the hour again for it. An hour whose landing retention removed gets its compacted
    # files back in the landing first, so late data is added to the hour rather than replacing it.
    with postgres.connect() as conn:
        landing_fs, landing_root = arrow_filesystem(lake.settings(), lake.landing_path)
        restore_pruned_hours(conn, landing_fs, landing_root, arrow_filesystem(lake.settings(), lake.raw_devices_path)[1],
                             hours)
        landed_through = landing_marks(conn, hours)
    stats = batch_layer.compact_hours(spark.session(), lake.landing_path, lake.raw_devices_path, hours,
                                      config.max_records_per_file)
    with postgres.connect() as conn:
        record_compaction(conn, landed_through, hours)
    empty = [s.hour for s in stats if s.rows == 0]
    if empty:
        context.log.warning(f"no data in {len(empty)} hour(s): {', '.join(f'{h:%Y-%m-%d %H:00}' for h in empty[:10])}")
    times = [t for s in stats for t in (s.min_event_time, s.max_event_time) if t is not None]
    return dg.MaterializeResult(metadata={
        "dagster/row_count": dg.MetadataValue.int(sum(s.rows for s in stats)),
        "total_bytes": dg.MetadataValue.int(sum(s.total_bytes for s in stats)),
        "min_event_time": dg.MetadataValue.text(min(times).isoformat() if times else "none"),
        "max_event_time": dg.MetadataValue.text(max(times).isoformat() if times else "none"),
        "empty_hours": dg.MetadataValue.int(len(empty)),
        "dagster/uri": dg.MetadataValue.path(lake.raw_devices_path),
    })


HOURLY_TABLE_DESCRIPTIONS = {
    "bytes_agg_antenna_1h": "Bytes per antenna and UTC hour.",
    "bytes_agg_user_1h": "Bytes per user email and UTC hour (ids mapped through the hour's user_metadata snapshot).",
    "bytes_agg_app_1h": "Bytes per app and UTC hour.",
    "users_over_quota_1h": "Users whose bytes in the hour are strictly greater than their hourly quota.",
}
HOURLY_TABLE_SPECS = [
    dg.AssetSpec(name, deps=["raw_devices", "user_metadata"], partitions_def=hourly_partitions, group_name=BATCH_GROUP,
                 kinds={"spark", "postgres"}, description=description, freshness_policy=HOURLY_FRESHNESS)
    for name, description in HOURLY_TABLE_DESCRIPTIONS.items()
]


@dg.multi_asset(specs=HOURLY_TABLE_SPECS, check_specs=checks.hourly_check_specs(HOURLY_TABLE_DESCRIPTIONS), can_subset=True,
                partitions_def=hourly_partitions, backfill_policy=dg.BackfillPolicy.single_run())
def hourly_tables(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource,
                  postgres: PostgresResource):
    """The batch layer's four hourly tables from the raw hour(s) in one Spark run; each run replaces exactly its hours."""
    hours, start, end = _hour_range(context)
    selected = [key.path[-1] for key in context.selected_asset_keys]
    session = spark.session()
    events = batch_layer.read_hours(session, lake.raw_devices_path, hours)
    with postgres.connect() as conn:
        snapshots = batch_layer.user_metadata_snapshots(conn, hours)
        tables = batch_layer.compute_hourly_tables(events, snapshots, selected, hours)
        raw = batch_layer.hour_stats(events, hours)
        written = batch_layer.write_hourly_tables(conn, tables, start, end)
        # The checks judge what PostgreSQL received, read back in the same transaction.
        with conn.cursor() as cur:
            stored = {name: written_hours(cur, name, batch_layer.HOURLY_TABLES[name].names[-1], start, end)
                      for name in selected}
        speed = {name: hourly_sums_from_speed(conn, speed_table, start, end)
                 for name, speed_table in checks.SPEED_TWIN.items() if name in selected}
    for name in selected:
        yield dg.MaterializeResult(asset_key=name, metadata={
            "dagster/row_count": dg.MetadataValue.int(written[name]),
            "hours": dg.MetadataValue.int(len(hours)),
            "preview": preview_table(batch_layer.HOURLY_TABLES[name].names, sorted(tables[name])[:10]),
        })
    yield from checks.check_results(context, tables, stored, raw, speed)

