"""Retention as a Dagster asset: `storage_retention`, run by `retention_job` on `retention_schedule`; each
materialization records what it removed from each store (rows, files, bytes) and what it kept and why."""

from datetime import timedelta

import dagster as dg

from antenna_assets.hours import partition_key, utc_now
from antenna_assets.jobs import BATCH_TAG
from antenna_assets.lake.gcs import arrow_filesystem
from antenna_assets.resources import LakeResource, PostgresResource
from antenna_assets.retention.landing import Removed, prunable_hours, prune_hour
from antenna_assets.retention.ledger import prune_ledger
from antenna_assets.retention.speed_tables import prune_speed_table
from antenna_assets.serving.schema import BATCH_TABLES, STREAMING_TABLES, USERS_OVER_QUOTA_1H
from antenna_assets.settings import Settings, env_name
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.dead_letter_retention import PruneRefused, prune_dead_letters

RETENTION_GROUP = "retention"
_HOURLY_ASSETS = tuple(t.name for t in (*BATCH_TABLES, USERS_OVER_QUOTA_1H))


class _CheckedHours:
    """Whether Dagster recorded an hour's raw_devices and, after it, each hourly table materialized by a run
    whose checks of that table all ran and none of ERROR severity failed (a run's checks cover all its hours)."""

    def __init__(self, instance: dg.DagsterInstance):
        self.instance = instance
        self._evaluations: dict[str, list] = {}

    def _latest(self, asset: str, key: str):
        records = self.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[key]), limit=1).records
        return records[0] if records else None

    def _checks(self, run_id: str, asset: str) -> list:
        if run_id not in self._evaluations:
            self._evaluations[run_id] = [entry.dagster_event.event_specific_data for entry in self.instance.all_logs(
                run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
        return [e for e in self._evaluations[run_id] if e.asset_key.path[-1] == asset]

    def why_not(self, hour) -> str | None:
        key = partition_key(hour)
        raw = self._latest("raw_devices", key)
        if raw is None:
            return f"{key}: no materialization of raw_devices in Dagster"
        for asset in _HOURLY_ASSETS:
            record = self._latest(asset, key)
            if record is None or record.storage_id < raw.storage_id:
                return f"{key}: {asset} not materialized after raw_devices"
            checks = self._checks(record.run_id, asset)
            failed = [c.check_name for c in checks if not c.passed and c.severity == dg.AssetCheckSeverity.ERROR]
            if not checks or failed:
                return f"{key}: {asset}'s checks {'failed: ' + ', '.join(failed) if failed else 'did not run'}"
        return None


def _metadata(removed: dict[str, Removed]) -> dict[str, dg.MetadataValue]:
    lines = ["| store | rows | files | bytes |", "|---|---|---|---|"]
    lines += [f"| {store} | {r.rows} | {r.files} | {r.bytes} |" for store, r in removed.items()]
    metadata = {"removed": dg.MetadataValue.md("\n".join(lines))}
    for store, r in removed.items():
        metadata[f"{store}/rows_removed"] = dg.MetadataValue.int(r.rows)
        if store in ("landing", "dead_letter"):
            metadata[f"{store}/files_removed"] = dg.MetadataValue.int(r.files)
            metadata[f"{store}/bytes_removed"] = dg.MetadataValue.int(r.bytes)
    return metadata


def nothing_removed(metadata) -> bool:
    """True when a storage_retention materialization's metadata says it removed nothing from any store."""
    return not any(value.value for name, value in metadata.items() if name.endswith("_removed"))


@dg.asset(group_name=RETENTION_GROUP, kinds={"postgres", "parquet"},
          description="Applies each store's retention (README: Retention): landing files of compacted and checked "
                      "hours past the grace, 5-minute rows of batch-final hours past the speed retention, old ledger "
                      "rows, and dead letters (archived to the lake first). Metadata: what it removed, per store.")
def storage_retention(context: dg.AssetExecutionContext, retention_postgres: PostgresResource,
                      lake: LakeResource) -> dg.MaterializeResult:
    settings = Settings.from_env()
    now = utc_now()
    lake.validate()
    lake_settings = lake.settings()
    filesystem, landing_root = arrow_filesystem(lake_settings, lake.landing_path)
    raw_root = arrow_filesystem(lake_settings, lake.raw_devices_path)[1]
    removed: dict[str, Removed] = {"landing": Removed()}
    waiting, folders_kept = [], 0
    checked = _CheckedHours(context.instance)
    with retention_postgres.connect() as conn:
        for hour in prunable_hours(conn, now, timedelta(hours=settings.retention_landing_grace_hours)):
            why = checked.why_not(hour)
            if why:
                waiting.append(why)
                continue
            gone, kept = prune_hour(conn, filesystem, landing_root, raw_root, hour)
            removed["landing"] += gone
            folders_kept += kept
    # A speed table's prune is one transaction: the stream's upserts of current windows never wait on it.
    before = (now - timedelta(days=settings.retention_speed_days)).replace(minute=0, second=0, microsecond=0)
    for table in STREAMING_TABLES:
        with retention_postgres.connect() as conn:
            removed[table.name] = prune_speed_table(conn, table, before)
    with retention_postgres.connect() as conn:
        removed.update(prune_ledger(conn, now - timedelta(days=settings.retention_ledger_days)))
    refused = None
    if settings.dead_letter_retention_days:
        dead_letters_fs, archive_root = arrow_filesystem(lake_settings, lake.dead_letter_path)
        try:
            with retention_postgres.connect() as conn:
                count, folder = prune_dead_letters(conn, dead_letters_fs, archive_root,
                                                   timedelta(days=settings.dead_letter_retention_days),
                                                   SpeedLayerConfig().dead_letter_page_bytes)
            removed["dead_letter"] = Removed(rows=count)
            if count:
                context.log.info(f"{count} dead letters archived to {folder} before they were deleted")
        except PruneRefused as exc:
            refused = str(exc)
    metadata = _metadata(removed)
    metadata["landing/hours_waiting"] = dg.MetadataValue.int(len(waiting))
    metadata["landing/folders_kept"] = dg.MetadataValue.int(folders_kept)
    if waiting:
        metadata["landing/waiting"] = dg.MetadataValue.text("; ".join(waiting[:20]))
    if not settings.dead_letter_retention_days:
        metadata["dead_letter"] = dg.MetadataValue.text(f"kept: {env_name('dead_letter_retention_days')}=0")
    if refused:
        raise dg.Failure(description=f"dead letters not pruned: {refused}", metadata=metadata)
    summary = ("nothing to remove" if nothing_removed(metadata) else
               ", ".join(f"{store}: {r.rows or r.files} {'rows' if r.rows else 'files'}"
                         for store, r in removed.items() if r.rows or r.files))
    context.log.info(f"retention: {summary}")
    metadata["summary"] = dg.MetadataValue.text(summary)
    return dg.MaterializeResult(metadata=metadata)


retention_job = dg.define_asset_job(
    "retention_job", selection=[storage_retention.key],
    # Shares the batch runs' limit (dagster.yaml): never beside a compaction that may restore a pruned hour.
    tags={BATCH_TAG: "retention"},
    description="Applies every store's retention once (storage_retention).")


def retention_schedule(settings: Settings) -> dg.ScheduleDefinition:
    """retention_job at ANTENNA_RETENTION_CRON (UTC); on when Dagster starts with ANTENNA_AUTOMATION=1."""
    return dg.ScheduleDefinition(
        name="retention_schedule", job=retention_job, cron_schedule=settings.retention_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING if settings.automation else dg.DefaultScheduleStatus.STOPPED)

