"""The lake's landing area: an hour's micro-batch folders, removed once the hour's compaction holds them.

An hour's landing folders go when, all at once:
- the hour ended `retention_landing_grace_hours` ago (late data has had that long to reach the batch);
- raw_devices compacted it after its last data landed (compacted_hours.landed_through >= landing_hours
  .last_batch_at) and the four hourly tables were written after that compaction (batch_hours); the retention
  asset also checks in Dagster that those runs' checks passed;
- a folder goes only if the ledger says its batch had landed when the compaction read the landing
  (streaming_batches.landed_at <= landed_through), or if it is the copy of raw_devices a recompaction put back
  (RESTORED_BATCH). Any other folder (a batch landing now, one the ledger no longer knows) stays.
`pruned_landing_hours` records the hour first: from then on raw_devices holds data the landing does not. Late
data for the hour lands in new folders and the hourly sensor runs the hour again; raw_devices then first
copies its compacted files back into the landing (`restore_pruned_hours`), so the recompaction reads all.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from datetime import datetime, timedelta

from pyarrow import fs

from antenna_assets.lake.layout import hour_partition_dir
from antenna_assets.serving.schema import BATCH_TABLES, USERS_OVER_QUOTA_1H

RESTORED_BATCH = "retention-restored"  # the batch folder holding raw_devices' copy of a pruned hour
_HOURLY_TABLES = [t.name for t in (*BATCH_TABLES, USERS_OVER_QUOTA_1H)]


@dataclass(frozen=True)
class Removed:
    """What a prune removed from one store."""

    rows: int = 0
    files: int = 0
    bytes: int = 0

    def __add__(self, other: "Removed") -> "Removed":
        return Removed(self.rows + other.rows, self.files + other.files, self.bytes + other.bytes)


def prunable_hours(conn, now: datetime, grace: timedelta) -> list[datetime]:
    """Hours whose landing folders may go: past the grace, compacted with all their landed data, the four
    hourly tables written after that compaction; not pruned already, unless a prune was cut short or a
    recompaction after a restore has finished."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT c.hour FROM compacted_hours c
            JOIN landing_hours l ON l.hour = c.hour
            LEFT JOIN pruned_landing_hours p ON p.hour = c.hour
            WHERE c.hour + interval '1 hour' <= %(cutoff)s AND l.last_batch_at <= c.landed_through
              AND (p.hour IS NULL OR (NOT p.removed AND p.restored_at IS NULL) OR c.compacted_at > p.restored_at)
              AND (SELECT count(*) FROM batch_hours b WHERE b.date = c.hour AND b.table_name = ANY(%(tables)s)
                   AND b.materialized_at >= c.compacted_at) = %(count)s
            ORDER BY c.hour""", {"cutoff": now - grace, "tables": _HOURLY_TABLES, "count": len(_HOURLY_TABLES)})
        return [row[0] for row in cur.fetchall()]


def _batch_folders(filesystem, hour_dir: str) -> dict[str, str]:
    """The hour's `batch=...` folders: their batch value -> path."""
    infos = filesystem.get_file_info(fs.FileSelector(hour_dir, allow_not_found=True))
    return {posixpath.basename(i.path).removeprefix("batch="): i.path for i in infos
            if i.type == fs.FileType.Directory and posixpath.basename(i.path).startswith("batch=")}


def _held_folders(conn, folders: dict[str, str], hour: datetime) -> list[str]:
    """The folders the hour's last compaction read: their batch landed by its landed_through (a batch value is
    `<checkpoint id>-<batch id>`), and raw_devices' restored copy."""
    keys = {}
    for batch, path in folders.items():
        checkpoint, _, number = batch.rpartition("-")
        if number.isdigit():
            keys[(checkpoint, int(number))] = path
    held = [path for batch, path in folders.items() if batch == RESTORED_BATCH]
    if keys:
        with conn.cursor() as cur:
            cur.execute("""
                SELECT b.checkpoint_id, b.batch_id FROM streaming_batches b
                JOIN unnest(%s::text[], %s::bigint[]) AS f(checkpoint_id, batch_id)
                  ON b.checkpoint_id = f.checkpoint_id AND b.batch_id = f.batch_id
                WHERE b.landed_at <= (SELECT landed_through FROM compacted_hours WHERE hour = %s)""",
                        ([c for c, _ in keys], [n for _, n in keys], hour))
            held += [keys[(c, n)] for c, n in cur.fetchall()]
    return sorted(held)


