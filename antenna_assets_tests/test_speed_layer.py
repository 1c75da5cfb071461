"""The speed layer against the real broker, PostgreSQL and Spark."""

from __future__ import annotations

import calendar
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import psycopg2
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Producer
from pyspark import StorageLevel
from pyspark.sql import functions as F

from antenna_assets.postgres import transaction
from antenna_assets.speed.ledger import APPLIED, LANDED, BatchKey, apply_micro_batch, batch_state
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.serving.migration import migrate
from antenna_assets.sources.simulator import SimulatorConfig, run_simulation
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.heartbeat import Heartbeat, RunDeclaredDead, declare_dead
from antenna_assets.speed.layer import (CHECKPOINT_FILE_MANAGER, FILE_SYSTEM_CHECKPOINTS, SPEED_TABLES, MicroBatchFailed,
                                        SpeedLayer, SpeedLayerTargets, run_until_stopped)
from antenna_assets.transforms.micro_batch import PER_PARTITION, micro_batch_summary
from antenna_assets_tests.truth import expected, query, read_table

# Backfilled history reaches Kafka out of event-time order across partitions; these tests check
# exact totals, so they allow that much lateness. Lateness itself is tested separately below.
NO_LATE_DROPS = "3650 days"
TABLES = ((BYTES_AGG_ANTENNA, "antenna"), (BYTES_AGG_USER, "user"), (BYTES_AGG_APP, "app"))


def _targets(settings, topic, url, lake: Path) -> SpeedLayerTargets:
    return SpeedLayerTargets(settings.kafka_bootstrap, topic, str(lake / "landing"), str(lake / "checkpoints" / topic), url)


def _assert_tables_equal_truth(url, truth):
    for table, per in TABLES:
        assert read_table(url, table) == expected(truth, per), table.name


def test_available_now_equals_ground_truth(settings, spark, topic, serving_db, tmp_path):
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=1,
                                           start=datetime(2025, 3, 1, 10), seed=11, malformed_fraction=0.05,
                                           progress=False))
    assert truth.malformed > 0 and truth.with_extra_fields > 0
    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, max_offsets_per_trigger=500,
                              lake_rows_per_file=1000, query_name=topic, progress_interval_seconds=5)
    layer = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(layer)

    _assert_tables_equal_truth(serving_db, truth)
    assert layer.stats.good_messages == truth.messages
    assert layer.stats.batches >= 2
    assert all(seconds > 0 for seconds in layer.stats.step_seconds.values()), layer.stats.step_seconds
    # Every malformed message is in the dead-letter store, with its reason and Kafka coordinates.
    reasons = dict(query(serving_db, "SELECT reason, count(*) FROM dead_letter GROUP BY reason"))
    assert reasons == {k: v for k, v in truth.malformed_by_kind.items() if v}
    [(missing_raw,)] = query(serving_db, "SELECT count(*) FROM dead_letter WHERE raw_value IS NULL OR kafka_offset < 0")
    assert missing_raw == 0
    # The lake holds every valid message once, under its UTC hour.
    landing = spark.read.parquet(str(tmp_path / "landing"))
    assert landing.count() == truth.messages
    hours = {(r.year, r.month, r.day, r.hour) for r in landing.select("year", "month", "day", "hour").distinct().collect()}
    assert hours == {(h.year, h.month, h.day, h.hour) for h in truth.hours}
    assert landing.where("email IS NULL").count() == 0
    # A batch under lake_rows_per_file is written by one task: one file per hour it touches (the
    # batch's four Kafka tasks wrote up to four).
    hour_folders = [folder for folder in (tmp_path / "landing").rglob("batch=*") if folder.is_dir()]
    assert len(hour_folders) >= layer.stats.batches
    assert {folder: len(list(folder.glob("*.parquet"))) for folder in hour_folders} == dict.fromkeys(hour_folders, 1)
    # Spark's checkpoint logs, one offsets and one commit file per batch, went through the FileSystem API.
    assert spark.conf.get(CHECKPOINT_FILE_MANAGER) == FILE_SYSTEM_CHECKPOINTS
    checkpoint = tmp_path / "checkpoints" / topic
    assert len(list((checkpoint / "commits").glob("[0-9]*"))) == len(list((checkpoint / "offsets").glob("[0-9]*"))) \
        == layer.stats.batches


class _CrashBeforeLanding(SpeedLayer):
    """Fails the first lake write: the batch's totals are committed, its files are not."""

    def _land(self, lake_rows, files):
        if not getattr(self, "crashed", False):
            self.crashed = True
            raise RuntimeError("crash between the totals and the lake write")
        super()._land(lake_rows, files)


