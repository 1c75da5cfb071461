"""Pure transformations on small DataFrames."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest
from pyspark.sql import functions as F

from antenna_assets.batch.layer import HOURLY_TABLES, collect_table, compute_hourly_tables
from antenna_assets.speed.layer import SPEED_TABLES
from antenna_assets.transforms.aggregates import (MAX_EVENT_TIME, MESSAGES, bytes_per_window, hourly_partials,
                                                  window_start)
from antenna_assets.speed.dead_letters import as_cached
from antenna_assets.transforms.devices import (LAKE_PARTITION_COLUMNS, WATERMARK_TIME, parse_device_messages,
                                               valid_events, with_lake_partitions)
from antenna_assets.transforms.micro_batch import PER_PARTITION, micro_batch_summary, rejected_bytes, rejected_count

GOOD = '{"bytes":9082,"timestamp":1600545287,"app":"SKYPE","id":"u1","antenna_id":"a0"}'


def _kafka_rows(spark, values, kafka_time=datetime(2026, 1, 1)):
    rows = [(None, v.encode() if isinstance(v, str) else v, "devices", 0, offset, kafka_time)
            for offset, v in enumerate(values)]
    return spark.createDataFrame(rows, "key binary, value binary, topic string, partition int, offset long, "
                                       "timestamp timestamp")


@pytest.mark.parametrize("value, reason", [
    (GOOD, None),
    ('{"bytes":1,"timestamp":1600545287,"app":"A","id":"u","antenna_id":"a","signal":-71,"nested":{"x":[1]}}', None),
    ('{"bytes":9082,"timestamp":16005', "broken_json"),
    ("not json at all", "broken_json"),
    ("[1, 2]", "broken_json"),
    ("", "broken_json"),
    (None, "broken_json"),
    ('{"bytes":"many","timestamp":1600545287,"app":"A","id":"u","antenna_id":"a"}', "wrong_type"),
    ('{"bytes":12.5,"timestamp":1600545287,"app":"A","id":"u","antenna_id":"a"}', "wrong_type"),
    ('{"bytes":1,"timestamp":"yesterday","app":"A","id":"u","antenna_id":"a"}', "wrong_type"),
    ('{"bytes":1,"timestamp":1600545287,"app":"A","antenna_id":"a"}', "missing_field"),
    ('{"bytes":1,"timestamp":1600545287,"app":null,"id":"u","antenna_id":"a"}', "missing_field"),
    ('{"bytes":-1,"timestamp":1600545287,"app":"A","id":"u","antenna_id":"a"}', "negative_bytes"),
])
def test_parse_classifies_every_message(spark, value, reason):
    [row] = parse_device_messages(_kafka_rows(spark, [value])).collect()
    assert row.reason == reason
    assert row.value == (value.encode() if value is not None else None) and row.offset == 0


def test_the_cache_keeps_raw_bytes_of_small_rejected_records_only(spark):
    large = "x" * 300  # with its key, over the 100 bytes a cached row may hold: only its head and digest stay
    kafka_rows = _kafka_rows(spark, [GOOD, "not json", GOOD, large]).withColumn("key", F.lit(b"k"))
    rows = as_cached(parse_device_messages(kafka_rows), inline_bytes=100).orderBy("offset").collect()
    assert [(r.reason, r.key, r.value, r.raw_length, r.in_lake) for r in rows] == [
        (None, None, None, None, False), ("broken_json", b"k", b"not json", 8, False), (None, None, None, None, False),
        ("broken_json", None, None, 300, True)]
    assert [r.bytes for r in rows] == [9082, None, 9082, None]
    assert rows[3].raw_head == large.encode() and rows[1].raw_head is None
    assert rows[1].raw_sha256 == hashlib.sha256(b"not json").hexdigest() and rows[0].raw_sha256 is None


def test_event_time_and_lake_partitions_are_utc(spark):
    events = with_lake_partitions(valid_events(parse_device_messages(_kafka_rows(spark, [GOOD]))))
    [row] = events.select("year", "month", "day", "hour", F.unix_seconds("event_time").alias("t")).collect()
    # 1600545287 is 2020-09-19 19:54:47 UTC.
    assert (row.year, row.month, row.day, row.hour, row.t) == (2020, 9, 19, 19, 1600545287)


def _events(spark, rows):
    """rows: (epoch seconds, id, antenna_id, bytes, app)."""
    return (spark.createDataFrame(rows, "timestamp long, id string, antenna_id string, bytes long, app string")
            .withColumn("event_time", F.timestamp_seconds("timestamp")))


def test_five_minute_windows_start_on_utc_boundaries(spark):
    base = 1767225600  # 2026-01-01 00:00:00 UTC
    events = _events(spark, [(base + 10, "u", "a", 5, "SKYPE"), (base + 299, "u", "a", 6, "SKYPE"),
                             (base + 300, "u", "a", 7, "SKYPE")])
    rows = collect_table(bytes_per_window(events, "app", "sum_app_bytes", window_start("5 minutes")),
                         ("app", "date", "sum_app_bytes"))
    assert sorted(rows) == [("SKYPE", datetime(2026, 1, 1, 0, 0), 11), ("SKYPE", datetime(2026, 1, 1, 0, 5), 7)]


_RECORD_SCHEMA = ("topic string, partition int, offset long, reason string, timestamp long, id string, "
                  "antenna_id string, bytes long, app string, kafka_seconds long")


def _records(spark, rows):
    """Parsed records as `parse_device_messages` leaves them: event and watermark times only for valid ones,
    raw bytes only for rejected ones (their reason's text as their value, here)."""
    valid = F.col("reason").isNull()
    return (spark.createDataFrame(rows, _RECORD_SCHEMA)
            .withColumn("key", F.lit(None).cast("binary"))
            .withColumn("value", F.when(~valid, F.encode("reason", "utf-8")))
            .withColumn("event_time", F.timestamp_seconds(F.when(valid, F.col("timestamp"))))
            .withColumn(WATERMARK_TIME, F.when(valid, F.timestamp_seconds(F.least("timestamp", "kafka_seconds")))))


def test_micro_batch_summary_is_the_tables_own_aggregates_and_each_partitions_offsets(spark):
    """Property: in the speed layer's one aggregation, each table's rows are exactly what
    `bytes_per_window` (the batch layer's definition) gives from the counted valid records alone, and each
    Kafka partition's row has its first and last offsets of all records and the newest watermark time,
    rejected count and rejected raw bytes of the counted ones. Rejected records carry keys of any text,
    which must make no table row."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st

    base = 1767225600
    text = st.sampled_from(["u1", "u2", "a0", "a1", "", "x" * 40])
    record = st.tuples(st.sampled_from(["devices", "d:1"]), st.integers(0, 2), st.integers(0, 10**6),
                       st.sampled_from([None, None, None, "broken_json", "negative_bytes"]), st.integers(0, 1200),
                       text, text, st.integers(0, 10**12), st.sampled_from(["SKYPE", "TELEGRAM"]), st.integers(0, 1200))

    @hypothesis_settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(record, min_size=1, max_size=20, unique_by=lambda r: r[:3]), st.integers(0, 10**6))
    def check(rows, mark):
        rows = [(topic, part, offset, reason, base + t, user, antenna, nbytes, app, base + k)
                for topic, part, offset, reason, t, user, antenna, nbytes, app, k in rows]
        records = _records(spark, rows)
        counted = F.col("offset") >= mark
        collected = micro_batch_summary(records, counted, SPEED_TABLES, "5 minutes").toArrow()
        summary = collected.to_pylist()
        events = records.where(counted & F.col("reason").isNull())
        for table in SPEED_TABLES:
            alone = bytes_per_window(events, table.key, table.value, window_start("5 minutes")).collect()
            assert sorted((r["key"], r["date"], r["bytes"], r["messages"], r["max_event_time"]) for r in summary
                          if r["table"] == table.name) == sorted(
                (r[0], _epoch(r[1]), r[2], r[3], _epoch(r[4])) for r in alone)
        expected = {}
        for topic, part, offset, reason, t, _, _, _, _, k in rows:
            first, last, newest, rejected = expected.get((topic, part), (offset, -1, None, 0))
            fresh = offset >= mark
            if fresh and reason is None:
                newest = max(filter(None, (newest, min(t, k))))
            expected[(topic, part)] = (min(first, offset), max(last, offset), newest,
                                       rejected + (fresh and reason is not None))
        assert {(r["topic"], r["kafka_partition"]): (r["kafka_first_offset"], r["kafka_offset"], r[WATERMARK_TIME],
                                                     r["rejected"])
                for r in summary if r["table"] == PER_PARTITION} == expected
        assert rejected_count(collected) == sum(rejected for *_, rejected in expected.values())
        assert rejected_bytes(collected) == sum(len(reason) for _, _, offset, reason, *_ in rows
                                                if reason is not None and offset >= mark)

    check()


def _epoch(value: datetime) -> int:
    return int(value.replace(tzinfo=timezone.utc).timestamp())


def test_hourly_totals_quota_is_strict_and_per_hour_snapshot(spark):
    h0, h1 = 1767225600, 1767225600 + 3600
    events = _events(spark, [
        (h0 + 1, "u1", "a", 600, "SKYPE"), (h0 + 2, "u1", "b", 400, "TELEGRAM"),  # u1: exactly 1000 = quota
        (h0 + 3, "u2", "a", 1001, "SKYPE"),  # u2: 1001 > 1000
        (h0 + 4, "ghost", "a", 50, "SKYPE"),  # not in user_metadata
        (h1 + 5, "u1", "a", 800, "SKYPE"),  # hour 1: u1's quota was lowered to 500
    ])
    d0, d1 = datetime(2026, 1, 1, 0), datetime(2026, 1, 1, 1)
    snapshot = [("u1", "one@gmail.com", 1000, d0), ("u2", "two@gmail.com", 1000, d0),
                ("u1", "one@gmail.com", 500, d1), ("u2", "two@gmail.com", 1000, d1)]
    tables = compute_hourly_tables(events, snapshot, list(HOURLY_TABLES))
    assert sorted(tables["users_over_quota_1h"]) == [
        ("one@gmail.com", d1, 500, 800), ("two@gmail.com", d0, 1000, 1001)]
    assert sorted(tables["bytes_agg_user_1h"]) == [
        ("one@gmail.com", d0, 1000), ("one@gmail.com", d1, 800), ("two@gmail.com", d0, 1001)]
    # The unknown user still counts per antenna and app, and is reported.
    assert sorted(tables["bytes_agg_antenna_1h"]) == [
        ("a", d0, 1651), ("a", d1, 800), ("b", d0, 400)]
    assert sorted(tables["bytes_agg_app_1h"]) == [
        ("SKYPE", d0, 1651), ("SKYPE", d1, 800), ("TELEGRAM", d0, 400)]
    assert sorted(tables["unknown_users"]) == [("ghost", d0, 50)]


def _hourly_oracle(events, snapshot):
    """The four hourly tables and unknown users read straight off the contract, from the events
    (epoch seconds, id, antenna_id, bytes, app) in plain Python, one event at a time."""
    from collections import Counter

    def hour(t):
        return datetime(1970, 1, 1) + timedelta(seconds=t - t % 3600)

    email_of = {(i, d): e for i, e, _, d in snapshot}
    quota_of = Counter()
    for _, email, quota, date in snapshot:
        quota_of[email, date] = max(quota_of.get((email, date), quota), quota)
    per_antenna, per_app, per_email, unknown = Counter(), Counter(), Counter(), Counter()
    for t, user, antenna, size, app in events:
        per_antenna[antenna, hour(t)] += size
        per_app[app, hour(t)] += size
        if (user, hour(t)) in email_of:
            per_email[email_of[user, hour(t)], hour(t)] += size
        else:
            unknown[user, hour(t)] += size
    over = [(e, d, quota_of[e, d], total) for (e, d), total in per_email.items() if total > quota_of[e, d]]
    return {"bytes_agg_antenna_1h": per_antenna, "bytes_agg_app_1h": per_app, "bytes_agg_user_1h": per_email,
            "unknown_users": unknown, "users_over_quota_1h": over}


def test_hourly_tables_equal_a_plain_reading_of_the_events(spark):
    """Property: whatever the events, users, shared emails, quotas and hours, the batch layer's tables
    (two Spark aggregates, the rest on the driver) equal a plain event-by-event reading; and so do those of
    one hour's events summed per key alone, as a run of that hour sums them."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st

    base = 1767225600
    event = st.tuples(st.integers(0, 3 * 3600 - 1), st.sampled_from(["u1", "u2", "u3", "ghost"]),
                      st.sampled_from(["a0", "a1"]), st.integers(0, 10**12), st.sampled_from(["SKYPE", "TELEGRAM"]))
    # Per hour, a snapshot row per known user; u1 and u2 may share an email (its quota is the larger).
    snapshot_row = st.tuples(st.sampled_from(["u1", "u2", "u3"]), st.sampled_from(["one@x.com", "two@x.com"]),
                             st.integers(0, 3 * 10**12), st.integers(0, 2))

    @hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(event, min_size=1, max_size=25), st.lists(snapshot_row, max_size=9))
    def check(rows, snapshot_rows):
        unique = {(user, h): (user, email, quota, datetime(2026, 1, 1, h)) for user, email, quota, h in snapshot_rows}
        snapshot = list(unique.values())
        events = [(base + t, *rest) for t, *rest in rows]
        first = (events[0][0] - base) // 3600
        first_hour = [e for e in events if (e[0] - base) // 3600 == first]
        for hours, chosen in ((None, events), ([datetime(2026, 1, 1, first)], first_hour)):
            tables = compute_hourly_tables(_events(spark, chosen), snapshot, list(HOURLY_TABLES), hours)
            expected = _hourly_oracle(chosen, snapshot)
            for name in ("bytes_agg_antenna_1h", "bytes_agg_app_1h", "bytes_agg_user_1h", "unknown_users"):
                assert sorted(tables[name]) == sorted((k, d, v) for (k, d), v in expected[name].items()), (name, hours)
            assert sorted(tables["users_over_quota_1h"]) == sorted(expected["users_over_quota_1h"]), hours

    check()


def test_one_hour_of_the_lake_is_summed_per_key_without_reading_event_times(spark, tmp_path):
    # Its partition is its hour, so the event time need not be read or windowed: the job 1.66x -> 1.44x the
    # per-user floor (BENCHMARKS.md, Batch layer). Several hours still window each event's time.
    from antenna_assets.batch.layer import read_hours

    hour = datetime(2026, 1, 1, 5)
    rows = [(1767243600 + 7, "u1", "a0", 3, "SKYPE"), (1767243600 + 3599, "u1", "a1", 4, "TELEGRAM")]
    lake = str(tmp_path / "lake")
    with_lake_partitions(_events(spark, rows)).write.partitionBy(*LAKE_PARTITION_COLUMNS).parquet(lake)
    events = read_hours(spark, lake, [hour])

    def scanned(partials) -> str:
        plans = [frame.select(*(c for c in frame.columns if c not in (MESSAGES, MAX_EVENT_TIME)))
                 ._jdf.queryExecution().executedPlan().toString() for frame in partials.values()]
        return "\n".join(line for plan in plans for line in plan.splitlines() if "ReadSchema" in line)

    assert "event_time" not in scanned(hourly_partials(events, hour=hour))
    assert "event_time" in scanned(hourly_partials(events))
    assert collect_table(hourly_partials(events, hour=hour)["per_user"], ("id", "date", "sum_user_bytes")) == [
        ("u1", hour, 7)]


def test_every_record_is_classified_as_the_contract_rules_say(spark):
    """Property: whatever the bytes, the parser raises nothing, gives each record one of the documented
    reasons, and accepts exactly the records the contract's plain-Python reading accepts, with the same fields."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from antenna_assets.sources.contract import REASONS
    from antenna_assets_tests.contract import KAFKA_SECONDS, records, valid_fields

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(records, min_size=1, max_size=40))
    def check(values):
        kafka_time = datetime(1970, 1, 1) + timedelta(seconds=KAFKA_SECONDS)
        rows = parse_device_messages(_kafka_rows(spark, values, kafka_time)).orderBy("offset").collect()
        assert len(rows) == len(values)
        for value, row in zip(values, rows):
            expected = valid_fields(value, KAFKA_SECONDS)
            assert row.reason in (None, *REASONS), row.reason
            assert (row.reason is None) == (expected is not None), (value, row.reason)
            if expected is not None:
                assert {f: row[f] for f in expected} == expected

    check()


@pytest.mark.parametrize("value, reason", [
    (b'{"bytes":1,"timestamp":1767225000,"app":"A","id":"u","antenna_id":"\xff\xfe"}', "not_utf8"),
    (b'{"bytes":1,"timestamp":1767225000,"app":"A\\u0000","id":"u","antenna_id":"a"}', "control_characters"),
    (b'{"bytes":1,"timestamp":1767225000,"app":"A\x00","id":"u","antenna_id":"a"}', "broken_json"),
    (b'{"bytes":4611686018427387904,"timestamp":1767225000,"app":"A","id":"u","antenna_id":"a"}', "bytes_too_large"),
    (b'{"bytes":1,"timestamp":1767225000000,"app":"A","id":"u","antenna_id":"a"}', "timestamp_in_future"),
    (b'{"bytes":1,"timestamp":1893456000,"app":"A","id":"u","antenna_id":"a"}', "timestamp_in_future"),
    (b'{"bytes":1,"timestamp":1767226200,"app":"A","id":"u","antenna_id":"a"}', None),  # 10 minutes ahead: tolerated
    (b'{"bytes":1,"timestamp":12,"app":"A","id":"u","antenna_id":"a"}', "timestamp_too_old"),
    (b'{"bytes":1,"timestamp":1767225000,"app":"A","id":123,"antenna_id":"a"}', "wrong_type"),
    (b'{"bytes":1,"timestamp":1767225000,"app":{"x":1},"id":"u","antenna_id":"a"}', "wrong_type"),
    (b'{"bytes":1,"timestamp":1767225000,"app":"A","id":"123","antenna_id":"a"}', None),
    (b'{"bytes":1,"timestamp":1767225000,"app":"","id":"u","antenna_id":"a"}', "empty_text"),
    (b'{"bytes":1,"timestamp":1767225000,"app":"\\ud800","id":"u","antenna_id":"a"}', "broken_json"),
])
def test_contract_rules_reject_implausible_records(spark, value, reason):
    [row] = parse_device_messages(_kafka_rows(spark, [value], datetime(2026, 1, 1))).collect()
    assert row.reason == reason
    assert (row.event_time is None) == (reason is not None)


def test_a_clock_ahead_does_not_move_the_watermark_past_the_record_time(spark):
    ahead = b'{"bytes":1,"timestamp":1767226500,"app":"A","id":"u","antenna_id":"a"}'  # 15 min past 00:00
    [row] = parse_device_messages(_kafka_rows(spark, [ahead], datetime(2026, 1, 1, 0, 10))).collect()
    assert row.reason is None
    assert row.watermark_time == datetime(2026, 1, 1, 0, 10)


def test_records_below_their_partitions_mark_are_left_out(spark):
    """Property: the replay filter keeps exactly the records at or past their (topic, partition)'s
    mark, and every record of a partition without one, whatever the topic names hold (quotes and
    backslashes included: the filter is a SQL expression)."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st

    from antenna_assets.speed.layer import _not_below

    topics = st.sampled_from(["devices", "d.e-v_1", "it's", "back\\slash", "q'\\'", "d:1", "d"])
    record = st.tuples(topics, st.integers(0, 2), st.integers(0, 20))

    @hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(record, min_size=1, max_size=12, unique=True),
           st.dictionaries(st.tuples(topics, st.integers(0, 2)), st.integers(0, 21), max_size=6))
    def check(records, marks):
        frame = spark.createDataFrame(records, "topic string, partition int, offset long")
        kept = {tuple(row) for row in frame.where(_not_below(marks)).collect()}
        assert kept == {r for r in records if r[2] >= marks.get((r[0], r[1]), 0)}

    check()


def test_new_marks_compile_no_new_code(spark):
    """Each micro-batch filters by new offsets: as numbers in the expression they made Spark generate
    and compile new classes every batch (~125 ms of a live batch); the same plan must reuse its code."""
    from antenna_assets.speed.layer import _not_below

    compilations = spark._jvm.org.apache.spark.metrics.source.CodegenMetrics.METRIC_COMPILATION_TIME()
    # Not a DataFrame of driver rows: Spark filters those on the driver, without generated code.
    frame = spark.range(2).selectExpr("'devices' AS topic", "CAST(id AS INT) AS partition", "id * 2 + 5 AS offset")

    def kept(marks):
        return sorted(tuple(row) for row in frame.where(_not_below(marks)).collect())

    assert kept({("devices", 0): 3, ("devices", 1): 8}) == [("devices", 0, 5)]
    before = compilations.getCount()
    assert kept({("devices", 0): 6, ("devices", 1): 2}) == [("devices", 1, 7)]
    assert kept({("devices", 0): 123_456_789, ("devices", 1): 0, ("other", 2): 9}) == [("devices", 1, 7)]
    assert compilations.getCount() == before
