"""Dead letters' retention: rows older than a number of days leave PostgreSQL, never as the only copy.

`antenna dead-letters prune [--older-than-days N]` (default ANTENNA_DEAD_LETTER_RETENTION_DAYS; 0 keeps
every row) moves the `dead_letter` rows ingested more than N days ago to the lake: all their columns,
inline bytes included, as Parquet files under `<lake>/dead_letter/pruned=<UTC time>/`, each written and
read back (rows, and every value against its SHA-256) before the rows are deleted, in one transaction;
if anything fails, nothing is deleted. A record whose bytes are in the lake already (`raw_location`) keeps
them there. Nothing is ever deleted from the lake: its own lifecycle (e.g. a bucket's rule) decides.
Runs as the schema's owner: the pipeline's writer role may not delete dead letters.
"""

from __future__ import annotations

import argparse
import hashlib
from datetime import timedelta

from antenna_assets.hours import utc_now
from antenna_assets.serving.schema import DEAD_LETTER

_SIZE = "coalesce(octet_length(raw_value), 0) + coalesce(octet_length(raw_key), 0)"
_VALUE, _KEY = DEAD_LETTER.names.index("raw_value"), DEAD_LETTER.names.index("raw_key")


class PruneRefused(RuntimeError):
    """The rows were not deleted; the message says why."""


def prune_dead_letters(conn, filesystem, archive_root: str, older_than: timedelta, page_bytes: int) -> tuple[int, str]:
    """Archive then delete the dead letters ingested before now - `older_than` (`conn`'s transaction,
    committed by the caller); returns how many, and the archive folder (path on `filesystem`, a pyarrow
    file system; none written when there were none). Each file holds at most `page_bytes` of keys and values
    (or one row larger than that)."""
    cutoff = utc_now() - older_than
    folder = f"{archive_root.rstrip('/')}/pruned={utc_now():%Y-%m-%dT%H-%M-%S}"
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*), max({_SIZE}) FROM dead_letter WHERE ingest_time < %s", (cutoff,))
        rows, largest = cur.fetchone()
    if not rows:
        return 0, folder
    files = []
    # Server-side, a fetch at a time, each at most about a page: only one file's rows are in memory.
    with conn.cursor(name="dead_letters_to_prune") as cur:
        cur.execute(f"SELECT {', '.join(DEAD_LETTER.names)} FROM dead_letter WHERE ingest_time < %s "
                    "ORDER BY topic, kafka_partition, kafka_offset", (cutoff,))
        page, size, fetch = [], 0, max(1, page_bytes // max(1, largest))
        while batch := cur.fetchmany(fetch):
            for row in batch:
                row_size = len(row[_VALUE] or b"") + len(row[_KEY] or b"")
                if page and size + row_size > page_bytes:
                    files.append(_write(filesystem, folder, len(files), page))
                    page, size = [], 0
                page.append(row)
                size += row_size
        if page:
            files.append(_write(filesystem, folder, len(files), page))
    archived = sum(_verified_rows(filesystem, path) for path in files)
    with conn.cursor() as cur:
        cur.execute("DELETE FROM dead_letter WHERE ingest_time < %s", (cutoff,))
        if cur.rowcount != archived:  # the caller's transaction rolls the delete back
            raise PruneRefused(f"{cur.rowcount} dead letters older than {cutoff} but {archived} archived in {folder}: "
                               "nothing deleted; run the prune again")
    return archived, folder


def archive_schema():
    """dead_letter's columns as Arrow types: the archive files' schema."""
    import pyarrow as pa

    types = {"TEXT": pa.string(), "INT": pa.int32(), "BIGINT": pa.int64(), "BYTEA": pa.binary(),
             "TIMESTAMP": pa.timestamp("us")}
    return pa.schema([(c.name, types[c.definition.split()[0]]) for c in DEAD_LETTER.columns])


def _write(filesystem, folder: str, number: int, rows: list[tuple]) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = f"{folder}/part-{number:05d}.parquet"
    filesystem.create_dir(folder, recursive=True)
    schema = archive_schema()
    table = pa.Table.from_arrays([pa.array([bytes(v) if isinstance(v, memoryview) else v for v in values], field.type)
                                  for values, field in zip(zip(*rows), schema)], schema=schema)
    pq.write_table(table, path, filesystem=filesystem)
    return path


def _verified_rows(filesystem, path: str) -> int:
    """The rows of an archive file read back, each value checked against its SHA-256."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, filesystem=filesystem, columns=["raw_value", "raw_sha256", "raw_location"])
    for value, digest, location in zip(*(table.column(c).to_pylist() for c in table.column_names)):
        if location is None and value is not None and hashlib.sha256(value).hexdigest() != digest:
            raise PruneRefused(f"{path}: a value read back does not match its raw_sha256: nothing deleted")
    return table.num_rows


def register(commands) -> None:
    parser = commands.add_parser("dead-letters", help="the speed layer's dead letters")
    actions = parser.add_subparsers(dest="action", required=True)
    prune = actions.add_parser("prune", help="move dead letters older than N days from PostgreSQL to the lake")
    prune.add_argument("--older-than-days", type=int,
                       help="default ANTENNA_DEAD_LETTER_RETENTION_DAYS (0: keep every dead letter)")
    prune.set_defaults(handler=_prune)


def _prune(args: argparse.Namespace) -> int:
    import sys

    from antenna_assets.lake.gcs import arrow_filesystem
    from antenna_assets.postgres import transaction
    from antenna_assets.resources import LakeResource
    from antenna_assets.settings import Settings, env_name
    from antenna_assets.speed.config import SpeedLayerConfig

    settings = Settings.from_env()
    days = settings.dead_letter_retention_days if args.older_than_days is None else args.older_than_days
    if days <= 0:
        print(f"antenna dead-letters prune: nothing to do: retention is off ({env_name('dead_letter_retention_days')}"
              f"={settings.dead_letter_retention_days}); pass --older-than-days N", file=sys.stderr)
        return 2
    lake = LakeResource(root=settings.lake_root, project=settings.gcs_project, endpoint=settings.gcs_endpoint)
    lake.validate()
    filesystem, root = arrow_filesystem(lake.settings(), lake.dead_letter_path)
    try:
        with transaction(settings.postgres_admin_url) as conn:
            count, folder = prune_dead_letters(conn, filesystem, root, timedelta(days=days),
                                               SpeedLayerConfig().dead_letter_page_bytes)
    except PruneRefused as exc:
        print(f"antenna dead-letters prune: refused: {exc}", file=sys.stderr)
        return 1
    where = lake.dead_letter_path + folder[len(root):]
    print(f"moved {count} dead letters older than {days} days to {where}" if count
          else f"no dead letters older than {days} days")
    return 0