def test_crash_between_totals_and_lake_write_lands_the_batch_on_replay(settings, spark, topic, serving_db, tmp_path):
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.5,
                                           start=datetime(2025, 3, 2, 10), seed=12, progress=False))
    # Every batch lands before the next (the path of catch-up batches): the failure is the batch's own.
    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, max_offsets_per_trigger=100,
                              query_name=topic, batch_attempts=1, lake_write_behind_max_messages=0)
    with pytest.raises(MicroBatchFailed, match="micro-batch 0 .* failed 1 times: RuntimeError: crash between the totals and the lake write"):
        run_until_stopped(_CrashBeforeLanding(spark, config, _targets(settings, topic, serving_db, tmp_path)))
    assert query(serving_db, "SELECT batch_id, landed_at IS NULL FROM streaming_batches WHERE query = %s",
                 (topic,)) == [(0, True)]
    assert not (tmp_path / "landing").exists() or spark.read.parquet(str(tmp_path / "landing")).count() == 0

    resumed = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(resumed)
    _assert_tables_equal_truth(serving_db, truth)
    assert resumed.stats.skipped_batches == 1  # batch 0: landed again, not added again
    assert spark.read.parquet(str(tmp_path / "landing")).count() == truth.messages
    assert query(serving_db, "SELECT count(*) FROM streaming_batches WHERE query = %s AND landed_at IS NULL",
                 (topic,)) == [(0,)]


class _FilesFailBehind(SpeedLayer):
    """Every lake write behind the next batch fails (the thread's, each time it tries); `dies` leaves the last
    one as a killed run leaves it: its thread stops, nothing settles it."""

    dies = False

    def _land(self, lake_rows, files):
        if threading.current_thread().name == "lake-write":
            self.failed_behind = getattr(self, "failed_behind", 0) + 1
            raise RuntimeError("the lake write behind the next batch failed")
        super()._land(lake_rows, files)

    def finish_landing(self):
        if not self.dies:
            return super().finish_landing()
        self._behind.landing.taken_over.set()
        self._behind.landing.join_files()
        return None


def _landing_count(spark, lake: Path) -> int:
    return spark.read.parquet(str(lake / "landing")).count() if (lake / "landing").exists() else 0


def test_files_that_fail_behind_the_next_batch_are_written_by_it_and_at_the_end(settings, spark, topic, serving_db,
                                                                                tmp_path):
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                           start=datetime(2025, 3, 4, 10), seed=13, progress=False))
    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, max_offsets_per_trigger=100,
                              query_name=topic)
    layer = _FilesFailBehind(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(layer)
    # Each batch's failed files (tried again in their thread meanwhile) written by the next batch, the last
    # one's after the query.
    assert layer.failed_behind >= layer.stats.batches >= 3
    _assert_tables_equal_truth(serving_db, truth)
    assert _landing_count(spark, tmp_path) == truth.messages
    assert _unlanded_batches(serving_db, topic) == 0


def test_files_a_stopped_run_left_unwritten_are_written_from_kafka_at_the_next_start(settings, spark, topic,
                                                                                     serving_db, tmp_path):
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                           start=datetime(2025, 3, 5, 10), seed=14, progress=False))
    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, max_offsets_per_trigger=100,
                              query_name=topic)
    killed = _FilesFailBehind(spark, config, _targets(settings, topic, serving_db, tmp_path))
    killed.dies = True
    run_until_stopped(killed)
    # Every batch committed in the checkpoint, the last one's totals too, but not its files: no replay lands them.
    _assert_tables_equal_truth(serving_db, truth)
    assert _unlanded_batches(serving_db, topic) == 1
    missing = truth.messages - _landing_count(spark, tmp_path)
    assert missing > 0

    resumed = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(resumed)  # nothing new in the topic: no batch runs
    assert (resumed.stats.recovered_batches, resumed.stats.batches, resumed.stats.skipped_batches) == (1, 0, 0)
    assert _landing_count(spark, tmp_path) == truth.messages  # the missing ones, once
    assert _unlanded_batches(serving_db, topic) == 0
    _assert_tables_equal_truth(serving_db, truth)
    batch_folders = {folder.name for folder in (tmp_path / "landing").rglob("batch=*")}
    [(batches,)] = query(serving_db, "SELECT count(*) FROM streaming_batches WHERE query = %s", (topic,))
    assert len(batch_folders) == batches  # the recovered files in their own batch's folder, as it would have


