"""Retention (issue 33): a compressed "month" through the stream, the batch and the retention job, with small
settings; what each store keeps; the devices topic's explicit retention; `antenna storage`."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg

from antenna_assets.assets.batch import hourly_tables, raw_devices
from antenna_assets.assets.retention import storage_retention
from antenna_assets.assets.sources import user_metadata
from antenna_assets.hours import HOUR, partition_key, utc_now
from antenna_assets.partitions import partition_range_tags
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.serving.schema import BATCH_TABLES, STREAMING_TABLES, USERS_OVER_QUOTA_1H
from antenna_assets.serving.views import SERVING_DEAD_LETTERS_5M, SERVING_STREAM_FRESHNESS, SERVING_VIEWS
from antenna_assets.settings import Settings
from antenna_assets.sources.simulator import SimulatorConfig, run_simulation
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, run_until_stopped
from antenna_assets.speed.runtime import speed_layer_targets
from antenna_assets_tests.truth import execute, query

HOURS = 36  # of traffic, ending 4 hours ago: about half older than the one-day settings below
SETTINGS = {"ANTENNA_RETENTION_SPEED_DAYS": "1", "ANTENNA_RETENTION_LANDING_GRACE_HOURS": "24",
            "ANTENNA_RETENTION_LEDGER_DAYS": "2", "ANTENNA_DEAD_LETTER_RETENTION_DAYS": "5",
            "ANTENNA_BATCH_LOOKBACK_HOURS": "200"}
HOURLY = [t.name for t in (*BATCH_TABLES, USERS_OVER_QUOTA_1H)]


def _snapshot(url: str) -> dict[str, list]:
    """Every serving view and hourly table, row by row (the freshness view without its lag, which is the clock's)."""
    tables = {}
    for name in (*SERVING_VIEWS, *HOURLY):
        columns = "latest_event_time, last_applied_at" if name == SERVING_STREAM_FRESHNESS else "*"
        tables[name] = sorted(query(url, f"SELECT {columns} FROM {name}"), key=repr)
    return tables


def _landing_hours(lake: Path) -> set[datetime]:
    """Hours with at least one file in the landing area."""
    found = set()
    for file in (lake / "landing" / "devices").rglob("*.parquet"):
        parts = dict(p.split("=", 1) for p in file.relative_to(lake / "landing" / "devices").parts[:4])
        found.add(datetime(int(parts["year"]), int(parts["month"]), int(parts["day"]), int(parts["hour"])))
    return found


def _removed(result) -> dict[str, int]:
    metadata = result.asset_materializations_for_node("storage_retention")[0].metadata
    return {name: value.value for name, value in metadata.items() if name.endswith("_removed")}


def test_a_compressed_month_keeps_every_store_bounded_and_every_answer(settings, topic, serving_db, tmp_path, spark,
                                                                       monkeypatch):
    for name, value in {**SETTINGS, "ANTENNA_TOPIC": topic}.items():
        monkeypatch.setenv(name, value)
    policy = Settings.from_env()
    now = utc_now()
    last = now.replace(minute=0, second=0, microsecond=0) - 4 * HOUR
    first = last - (HOURS - 1) * HOUR
    # One message per user every 10 minutes: 120 an hour, 2% malformed (dead letters).
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=HOURS,
                                           start=first, interval_seconds=600, seed=33, malformed_fraction=0.02,
                                           progress=False))
    lake = LakeResource(root=str(tmp_path))
    resources = {"postgres": PostgresResource(url=serving_db), "lake": lake, "spark": SparkResource.for_lake(lake),
                 "retention_postgres": PostgresResource(url=serving_db)}
    config = SpeedLayerConfig(trigger="available_now", watermark="3650 days", query_name=topic)

    def stream():
        run_until_stopped(SpeedLayer(spark, config, speed_layer_targets(Settings.from_env(), lake, serving_db, config)))

    stream()
    instance = dg.DagsterInstance.ephemeral()
    batch = dg.materialize([user_metadata, raw_devices, hourly_tables], instance=instance, resources=resources,
                           tags=partition_range_tags(partition_key(first), partition_key(last)))
    assert batch.success
    # The ledger's and the dead letters' clocks are the ingest's (today): aged here as if they were this old.
    for table, column in (("dead_letter", "ingest_time"), ("streaming_batches", "applied_at"),
                          ("streaming_batch_clocks", "planned_at")):
        execute(serving_db, f"UPDATE {table} SET {column} = {column} - interval '10 days'")
    before = _snapshot(serving_db)
    dead_letters = query(serving_db, "SELECT count(*) FROM dead_letter")[0][0]
    assert dead_letters == truth.malformed > 0
    batches = query(serving_db, "SELECT count(*) FROM streaming_batches")[0][0]
    # Per partition the records went to: a keyless producer's sticky partitioner may use one, or all.
    marks = query(serving_db, "SELECT * FROM streaming_offsets ORDER BY topic, kafka_partition")
    assert marks

    result = dg.materialize([storage_retention], instance=instance, resources=resources)
    removed = _removed(result)
    speed_cutoff = (now - timedelta(days=policy.retention_speed_days)).replace(minute=0, second=0, microsecond=0)
    landing_cutoff = now - timedelta(hours=policy.retention_landing_grace_hours)
    assert removed["landing/files_removed"] > 0 and removed["landing/bytes_removed"] > 0
    assert all(removed[f"{t.name}/rows_removed"] > 0 for t in STREAMING_TABLES)
    assert removed["dead_letter/rows_removed"] == dead_letters

    # Every store under the bound its setting gives.
    assert not {h for h in _landing_hours(tmp_path) if h + HOUR <= landing_cutoff}
    assert {h for h in _landing_hours(tmp_path)} == {h for h in (first + n * HOUR for n in range(HOURS))
                                                     if h + HOUR > landing_cutoff}
    hours_kept = len([n for n in range(HOURS) if first + n * HOUR >= speed_cutoff])
    for table in STREAMING_TABLES:
        keys = query(serving_db, f"SELECT count(DISTINCT {table.key}) FROM {table.name}")[0][0]
        rows, oldest = query(serving_db, f"SELECT count(*), min(date) FROM {table.name}")[0]
        assert oldest >= speed_cutoff and rows <= keys * 12 * hours_kept
    assert query(serving_db, "SELECT count(*) FROM dead_letter")[0][0] == 0
    # The ledger keeps the checkpoint's newest batch and the one with the newest watermark time, and every mark.
    kept = query(serving_db, "SELECT count(*) FROM streaming_batches")[0][0]
    assert 1 <= kept <= 2 and removed["streaming_batches/rows_removed"] == batches - kept
    assert query(serving_db, "SELECT * FROM streaming_offsets ORDER BY topic, kafka_partition") == marks

    # The same answers: every view and hourly table; dead letters are in the lake's archive, not the view.
    after = _snapshot(serving_db)
    assert after.pop(SERVING_DEAD_LETTERS_5M) == []
    before.pop(SERVING_DEAD_LETTERS_5M)
    assert after == before

    # A late event for the first hour, whose landing files are gone: counted by the hour's rerun.
    assert first not in _landing_hours(tmp_path)
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    antenna = "00000000-0000-0000-0000-000000000000"
    producer.produce(topic, json.dumps({"timestamp": int((first + timedelta(minutes=7)).timestamp()),
                                        "id": "00000000-0000-0000-0000-000000000001", "antenna_id": antenna,
                                        "bytes": 4321, "app": "SKYPE"}).encode())
    producer.flush(30)
    stream()
    from antenna_assets.sensors import hourly_batch_decision

    with PostgresResource(url=serving_db).connect() as conn:
        decision = hourly_batch_decision(instance, conn, Settings.from_env(), utc_now(), now.timestamp())
    assert [r.partition_key for r in decision] == [partition_key(first)]
    rerun = dg.materialize([user_metadata, raw_devices, hourly_tables], instance=instance, resources=resources,
                           partition_key=partition_key(first))
    assert rerun.success
    old = dict(((k, d), v) for k, d, v in before["bytes_agg_antenna_1h"])
    new = {(k, d): v for k, d, v in query(serving_db, "SELECT * FROM bytes_agg_antenna_1h")}
    assert new[(antenna, first)] == old[(antenna, first)] + 4321
    assert {k: v for k, v in new.items() if k != (antenna, first)} == \
        {k: v for k, v in old.items() if k != (antenna, first)}
    view = {(k, d): v for k, d, v, *_ in query(serving_db, "SELECT * FROM serving_antenna_1h")}
    assert view[(antenna, first)] == old[(antenna, first)] + 4321

    # Retention again: the hour's landing (its restored copy and the late folder) goes again; nothing else changes.
    again = _removed(dg.materialize([storage_retention], instance=instance, resources=resources))
    assert again["landing/files_removed"] >= 2
    assert first not in _landing_hours(tmp_path)
    assert query(serving_db, "SELECT sum_antenna_bytes FROM serving_antenna_1h WHERE antenna_id = %s AND date = %s",
                 (antenna, first))[0][0] == old[(antenna, first)] + 4321


