"""The batch layer: hourly-partitioned assets computed with Spark from closed hours of the lake."""

import dagster as dg
from pydantic import Field

from antenna_assets import batch_layer, checks
from antenna_assets.db.schema import BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP, BYTES_AGG_APP_1H
from antenna_assets.db.serving import written_hours
from antenna_assets.db.speed_comparison import hourly_sums_from_speed, landing_marks, record_compaction
from antenna_assets.partitions import hour_closes_at, hourly_partitions, run_hours
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.settings import Settings
from antenna_assets.timeutil import utc_now

BATCH_GROUP = "batch_layer"
BATCH_TAG = "antenna/batch"


class RawDevicesConfig(dg.Config):
    max_records_per_file: int = Field(default=5_000_000, gt=0, description="rows per compacted Parquet file at most")


def _hour_range(context: dg.AssetExecutionContext):
    hours = run_hours(context)
    return hours, hours[0], hours[-1] + batch_layer.HOUR


@dg.asset(partitions_def=hourly_partitions, backfill_policy=dg.BackfillPolicy.single_run(), deps=["devices_landing"],
          group_name=BATCH_GROUP, kinds={"spark", "parquet"})
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
    # sensor runs the hour again for it.
    with postgres.connect() as conn:
        landed_through = landing_marks(conn, hours)
    stats = batch_layer.compact_hours(spark.session_for(lake), lake.landing_path, lake.raw_devices_path, hours,
                                      config.max_records_per_file)
    with postgres.connect() as conn:
        record_compaction(conn, landed_through, hours)
    empty = [s.hour for s in stats if s.rows == 0]
    if empty:
        context.log.warning(f"no data in {len(empty)} hour(s): {', '.join(f'{h:%Y-%m-%d %H:00}' for h in empty[:10])}")
    times = [t for s in stats for t in (s.min_event_time, s.max_event_time) if t is not None]
    return dg.MaterializeResult(metadata={
        "row_count": dg.MetadataValue.int(sum(s.rows for s in stats)),
        "total_bytes": dg.MetadataValue.int(sum(s.total_bytes for s in stats)),
        "min_event_time": dg.MetadataValue.text(min(times).isoformat() if times else "none"),
        "max_event_time": dg.MetadataValue.text(max(times).isoformat() if times else "none"),
        "empty_hours": dg.MetadataValue.int(len(empty)),
        "path": dg.MetadataValue.path(lake.raw_devices_path),
    })


HOURLY_TABLE_DESCRIPTIONS = {
    "bytes_agg_antenna_1h": "Bytes per antenna and UTC hour.",
    "bytes_agg_user_1h": "Bytes per user email and UTC hour (ids mapped through the hour's user_metadata snapshot).",
    "bytes_agg_app_1h": "Bytes per app and UTC hour.",
    "users_over_quota_1h": "Users whose bytes in the hour are strictly greater than their hourly quota.",
}
HOURLY_TABLE_SPECS = [
    dg.AssetSpec(name, deps=["raw_devices", "user_metadata"], partitions_def=hourly_partitions, group_name=BATCH_GROUP,
                 kinds={"spark", "postgres"}, description=description)
    for name, description in HOURLY_TABLE_DESCRIPTIONS.items()
]
_SUM_TABLES = ("bytes_agg_antenna_1h", "bytes_agg_user_1h", "bytes_agg_app_1h")
_SPEED_TWIN = {"bytes_agg_antenna_1h": (BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H), "bytes_agg_app_1h": (BYTES_AGG_APP, BYTES_AGG_APP_1H)}
HOURLY_CHECK_SPECS = [
    *(dg.AssetCheckSpec(checks.NON_NEGATIVE_SUMS, asset=name) for name in HOURLY_TABLE_DESCRIPTIONS),
    *(dg.AssetCheckSpec(checks.NON_EMPTY_WHEN_RAW_NON_EMPTY, asset=name) for name in _SUM_TABLES),
    *(dg.AssetCheckSpec(checks.RECONCILES_WITH_RAW, asset=name) for name in _SUM_TABLES),
    *(dg.AssetCheckSpec(checks.AGREES_WITH_SPEED_LAYER, asset=name) for name in _SPEED_TWIN),
    dg.AssetCheckSpec(checks.ALL_USERS_KNOWN, asset="bytes_agg_user_1h"),
]


@dg.multi_asset(specs=HOURLY_TABLE_SPECS, check_specs=HOURLY_CHECK_SPECS, can_subset=True,
                partitions_def=hourly_partitions, backfill_policy=dg.BackfillPolicy.single_run())