class _FailsOnceBehind(SpeedLayer):
    """The landing thread's first try of `step` fails: its files (a storage outage) or its landed mark (the
    first transaction on a connection PostgreSQL dropped while restarting)."""

    failed = False

    def _fail_once(self, step: str) -> None:
        if step == self.step and threading.current_thread().name == "lake-write" and not self.failed:
            self.failed = True
            raise psycopg2.OperationalError("server closed the connection unexpectedly") if step == "mark" \
                else OSError("the lake's storage did not answer")

    def _land(self, lake_rows, files):
        self._fail_once("files")
        super()._land(lake_rows, files)

    def _record_landed(self, behind, postgres):
        self._fail_once("mark")
        super()._record_landed(behind, postgres)


@pytest.mark.parametrize("step", ["files", "mark"])
def test_a_landing_that_fails_behind_is_done_while_the_topic_stays_quiet(step, settings, spark, topic, serving_db,
                                                                       tmp_path):
    """No next batch comes to settle it: the landing's own thread tries again (test_faults' PostgreSQL outage
    left such a batch unlanded for as long as the stream idled)."""
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                           start=datetime(2025, 3, 6, 10), seed=15, progress=False))
    config = SpeedLayerConfig(watermark=NO_LATE_DROPS, query_name=topic)  # a live stream: it idles once read
    layer = _FailsOnceBehind(spark, config, _targets(settings, topic, serving_db, tmp_path))
    layer.step = step
    deadline, landed_while_running = time.monotonic() + 60, []

    def landed_or_late() -> bool:
        if layer.stats.batches and _unlanded_batches(serving_db, topic) == 0:
            landed_while_running.append(layer.stats.batches)
        return bool(landed_while_running) or time.monotonic() > deadline

    run_until_stopped(layer, should_stop=landed_or_late, poll_seconds=0.5)
    assert layer.failed
    assert landed_while_running == [1], "the batch was not landed while the stream ran"
    _assert_tables_equal_truth(serving_db, truth)
    assert _landing_count(spark, tmp_path) == truth.messages


class _AppliedElsewhereFirst(SpeedLayer):
    """Another run commits each batch between this run's ledger check and its own commit."""

    def _micro_batch_result(self, *args, **kwargs):
        result = super()._micro_batch_result(*args, **kwargs)
        with transaction(self.targets.postgres_url) as conn:
            assert apply_micro_batch(conn, result)
        return result