def test_nothing_to_remove_is_said(serving_db, tmp_path):
    """An empty store set: the job removes nothing and says so (the demo prints it)."""
    from antenna_assets.assets.retention import nothing_removed

    lake = LakeResource(root=str(tmp_path))
    result = dg.materialize([storage_retention], instance=dg.DagsterInstance.ephemeral(),
                            resources={"lake": lake, "retention_postgres": PostgresResource(url=serving_db)})
    metadata = result.asset_materializations_for_node("storage_retention")[0].metadata
    assert nothing_removed(metadata) and metadata["summary"].value == "nothing to remove"


def test_the_devices_topic_is_created_with_explicit_retention(settings):
    from confluent_kafka.admin import ConfigResource

    from antenna_assets.kafka_client import admin_client, librdkafka_config
    from antenna_assets.stack.kafka import ensure_topic

    name = f"devices-retention-{uuid.uuid4().hex[:8]}"
    ensure_topic(settings.replace(topic=name, topic_retention_ms=3_600_000, topic_retention_bytes=12_345_678))
    admin = admin_client(librdkafka_config(settings))
    resource = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([resource])[resource].result(30)
    assert configs["retention.ms"].value == "3600000" and configs["retention.bytes"].value == "12345678"
    assert not configs["retention.ms"].is_default


