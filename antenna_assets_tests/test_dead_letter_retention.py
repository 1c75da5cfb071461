"""Dead letters' retention (`antenna dead-letters prune`): old rows leave PostgreSQL only once their
archive in the lake is written and read back, on a local lake and on GCS (the emulator). No Spark."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta

import pyarrow.parquet as pq
import pytest
from pyarrow import fs

from antenna_assets.cli import main
from antenna_assets.hours import utc_now
from antenna_assets.lake.gcs import arrow_filesystem
from antenna_assets.postgres import transaction
from antenna_assets.serving.schema import DEAD_LETTER
from antenna_assets.speed.dead_letter_retention import PruneRefused, prune_dead_letters
from antenna_assets_tests.conftest import GCS_BUCKET
from antenna_assets_tests.truth import execute, query

DAY, HOUR = timedelta(days=1), timedelta(hours=1)


def _dead_letter(offset: int, age: timedelta, value: bytes | None, location: str | None = None) -> dict:
    return {"topic": "devices", "kafka_partition": 0, "kafka_offset": offset,
            "raw_value": None if location else value, "raw_key": b"k" if offset % 2 else None, "preview": "p",
            "reason": "not_utf8", "kafka_timestamp": datetime(2026, 1, 1), "ingest_time": utc_now() - age,
            "raw_length": None if value is None else len(value),
            "raw_sha256": None if value is None else hashlib.sha256(value).hexdigest(), "raw_location": location}


def _insert(url: str, rows: list[dict]) -> None:
    for row in rows:
        execute(url, f"{DEAD_LETTER.insert_into(tuple(row))} VALUES ({', '.join(['%s'] * len(row))})",
                tuple(row.values()))


def _rows(url: str) -> dict[int, dict]:
    names = ", ".join(DEAD_LETTER.names)
    return {row[2]: {name: bytes(v) if isinstance(v, memoryview) else v for name, v in zip(DEAD_LETTER.names, row)}
            for row in query(url, f"SELECT {names} FROM dead_letter")}


def _old_and_new(url: str) -> tuple[dict, dict]:
    old = [_dead_letter(n, 10 * DAY + n * timedelta(minutes=1), bytes([n]) * (300 + n)) for n in range(12)]
    old += [_dead_letter(12, 9 * DAY + 12 * HOUR, None), _dead_letter(13, 8 * DAY, b"\xff" * 5000, location="/lake/dead_letter/batch=c-1")]
    new = [_dead_letter(100 + n, 6 * DAY, b"\xfe" * 10) for n in range(3)]
    _insert(url, old + new)
    everything = _rows(url)
    return ({o: everything[o] for o in range(14)}, {o: everything[o] for o in range(100, 103)})


def _archived(filesystem, folder: str) -> dict[int, dict]:
    rows = {}
    for info in filesystem.get_file_info(fs.FileSelector(folder)):
        for row in pq.read_table(info.path, filesystem=filesystem).to_pylist():
            rows[row["kafka_offset"]] = row
    return rows


def test_prune_archives_every_old_row_whole_before_deleting_it(serving_db, tmp_path):
    old, new = _old_and_new(serving_db)
    filesystem = fs.LocalFileSystem()
    with transaction(serving_db) as conn:
        count, folder = prune_dead_letters(conn, filesystem, str(tmp_path / "dead_letter"), 7 * DAY, page_bytes=1_000)
    assert count == len(old)
    assert _rows(serving_db) == new  # the young ones stay
    archived = _archived(filesystem, folder)
    assert archived == old  # every column, bytes and times exact
    assert len(list((tmp_path / "dead_letter").glob("pruned=*/part-*.parquet"))) > 3  # files of about a page each
    with transaction(serving_db) as conn:
        assert prune_dead_letters(conn, filesystem, str(tmp_path / "dead_letter"), 7 * DAY, 1_000)[0] == 0


def test_prune_deletes_nothing_when_the_archive_is_not_the_record(serving_db, tmp_path):
    old, new = _old_and_new(serving_db)
    execute(serving_db, "UPDATE dead_letter SET raw_sha256 = repeat('0', 64) WHERE kafka_offset = 3")
    with pytest.raises(PruneRefused, match="does not match its raw_sha256: nothing deleted"):
        with transaction(serving_db) as conn:
            prune_dead_letters(conn, fs.LocalFileSystem(), str(tmp_path / "dead_letter"), 7 * DAY, 1_000)
    assert set(_rows(serving_db)) == set(old) | set(new)


def test_the_command_prunes_as_configured_and_refuses_without_a_retention(serving_db, tmp_path, monkeypatch, capsys):
    old, new = _old_and_new(serving_db)
    monkeypatch.setenv("ANTENNA_POSTGRES_URL", serving_db)
    monkeypatch.setenv("ANTENNA_LAKE_ROOT", str(tmp_path))
    monkeypatch.delenv("ANTENNA_DEAD_LETTER_RETENTION_DAYS", raising=False)
    assert main(["dead-letters", "prune"]) == 2
    assert "retention is off (ANTENNA_DEAD_LETTER_RETENTION_DAYS=0)" in capsys.readouterr().err
    assert len(_rows(serving_db)) == len(old) + len(new)
    monkeypatch.setenv("ANTENNA_DEAD_LETTER_RETENTION_DAYS", "9")
    assert main(["dead-letters", "prune"]) == 0
    assert f"moved 13 dead letters older than 9 days to {tmp_path}/dead_letter/pruned=" in capsys.readouterr().out
    assert set(_rows(serving_db)) == {13} | set(new)  # 8 days old: kept


def test_prune_archives_to_a_gcs_lake(serving_db, settings, gcs_emulator):
    old, _ = _old_and_new(serving_db)
    filesystem, root = arrow_filesystem(settings, f"gs://{GCS_BUCKET}/prune-{uuid.uuid4().hex[:8]}/dead_letter")
    with transaction(serving_db) as conn:
        count, folder = prune_dead_letters(conn, filesystem, root, 7 * DAY, 4_000)
    assert count == len(old) and _archived(filesystem, folder) == old