def test_a_batch_applied_by_another_run_is_neither_added_nor_counted_twice(settings, spark, topic, serving_db, tmp_path):
    base = _epoch(datetime(2025, 3, 3, 10))
    _produce(settings, topic, [_message(base, "ghost-1", 40), _message(base + 5, "ghost-2", 2)])
    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, query_name=topic)
    layer = _AppliedElsewhereFirst(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(layer)
    window = datetime(2025, 3, 3, 10)
    assert read_table(serving_db, BYTES_AGG_USER) == {("ghost-1", window): 40, ("ghost-2", window): 2}
    assert (layer.stats.batches, layer.stats.skipped_batches) == (0, 1)
    assert (layer.stats.good_messages, layer.stats.unknown_user_messages) == (0, 0)
    assert spark.read.parquet(str(tmp_path / "landing")).count() == 2  # still landed, once


def test_migration_marks_an_older_ledgers_batches_landed(serving_db):
    conn = psycopg2.connect(serving_db)
    try:
        with conn, conn.cursor() as cur:  # a ledger from before landed_at, where batches landed first
            cur.execute("ALTER TABLE streaming_batches DROP COLUMN landed_at")
            cur.execute("DROP TABLE schema_version")  # older databases have no version mark
            cur.execute("INSERT INTO streaming_batches (query, batch_id, good_messages, bad_messages, late_messages) "
                        "VALUES ('q', 0, 1, 0, 0)")
        migrate(conn)
        with conn, conn.cursor() as cur:
            cur.execute("INSERT INTO streaming_batches (query, batch_id, good_messages, bad_messages, late_messages) "
                        "VALUES ('q', 1, 1, 0, 0)")  # applied, not landed yet
        migrate(conn)
        assert batch_state(conn, BatchKey("q", "", 0)) == LANDED
        assert batch_state(conn, BatchKey("q", "", 1)) == APPLIED
    finally:
        conn.close()


def _ledger_batches(url: str, query_name: str) -> int:
    return query(url, "SELECT count(*) FROM streaming_batches WHERE query = %s", (query_name,))[0][0]


def _unlanded_batches(url: str, query_name: str) -> int:
    return query(url, "SELECT count(*) FROM streaming_batches WHERE query = %s AND landed_at IS NULL", (query_name,))[0][0]


def _freeze_mid_batch(process: subprocess.Popen, url: str, query_name: str, timeout: float = 180) -> None:
    """Stop (SIGSTOP) the stream's process group at a moment when a batch after the first is applied
    but not landed; frozen, that state is certain when the caller kills it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if _ledger_batches(url, query_name) >= 2 and _unlanded_batches(url, query_name):
            os.killpg(process.pid, signal.SIGSTOP)
            if _unlanded_batches(url, query_name):
                return
            os.killpg(process.pid, signal.SIGCONT)  # it landed meanwhile: wait for the next batch
        time.sleep(0.01)
    raise AssertionError("the stream was never caught between a batch's totals and its lake files")


@pytest.mark.slow
def test_kill_9_then_resume_adds_nothing_twice_in_any_time_zone(settings, topic, serving_db, tmp_path):
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, users=200, backfill_hours=2,
                                           start=datetime(2025, 3, 30, 0), seed=5, progress=False))
    # Europe/Madrid switches to summer time on 2025-03-30 at 01:00 UTC: the hours must stay UTC.
    env = {**os.environ, "TZ": "Europe/Madrid", "ANTENNA_TOPIC": topic, "ANTENNA_POSTGRES_URL": serving_db,
           "ANTENNA_LAKE_ROOT": str(tmp_path)}
    command = [sys.executable, "-m", "antenna_assets.cli", "stream", "--query-name", topic, "--watermark", NO_LATE_DROPS,
               "--max-offsets-per-trigger", "3000"]
    first = subprocess.Popen([*command, "--trigger-interval", "1 seconds"], env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _freeze_mid_batch(first, serving_db, topic)
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the Python driver and its Spark JVM, mid-batch
        first.wait()
    # Killed between a batch's totals and its lake files, with batches before it done.
    assert _unlanded_batches(serving_db, topic) == 1
    assert 1 < _ledger_batches(serving_db, topic) < truth.messages / 3000
    second = subprocess.run([*command, "--available-now"], env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]

    _assert_tables_equal_truth(serving_db, truth)
    [(good,)] = query(serving_db, "SELECT sum(good_messages) FROM streaming_batches WHERE query = %s", (topic,))
    assert good == truth.messages
    lake = tmp_path / "landing" / "devices"
    hour_dirs = {p.relative_to(lake).as_posix() for p in lake.glob("year=*/month=*/day=*/hour=*")}
    assert hour_dirs == {f"year={h.year}/month={h.month}/day={h.day}/hour={h.hour}" for h in truth.hours}


def _produce(settings, topic, messages: list, timestamp_ms: int = 0) -> None:
    """Sends `messages` (dicts as JSON); `timestamp_ms` is the records' CreateTime (0: the producer's clock)."""
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for message in messages:
        producer.produce(topic, message if isinstance(message, bytes) else json.dumps(message).encode(),
                         timestamp=timestamp_ms)
    assert producer.flush(10) == 0


def _epoch(utc: datetime) -> int:
    return calendar.timegm(utc.timetuple())


def _message(ts: int, user: str, nbytes: int = 100, antenna: str = "antenna-x", app: str = "SKYPE") -> dict:
    return {"timestamp": ts, "id": user, "antenna_id": antenna, "bytes": nbytes, "app": app}


@pytest.fixture
def live_layer(settings, spark, topic, serving_db, tmp_path):
    """A processing-time query in this process; `sync()` waits until it has processed all there is."""
    config = SpeedLayerConfig(metadata_refresh_seconds=0, trigger_interval="1 seconds", query_name=topic)
    layer = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    query_handle = layer.start()

    def sync():
        query_handle.processAllAvailable()
        layer.wait_for_lake()  # a live batch's files may land behind the next batch

    layer.sync = sync
    yield layer
    query_handle.stop()
    layer.finish_landing()  # as run_until_stopped: the last batch's landing thread ends before its database


def test_operator_edit_is_seen_without_restart(settings, topic, serving_db, spark, tmp_path, live_layer):
    newcomer = "00000000-0000-0000-0000-000000000021"
    base = _epoch(datetime(2025, 4, 1, 12))
    _produce(settings, topic, [_message(base, newcomer)])
    live_layer.sync()
    # The operator adds the user while the stream runs.
    conn = psycopg2.connect(serving_db)
    with conn, conn.cursor() as cur:
        cur.execute("INSERT INTO user_metadata VALUES (%s, 'nuria', 'nuria@gmail.com', 1000)", (newcomer,))
    conn.close()
    _produce(settings, topic, [_message(base + 10, newcomer)])
    live_layer.sync()
    emails = {r.timestamp: r.email for r in spark.read.parquet(str(tmp_path / "landing")).collect()}
    assert emails == {base: None, base + 10: "nuria@gmail.com"}
    assert live_layer.stats.unknown_user_messages == 1


def test_late_events_skip_closed_windows_but_stay_in_the_lake(settings, topic, serving_db, spark, tmp_path, live_layer):
    noon = _epoch(datetime(2025, 5, 1, 12, 30))
    _produce(settings, topic, [_message(noon, "u1", 7)])
    live_layer.sync()
    # 30 minutes older than anything seen: its window closed long before the 1-minute watermark.
    _produce(settings, topic, [_message(noon - 1800, "u1", 5), _message(noon + 1, "u1", 3)])
    live_layer.sync()
    assert read_table(serving_db, BYTES_AGG_USER) == {("u1", datetime(2025, 5, 1, 12, 30)): 10}
    assert live_layer.stats.late_messages == 1
    landed = sorted(r.bytes for r in spark.read.parquet(str(tmp_path / "landing")).collect())
    assert landed == [3, 5, 7]


@pytest.mark.slow
def test_stream_stops_cleanly_on_either_signal_and_resumes(settings, topic, serving_db, tmp_path):
    """Stopped by SIGTERM, then resumed and stopped by SIGINT, then run to the end: each run resumes the
    last one's work, never redoes it. (One stream per signal in one test: each run is a JVM start.)"""
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=1,
                                           start=datetime(2025, 9, 1, 6), seed=4, progress=False))
    env = {**os.environ, "ANTENNA_TOPIC": topic, "ANTENNA_POSTGRES_URL": serving_db, "ANTENNA_LAKE_ROOT": str(tmp_path)}
    command = [sys.executable, "-m", "antenna_assets.cli", "stream", "--query-name", topic, "--watermark", NO_LATE_DROPS,
               "--max-offsets-per-trigger", "100"]
    batches, good = 0, 0
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        stream = subprocess.Popen([*command, "--trigger-interval", "1 seconds"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while _ledger_batches(serving_db, topic) <= batches and time.monotonic() < deadline:
            time.sleep(0.05)
        stream.send_signal(stop_signal)
        out, err = stream.communicate(timeout=60)
        assert stream.returncode == 0 and "stopped cleanly" in out, (stop_signal, err[-3000:])
        # Interrupted with some batches committed and messages left: the next run must resume, not redo.
        done = query(serving_db, "SELECT count(*), coalesce(sum(good_messages), 0) FROM streaming_batches "
                                 "WHERE query = %s", (topic,))[0]
        assert done[0] > batches and good < done[1] < truth.messages, (stop_signal, done, truth.messages)
        batches, good = done
    subprocess.run([*command, "--available-now"], env=env, check=True, capture_output=True, timeout=300)
    _assert_tables_equal_truth(serving_db, truth)


def _now_epoch() -> int:
    return int(time.time())


def _dead_letters(url: str) -> dict[tuple[int, int], tuple[bytes | None, str]]:
    """(partition, offset) -> (value, reason); a value too large for its row read from the lake folder it names."""
    rows = query(url, "SELECT kafka_partition, kafka_offset, raw_value, raw_location, reason FROM dead_letter")
    in_lake = {}
    for location in {location for _, _, _, location, _ in rows if location is not None}:
        kept = pq.read_table(location, columns=["kafka_partition", "kafka_offset", "raw_value"]).to_pylist()
        in_lake.update({(r["kafka_partition"], r["kafka_offset"]): r["raw_value"] for r in kept})
    return {(partition, offset): (bytes(raw) if raw is not None else in_lake.get((partition, offset)), reason)
            for partition, offset, raw, _, reason in rows}


# One class of record that used to stop the stream or empty it, each sent in its own micro-batch
# before a normal load: a poisoned watermark or a crash loop would show in the next load's totals.
POISON = {
    "not_utf8": [b'\xff\xfe\x00garbage', b'{"bytes":1,"timestamp":%(now)d,"app":"\xc3\x28","id":"u","antenna_id":"a"}'],
    "nul": [b'{"bytes":1,"timestamp":%(now)d,"app":"SKY\x00PE","id":"u","antenna_id":"a"}',
            b'{"bytes":1,"timestamp":%(now)d,"app":"SKYPE","id":"u\\u0000","antenna_id":"a"}',
            b'{"bytes":1,"timestamp":%(now)d,"app":"SKYPE","id":"u","antenna_id":"\\u0000"}'],
    "overflowing_bytes": [b'{"bytes":4611686018427387904,"timestamp":%(now)d,"app":"SKYPE","id":"u","antenna_id":"a"}'] * 2,
    "future_clock": [b'{"bytes":5,"timestamp":%(years_ahead)d,"app":"SKYPE","id":"u","antenna_id":"a"}',
                     b'{"bytes":5,"timestamp":%(millis)d,"app":"SKYPE","id":"u","antenna_id":"a"}'],
    "wrong_text_type": [b'{"bytes":5,"timestamp":%(now)d,"app":"SKYPE","id":123,"antenna_id":"a"}',
                        b'{"bytes":5,"timestamp":%(now)d,"app":["SKYPE"],"id":"u","antenna_id":"a"}'],
    "huge_and_empty": [b'{"pad":"' + b"x" * 900_000 + b'"}', b"", b"null"],
}


def test_no_record_stops_the_stream_or_changes_a_total(settings, topic, serving_db, spark, tmp_path):
    config = SpeedLayerConfig(metadata_refresh_seconds=0, trigger_interval="1 seconds", query_name=topic)
    layer = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    handle = layer.start()
    sent_good: list[dict] = []
    sent_poison: list[bytes] = []
    try:
        base = _now_epoch() - 30  # a live stream: the contract's 1-minute watermark applies
        for n, (kind, records) in enumerate(POISON.items()):
            values = {b"now": base + n, b"years_ahead": base + 5 * 365 * 86400, b"millis": (base + n) * 1000}
            poison = [r % values if b"%(" in r else r for r in records]
            _produce(settings, topic, poison)
            handle.processAllAvailable()
            sent_poison += poison
            # A device whose clock is 9 minutes ahead is accepted, but cannot make the next load late.
            good = [_message(base + n, f"user-{kind}", 100 + n, app="WHATSAPP"),
                    _message(base + n + 540, "ahead", 1, app="WHATSAPP")]
            _produce(settings, topic, good)
            handle.processAllAvailable()
            sent_good += good
        layer.wait_for_lake()
        assert handle.isActive and handle.exception() is None
    finally:
        handle.stop()
        layer.finish_landing()

    expected_users: dict = {}
    for message in sent_good:
        window = datetime.utcfromtimestamp(message["timestamp"] - message["timestamp"] % 300)
        expected_users[(message["id"], window)] = expected_users.get((message["id"], window), 0) + message["bytes"]
    assert read_table(serving_db, BYTES_AGG_USER) == expected_users
    assert layer.stats.late_messages == 0
    assert layer.stats.good_messages == len(sent_good)
    # Every other record is a dead letter, byte for byte (the 900 kB one in the lake, where its row says).
    dead = _dead_letters(serving_db)
    assert sorted(raw for raw, _ in dead.values()) == sorted(sent_poison)
    assert layer.stats.bad_messages == len(sent_poison)
    assert all(reason for _, reason in dead.values())
    [(readable,)] = query(serving_db, "SELECT count(*) FROM dead_letter WHERE preview IS NOT NULL OR raw_value IS NULL")
    assert readable == len(dead)
    assert spark.read.parquet(str(tmp_path / "landing")).count() == len(sent_good)


def test_a_lost_checkpoint_skips_nothing_and_adds_nothing_twice(settings, spark, topic, serving_db, tmp_path):
    first = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                           start=datetime(2025, 10, 1, 10), seed=21, progress=False))
    config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS, max_offsets_per_trigger=70,
                              query_name=topic)
    run_until_stopped(SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path)))
    shutil.rmtree(tmp_path / "checkpoints" / topic)  # lost: the next run starts at batch 0, from the earliest offsets
    second = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=0.25,
                                            start=datetime(2025, 10, 1, 11), seed=22, progress=False))
    # Other batch boundaries than the first run's: batch ids alone would skip or double records.
    resumed = SpeedLayer(spark, config.model_copy(update={"max_offsets_per_trigger": 110}),
                         _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(resumed)
    for table, per in TABLES:
        assert read_table(serving_db, table) == {**expected(first, per), **expected(second, per)}, table.name
    assert resumed.stats.good_messages == second.messages
    assert spark.read.parquet(str(tmp_path / "landing")).count() == first.messages + second.messages


class _AlwaysFailingLake(SpeedLayer):
    def _land(self, lake_rows, files):
        raise OSError("the lake refuses writes")


def test_a_batch_that_keeps_failing_fails_the_run_in_one_line_and_is_recorded(settings, spark, topic, serving_db,
                                                                             tmp_path):
    _produce(settings, topic, [_message(_epoch(datetime(2025, 10, 2, 9)), "u1")])
    config = SpeedLayerConfig(trigger="available_now", query_name=topic, batch_attempts=2)
    with pytest.raises(MicroBatchFailed) as failure:
        run_until_stopped(_AlwaysFailingLake(spark, config, _targets(settings, topic, serving_db, tmp_path)))
    message = str(failure.value)
    assert "\n" not in message and "micro-batch 0" in message and f"{topic}/" in message
    assert "failed 2 times: OSError: the lake refuses writes" in message
    [(attempts, error)] = query(serving_db, "SELECT attempts, error FROM streaming_failures WHERE query = %s", (topic,))
    assert attempts == 2 and "the lake refuses writes" in error
    # Applied once, not twice, although tried twice; the next run lands it.
    assert read_table(serving_db, BYTES_AGG_USER) == {("u1", datetime(2025, 10, 2, 9)): 100}
    run_until_stopped(SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path)))
    assert spark.read.parquet(str(tmp_path / "landing")).count() == 1