def test_antenna_storage_prints_every_store_in_one_table(settings, capsys):
    from antenna_assets.cli import main

    assert main(["storage"]) == 0
    out = capsys.readouterr().out
    header, rule, *rows = out.splitlines()
    assert header.split() == ["store", "size", "holds", "oldest", "(UTC)"]
    names = {row.split("  ")[0].strip() for row in rows}
    assert {f"kafka topic {settings.topic}", "lake landing/devices", "lake raw_devices", "bytes_agg_antenna",
            "dead_letter", "streaming_batches", "user_metadata_audit", "dagster runs", "dagster event_logs",
            "dagster job_ticks"} <= names


def _parquet(path: Path, rows: int) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_table(rows), path)


def _table(rows: int):
    import pyarrow as pa

    return pa.table({"id": [f"u{n}" for n in range(rows)], "bytes": list(range(rows))})


def test_the_landing_prune_removes_only_what_the_compaction_read_and_a_restore_finishes_a_cut_short_prune(
        serving_db, tmp_path):
    """No Spark: folders the ledger does not know (a batch landing now) stay; a prune recorded but cut short
    before its deletes is finished by the restore, which then copies raw_devices back."""
    from pyarrow import fs

    from antenna_assets.retention.landing import RESTORED_BATCH, prunable_hours, prune_hour, restore_pruned_hours

    landing, raw = tmp_path / "landing", tmp_path / "raw"
    hours = [datetime(2026, 1, 1, 0), datetime(2026, 1, 1, 1)]
    landed = datetime(2026, 1, 2)
    for hour in hours:
        folder = f"year={hour.year}/month={hour.month}/day={hour.day}/hour={hour.hour}"
        for batch in ("ck-1", "ck-2", "ck-9"):  # ck-9: files written, its landing not recorded yet
            _parquet(landing / folder / f"batch={batch}" / "part-0.parquet", 3)
        _parquet(raw / folder / "part-00000.parquet", 6)
        execute(serving_db, "INSERT INTO landing_hours (hour, last_batch_at) VALUES (%s, %s)", (hour, landed))
        execute(serving_db, "INSERT INTO compacted_hours (hour, landed_through, compacted_at) VALUES (%s, %s, %s)",
                (hour, landed, landed + timedelta(minutes=1)))
        for table in HOURLY:
            execute(serving_db, "INSERT INTO batch_hours (table_name, date, materialized_at) VALUES (%s, %s, %s)",
                    (table, hour, landed + timedelta(minutes=2)))
    for batch_id in (1, 2):
        execute(serving_db, "INSERT INTO streaming_batches (query, checkpoint_id, batch_id, good_messages, "
                            "bad_messages, late_messages, landed_at) VALUES ('q', 'ck', %s, 3, 0, 0, %s)",
                (batch_id, landed))
    filesystem = fs.LocalFileSystem()
    with PostgresResource(url=serving_db).connect() as conn:
        assert prunable_hours(conn, utc_now(), timedelta(hours=1)) == hours
        removed, kept = prune_hour(conn, filesystem, str(landing), str(raw), hours[0])
        assert (removed.files, kept) == (2, 1)
        # The second hour's prune is cut short: recorded, nothing deleted yet.
        execute(serving_db, "INSERT INTO pruned_landing_hours (hour) VALUES (%s)", (hours[1],))
        assert prunable_hours(conn, utc_now(), timedelta(hours=1)) == [hours[1]]  # to be finished
        assert restore_pruned_hours(conn, filesystem, str(landing), str(raw), hours) == hours
    for hour in hours:
        folder = landing / f"year={hour.year}/month={hour.month}/day={hour.day}/hour={hour.hour}"
        assert sorted(p.name for p in folder.iterdir()) == ["batch=ck-9", f"batch={RESTORED_BATCH}"]
        assert (folder / f"batch={RESTORED_BATCH}" / "part-00000.parquet").read_bytes() == \
            (raw / folder.relative_to(landing) / "part-00000.parquet").read_bytes()
    # Restored, not compacted again yet: not prunable until a compaction after the restore.
    with PostgresResource(url=serving_db).connect() as conn:
        assert prunable_hours(conn, utc_now(), timedelta(hours=1)) == []