def hourly_tables(context: dg.AssetExecutionContext, spark: SparkResource, lake: LakeResource,
                  postgres: PostgresResource):
    """The batch layer's four hourly tables from the raw hour(s) in one Spark run; each run replaces exactly its hours."""
    hours, start, end = _hour_range(context)
    selected = [key.path[-1] for key in context.selected_asset_keys]
    session = spark.session_for(lake)
    events = batch_layer.read_hours(session, lake.raw_devices_path, hours)
    with postgres.connect() as conn:
        snapshots = batch_layer.user_metadata_snapshots(session, conn, hours)
        tables = batch_layer.compute_hourly_tables(events, snapshots, selected)
        raw = batch_layer.hour_stats(events, hours)
        written = batch_layer.write_hourly_tables(conn, tables, start, end)
        # The checks judge what PostgreSQL received, read back in the same transaction.
        with conn.cursor() as cur:
            stored = {name: written_hours(cur, name, batch_layer.HOURLY_TABLE_COLUMNS[name][-1], start, end)
                      for name in selected}
        speed = {name: hourly_sums_from_speed(conn, speed_table, start, end)
                 for name, (speed_table, _) in _SPEED_TWIN.items() if name in selected}
    for name in selected:
        rows = tables[name]
        preview = "\n".join(" | ".join(str(v) for v in row) for row in sorted(rows)[:10])
        yield dg.MaterializeResult(asset_key=name, metadata={
            "row_count": dg.MetadataValue.int(written[name]),
            "hours": dg.MetadataValue.int(len(hours)),
            "preview": dg.MetadataValue.md(f"```\n{preview}\n```"),
        })
    for result in _check_results(context, tables, stored, raw, speed):
        yield result


def _check_results(context, tables, stored, raw, speed):
    selected_checks = {(key.asset_key.path[-1], key.name) for key in context.selected_asset_check_keys}
    raw_rows = sum(s.rows for s in raw)
    raw_bytes = sum(s.total_bytes for s in raw)
    unknown_bytes = sum(row[2] for row in tables["unknown_users"])

    for asset, check in sorted(selected_checks):
        rows = tables.get(asset, [])
        hours = stored.get(asset, {})  # per hour: rows, sum, negative rows, as PostgreSQL holds them
        if check == checks.NON_NEGATIVE_SUMS:
            negative = sum(n for _, _, n in hours.values())
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=not negative,
                                      metadata={"negative_rows": negative})
        elif check == checks.NON_EMPTY_WHEN_RAW_NON_EMPTY:
            empty_hours = [s.hour for s in raw if s.rows and not hours.get(s.hour, (0,))[0]]
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=not empty_hours,
                                      metadata={"raw_rows": raw_rows, "hours_missing_rows": len(empty_hours)})
        elif check == checks.RECONCILES_WITH_RAW:
            table_bytes = (sum(total for _, total, _ in hours.values())
                           + (unknown_bytes if asset == "bytes_agg_user_1h" else 0))
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=table_bytes == raw_bytes,
                                      metadata={"raw_bytes": raw_bytes, "table_bytes": table_bytes,
                                                "difference": table_bytes - raw_bytes})
        elif check == checks.AGREES_WITH_SPEED_LAYER:
            yield _speed_agreement(asset, rows, speed[asset])
        elif check == checks.ALL_USERS_KNOWN:
            unknown = sorted({row[0] for row in tables["unknown_users"]})
            yield dg.AssetCheckResult(asset_key=asset, check_name=check, passed=not unknown,
                                      severity=dg.AssetCheckSeverity.WARN, metadata={
                                          "unknown_ids": len(unknown), "unknown_bytes": unknown_bytes,
                                          "examples": ", ".join(unknown[:10]) or "none"})


def _speed_agreement(asset: str, rows, speed_sums) -> dg.AssetCheckResult:
    """The lambda check: batch totals vs the speed layer's 5-minute totals of the same hours.

    Differences are expected only for events the speed layer dropped as later than its watermark."""
    batch_sums = {(row[0], row[1]): row[2] for row in rows}
    hours_in_both = {h for _, h in batch_sums} & {h for _, h in speed_sums}
    if not hours_in_both:
        return dg.AssetCheckResult(asset_key=asset, check_name=checks.AGREES_WITH_SPEED_LAYER, passed=True,
                                   metadata={"compared_hours": 0, "note": "the speed layer has no data for these hours"})
    keys = {k for k in batch_sums.keys() | speed_sums.keys() if k[1] in hours_in_both}
    differences = {k: batch_sums.get(k, 0) - speed_sums.get(k, 0) for k in keys}
    differing = {k: d for k, d in differences.items() if d}
    batch_total = sum(batch_sums.get(k, 0) for k in keys)
    return dg.AssetCheckResult(
        asset_key=asset, check_name=checks.AGREES_WITH_SPEED_LAYER, passed=not differing,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"compared_hours": len(hours_in_both), "differing_keys": len(differing),
                  "batch_minus_speed_bytes": sum(differences.values()),
                  "difference_pct": round(100.0 * sum(differences.values()) / batch_total, 4) if batch_total else 0.0,
                  "examples": ", ".join(f"{k[0]}@{k[1]:%H:00}: {d:+d}" for k, d in list(differing.items())[:5]) or "none"})


hourly_batch_job = dg.define_asset_job(
    "hourly_batch_job",
    selection=dg.AssetSelection.assets("user_metadata", raw_devices, hourly_tables),
    tags={BATCH_TAG: "hourly"},
    description="One closed hour: user_metadata snapshot, raw compaction, then the four hourly tables and their checks.",
)