def test_any_records_through_the_real_stream_leave_exact_totals_and_dead_letters(settings, spark, topic, serving_db,
                                                                                tmp_path):
    """Property: arbitrary records (bytes, JSON documents, near-valid messages) mixed into the topic,
    through the real parse, dead-letter and totals writes: good + dead letters = records consumed, the
    stream is alive, and the totals equal those of the records the contract's plain-Python reading accepts."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st

    from antenna_assets_tests.contract import records, valid_fields

    config = SpeedLayerConfig(watermark=NO_LATE_DROPS, trigger_interval="1 seconds", query_name=topic)
    layer = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    handle = layer.start()
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap, "message.max.bytes": 2_000_000})
    expected_users: dict = {}
    sent = {"good": 0, "bad": 0}
    # Every record's own timestamp is this one, so the oracle knows what "in the future" means (a
    # timestamp older than the broker's retention would have the records deleted under the query).
    kafka_seconds = int(time.time())

    @hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(records, min_size=1, max_size=30))
    def check(values):
        for value in values:
            producer.produce(topic, value, timestamp=kafka_seconds * 1000)
            fields = valid_fields(value, kafka_seconds)
            sent["bad" if fields is None else "good"] += 1
            if fields is not None:
                window = datetime.utcfromtimestamp(fields["timestamp"] - fields["timestamp"] % 300)
                expected_users[(fields["id"], window)] = expected_users.get((fields["id"], window), 0) + fields["bytes"]
        assert producer.flush(10) == 0
        handle.processAllAvailable()
        assert handle.isActive and handle.exception() is None
        assert (layer.stats.good_messages, layer.stats.bad_messages) == (sent["good"], sent["bad"])
        assert read_table(serving_db, BYTES_AGG_USER) == expected_users

    try:
        check()
    finally:
        handle.stop()
        layer.finish_landing()
    [(dead,)] = query(serving_db, "SELECT count(*) FROM dead_letter")
    assert dead == sent["bad"]


def test_migration_keeps_older_dead_letters_as_bytes(serving_db):
    conn = psycopg2.connect(serving_db)
    try:
        with conn, conn.cursor() as cur:  # a dead_letter table from before BYTEA
            cur.execute("DROP TABLE dead_letter CASCADE")  # its views come back with the migration
            cur.execute("DROP TABLE schema_version")  # older databases have no version mark
            cur.execute("CREATE TABLE dead_letter (topic TEXT NOT NULL, kafka_partition INT NOT NULL, "
                        "kafka_offset BIGINT NOT NULL, raw_value TEXT, reason TEXT NOT NULL, kafka_timestamp TIMESTAMP, "
                        "ingest_time TIMESTAMP NOT NULL, PRIMARY KEY (topic, kafka_partition, kafka_offset))")
            cur.execute("INSERT INTO dead_letter VALUES ('devices', 0, 7, 'caf\u00e9 {', 'broken_json', NULL, now())")
        migrate(conn)
        migrate(conn)
        [(raw, preview, key)] = query(serving_db, "SELECT raw_value, preview, raw_key FROM dead_letter")
        assert (bytes(raw), preview, key) == ("caf\u00e9 {".encode(), "caf\u00e9 {", None)
    finally:
        conn.close()


def test_durations_are_spelled_as_spark_spells_them_and_a_window_is_whole_seconds():
    from datetime import timedelta

    from antenna_assets.speed.config import parse_duration

    assert parse_duration("500 milliseconds") == timedelta(milliseconds=500)
    assert parse_duration(" 1 second ") == timedelta(seconds=1)
    assert parse_duration("5 minutes") == timedelta(minutes=5)
    assert SpeedLayerConfig(trigger_interval="250 milliseconds").trigger_interval == "250 milliseconds"
    for wrong in ("1.5 seconds", "soon", "5 min", ""):
        with pytest.raises(ValueError, match="is not a duration"):
            SpeedLayerConfig(trigger_interval=wrong)
    # The speed tables key each window by its start in whole seconds.
    for window in ("1500 milliseconds", "0 seconds", "999 milliseconds"):
        with pytest.raises(ValueError, match="whole number of seconds"):
            SpeedLayerConfig(window=window)
    assert SpeedLayerConfig(window="2000 milliseconds").window == "2000 milliseconds"


def test_a_run_declared_dead_while_starting_starts_no_query(settings, spark, topic, serving_db, tmp_path):
    # Spark's start outlasted the heartbeat's limit (seen on a loaded CI host with the tests' 20 s): the
    # sensor failed the run and launched a successor; the late starter must not stream beside it.
    with transaction(serving_db) as conn:
        migrate(conn)
    heartbeat = Heartbeat(serving_db, f"run-{topic}", topic, interval_seconds=10)
    heartbeat.beat()  # the run's first beat, before Spark starts
    with transaction(serving_db) as conn:
        declare_dead(conn, f"run-{topic}")
    layer = SpeedLayer(spark, SpeedLayerConfig(query_name=topic), _targets(settings, topic, serving_db, tmp_path))
    with pytest.raises(RunDeclaredDead, match=f"run-{topic}"):
        run_until_stopped(layer, heartbeat=heartbeat)
    heartbeat.close()
    assert not [q for q in spark.streams.active if q.name == topic]
    assert not (tmp_path / "checkpoints" / topic).exists()  # not even begun


def test_the_streams_kafka_clients_wait_as_long_as_configured(settings, spark, tmp_path):
    # Kafka's default fetch wait (500 ms) held a pooled consumer's next read behind its fetch in flight:
    # ~130 ms of every batch at low rates, and a 1-1.3 s batch whenever traffic paused. Its default call
    # timeout (60 s) stopped the stream that long after a broker died (BENCHMARKS.md).
    def kafka_options(config: SpeedLayerConfig) -> tuple[str, ...]:
        layer = SpeedLayer(spark, config, _targets(settings, settings.topic, "postgresql://unused", tmp_path))
        options = layer.kafka_stream()._jdf.queryExecution().analyzed().extraOptions()  # Spark's Kafka relation's
        return tuple(options.get(name) for name in ("kafka.fetch.max.wait.ms", "kafka.default.api.timeout.ms",
                                                    "kafka.request.timeout.ms", "fetchOffset.numRetries"))

    assert kafka_options(SpeedLayerConfig()) == ("10", "15000", "15000", "12")
    assert kafka_options(SpeedLayerConfig(kafka_fetch_max_wait_ms=250, kafka_api_timeout_ms=5000,
                                          kafka_offset_fetch_attempts=2)) == ("250", "5000", "5000", "2")
    with pytest.raises(ValueError, match="greater than or equal to 1000"):
        SpeedLayerConfig(kafka_api_timeout_ms=10)


def test_a_batch_planned_while_it_is_cached_reads_the_cache_and_a_failed_plan_leaves_nothing_cached(settings, spark,
                                                                                                    tmp_path):
    # The summary's DataFrame is built while Spark registers the batch's cache (~60 ms sooner to its job):
    # its job must still read the cache, not Kafka again, and a failed attempt must not keep its batch.
    session = spark.newSession()  # the batch's settings go to its session, as to the query's own in the stream
    kafka_rows = session.createDataFrame(
        [(None, json.dumps(_message(1_600_545_287, "u1", nbytes=7)).encode(), "devices", 0, 0, datetime(2026, 1, 1))],
        "key binary, value binary, topic string, partition int, offset long, timestamp timestamp")
    layer = SpeedLayer(spark, SpeedLayerConfig(), _targets(settings, settings.topic, "postgresql://unused", tmp_path))
    batch, summary = layer.cached_batch(
        kafka_rows, lambda cached: micro_batch_summary(cached, F.lit(True), SPEED_TABLES, "5 minutes"))
    try:
        assert batch.storageLevel == StorageLevel.MEMORY_AND_DISK_DESER
        assert "InMemoryTableScan" in summary._jdf.queryExecution().executedPlan().toString()
        assert sorted((r.table, r.key, r.bytes) for r in summary.collect() if r.table != PER_PARTITION) == [
            ("bytes_agg_antenna", "antenna-x", 7), ("bytes_agg_app", "SKYPE", 7), ("bytes_agg_user", "u1", 7)]
    finally:
        batch.unpersist()

    planned = []

    def failing_plan(cached):
        planned.append(cached)
        raise RuntimeError("the plan failed")

    with pytest.raises(RuntimeError, match="the plan failed"):
        layer.cached_batch(kafka_rows, failing_plan)
    assert planned[0].storageLevel == StorageLevel.NONE