def _remove(filesystem, folders: list[str]) -> Removed:
    removed = Removed()
    for folder in folders:
        files = [i for i in filesystem.get_file_info(fs.FileSelector(folder, recursive=True))
                 if i.type == fs.FileType.File]
        filesystem.delete_dir(folder)
        removed += Removed(files=len(files), bytes=sum(i.size or 0 for i in files))
    return removed


def _raw_files(filesystem, raw_root: str, hour: datetime) -> list[str]:
    folder = f"{raw_root}/{hour_partition_dir(hour)}"
    return sorted(i.path for i in filesystem.get_file_info(fs.FileSelector(folder, allow_not_found=True))
                  if i.type == fs.FileType.File and i.path.endswith(".parquet"))


def prune_hour(conn, filesystem, landing_root: str, raw_root: str, hour: datetime) -> tuple[Removed, int]:
    """Remove the hour's landing folders its compaction holds (commits as it goes); returns what was removed
    and how many folders stay (not known to have been compacted)."""
    hour_dir = f"{landing_root}/{hour_partition_dir(hour)}"
    folders = _batch_folders(filesystem, hour_dir)
    held = _held_folders(conn, folders, hour)
    if not held:
        return Removed(), len(folders)
    if not _raw_files(filesystem, raw_root, hour):  # never the only copy: raw_devices must hold the hour
        return Removed(), len(folders)
    # Recorded before anything is deleted: a prune cut short is a pruned hour, restored before a recompaction.
    with conn.cursor() as cur:
        cur.execute("INSERT INTO pruned_landing_hours (hour) VALUES (%s) ON CONFLICT (hour) DO UPDATE "
                    "SET pruned_at = now() AT TIME ZONE 'UTC', removed = false, restored_at = NULL", (hour,))
    conn.commit()
    removed = _remove(filesystem, held)
    with conn.cursor() as cur:
        cur.execute("UPDATE pruned_landing_hours SET removed = true WHERE hour = %s", (hour,))
    conn.commit()
    if len(held) == len(folders):
        filesystem.delete_dir(hour_dir)
    return removed, len(folders) - len(held)


def restore_pruned_hours(conn, filesystem, landing_root: str, raw_root: str, hours) -> list[datetime]:
    """Before `hours` are compacted again: copy raw_devices' files of each pruned one back into its landing as
    batch=RESTORED_BATCH (finishing a prune cut short first), so the compaction reads every event of the hour.
    Commits per hour; returns the hours restored. Idempotent: a restore cut short is done again."""
    with conn.cursor() as cur:
        cur.execute("SELECT hour FROM pruned_landing_hours WHERE hour = ANY(%s) AND restored_at IS NULL ORDER BY hour",
                    (list(hours),))
        pruned = [row[0] for row in cur.fetchall()]
    for hour in pruned:
        hour_dir = f"{landing_root}/{hour_partition_dir(hour)}"
        _remove(filesystem, _held_folders(conn, _batch_folders(filesystem, hour_dir), hour))
        target = f"{hour_dir}/batch={RESTORED_BATCH}"
        filesystem.create_dir(target, recursive=True)
        for source in _raw_files(filesystem, raw_root, hour):
            filesystem.copy_file(source, f"{target}/{posixpath.basename(source)}")
        with conn.cursor() as cur:
            cur.execute("UPDATE pruned_landing_hours SET restored_at = now() AT TIME ZONE 'UTC' WHERE hour = %s",
                        (hour,))
        conn.commit()
    return pruned

