"""What the speed layer verifies instead of trusting (issue 28): producers' clocks and the topic's identity.

Each case runs on the real broker, PostgreSQL and Spark: a producer clock ahead of everybody else's
must not make the others' events late, and a topic recreated under the ledger's offset marks (or
another cluster's) must be read from its start or stop the stream in one line, never be skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import uuid
from datetime import datetime, timedelta

import pytest

from antenna_assets.hours import epoch_seconds, utc_from_epoch_seconds
from antenna_assets.kafka_client import admin_client, describe_topic, librdkafka_config, topic_names
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.settings import Settings
from antenna_assets.sources.contract import TIMESTAMP_IN_FUTURE
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import MicroBatchFailed, SpeedLayer, run_until_stopped
from antenna_assets.speed.watermark import BatchWatermark
from antenna_assets.stack.kafka import CREATE_TIME, LOG_APPEND_TIME, KafkaBroker, create_topic, ensure_topic
from antenna_assets.stack.process import wait_until
from antenna_assets_tests.test_speed_layer import _message, _produce, _targets
from antenna_assets_tests.truth import execute, query, read_table

SPEED_TABLES = (BYTES_AGG_ANTENNA, BYTES_AGG_USER, BYTES_AGG_APP)
APPS = ("SKYPE", "TELEGRAM", "FACETIME", "FACEBOOK", "WHATSAPP")
AHEAD_SECONDS = 50 * 60  # Kafka 4 accepts a CreateTime up to an hour ahead by default
# The second cluster's ports: the test stack's Kafka port plus this (and one more for its controller).
OTHER_CLUSTER_PORT_OFFSET = 200


def _events(timestamp: int, count: int) -> list[dict]:
    return [_message(timestamp, f"user-{i % 20}", 100 + i, antenna=f"antenna-{i % 5}", app=APPS[i % 5])
            for i in range(count)]


def _expected(messages: list[dict], field: str) -> dict:
    """Bytes per (`field`, 5-minute window start); a speed table's key column is the message's field."""
    totals: dict = {}
    for message in messages:
        key = (message[field], utc_from_epoch_seconds(message["timestamp"] // 300 * 300))
        totals[key] = totals.get(key, 0) + message["bytes"]
    return totals


def _assert_tables_hold(url: str, messages: list[dict]) -> None:
    for table in SPEED_TABLES:
        assert read_table(url, table) == _expected(messages, table.key), table.name


def _drain(spark, settings, topic: str, url: str, lake, **config) -> SpeedLayer:
    """`antenna stream --available-now`, in this process; the query is named after the topic."""
    layer = SpeedLayer(spark, SpeedLayerConfig(trigger="available_now", query_name=topic, **config),
                       _targets(settings, topic, url, lake))
    run_until_stopped(layer)
    return layer


def _create_time_topic(settings) -> str:
    """A topic whose records keep their producer's timestamp, as an external cluster's may."""
    name = f"devices-create-time-{uuid.uuid4().hex[:10]}"
    create_topic(librdkafka_config(settings), name, settings.topic_partitions, timestamp_type=CREATE_TIME)
    return name


def _one_partition_topic(settings) -> str:
    """One partition: where each record lands, and so each offset mark, is then known."""
    name = f"devices-trust-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=name, topic_partitions=1))
    return name


def _recreate_topic(settings, topic: str) -> None:
    """Delete the topic and create it again under its name, with one partition."""
    config = librdkafka_config(settings)
    admin = admin_client(config)  # kept: a client collected while its request runs cancels it
    admin.delete_topics([topic])[topic].result(30)
    assert wait_until(lambda: topic not in topic_names(config), 30, interval=0.1)
    ensure_topic(settings.replace(topic=topic, topic_partitions=1))


def _timestamp_type(settings, topic: str) -> str:
    from confluent_kafka.admin import ConfigResource, ResourceType

    admin = admin_client(librdkafka_config(settings))
    resource = ConfigResource(ResourceType.TOPIC, topic)
    return admin.describe_configs([resource])[resource].result(30)["message.timestamp.type"].value


def _one_line(failure: pytest.ExceptionInfo) -> str:
    line = str(failure.value)
    assert "\n" not in line, line
    return line


# Time

def test_a_producer_clock_50_minutes_ahead_makes_no_event_late(settings, spark, serving_db, tmp_path):
    """Issue 28, case 1, on a topic that keeps the producers' timestamps (CreateTime): the record ahead
    is valid, and the watermark it brings is capped by the stream's clock."""
    topic = _create_time_topic(settings)
    assert _timestamp_type(settings, topic) == CREATE_TIME
    now = int(time.time())
    first = _events(now, 2000)
    _produce(settings, topic, first)
    layers = [_drain(spark, settings, topic, serving_db, tmp_path)]
    # Valid-looking: its JSON time is within the contract's tolerance of its Kafka time, both 50 minutes ahead.
    ahead = [_message(now + AHEAD_SECONDS, "user-ahead", 7)]
    _produce(settings, topic, ahead, timestamp_ms=(now + AHEAD_SECONDS) * 1000)
    layers.append(_drain(spark, settings, topic, serving_db, tmp_path))
    later = _events(int(time.time()), 2000)
    _produce(settings, topic, later)
    layers.append(_drain(spark, settings, topic, serving_db, tmp_path))

    assert [layer.stats.good_messages for layer in layers] == [2000, 1, 2000]
    assert [layer.stats.late_messages for layer in layers] == [0, 0, 0]
    _assert_tables_hold(serving_db, first + ahead + later)
    # The batch of the record ahead recorded the clock, not its time.
    [(newest,)] = query(serving_db, "SELECT max(max_event_time) FROM streaming_batches WHERE query = %s", (topic,))
    assert newest < utc_from_epoch_seconds(now + 600)


def test_on_a_log_append_time_topic_the_broker_stamps_the_records(settings, spark, topic, serving_db, tmp_path):
    """Case 1 on a topic the stack created (the `topic` fixture's, like `antenna stack up`'s): the broker
    replaces the producer's timestamp with its own, so the record 50 minutes ahead is beyond the contract's
    tolerance of its Kafka time and is a dead letter."""
    assert _timestamp_type(settings, topic) == LOG_APPEND_TIME
    now = int(time.time())
    first = _events(now, 2000)
    _produce(settings, topic, first)
    layers = [_drain(spark, settings, topic, serving_db, tmp_path)]
    _produce(settings, topic, [_message(now + AHEAD_SECONDS, "user-ahead", 7)],
             timestamp_ms=(now + AHEAD_SECONDS) * 1000)
    layers.append(_drain(spark, settings, topic, serving_db, tmp_path))
    later = _events(int(time.time()), 2000)
    _produce(settings, topic, later)
    layers.append(_drain(spark, settings, topic, serving_db, tmp_path))

    assert [(layer.stats.good_messages, layer.stats.bad_messages) for layer in layers] == [(2000, 0), (0, 1), (2000, 0)]
    assert [layer.stats.late_messages for layer in layers] == [0, 0, 0]
    _assert_tables_hold(serving_db, first + later)
    [(reason, kafka_timestamp)] = query(serving_db, "SELECT reason, kafka_timestamp FROM dead_letter")
    assert reason == TIMESTAMP_IN_FUTURE
    assert abs(epoch_seconds(kafka_timestamp) - now) < 120  # the broker's clock, not the producer's


class _FailsAfterPlanning(SpeedLayer):
    def _micro_batch_result(self, *args, **kwargs):
        raise RuntimeError("crash after the batch was planned")


def test_a_replayed_batch_caps_its_watermark_by_the_clock_recorded_when_first_planned(settings, spark, serving_db,
                                                                                     tmp_path):
    topic = _create_time_topic(settings)
    ahead = int(time.time()) + 300
    _produce(settings, topic, [_message(ahead, "user-ahead", 5)], timestamp_ms=ahead * 1000)
    config = SpeedLayerConfig(trigger="available_now", query_name=topic, batch_attempts=1)
    with pytest.raises(MicroBatchFailed, match="crash after the batch was planned"):
        run_until_stopped(_FailsAfterPlanning(spark, config, _targets(settings, topic, serving_db, tmp_path)))
    clocks = "SELECT checkpoint_id, batch_id, planned_at FROM streaming_batch_clocks WHERE query = %s"
    [(checkpoint_id, batch_id, planned_at)] = query(serving_db, clocks, (topic,))
    time.sleep(1)

    # The next run replays the same batch from the checkpoint: it reads the clock back.
    replay = SpeedLayer(spark, config, _targets(settings, topic, serving_db, tmp_path))
    run_until_stopped(replay)
    assert query(serving_db, clocks, (topic,)) == [(checkpoint_id, batch_id, planned_at)]
    [(applied_batch, max_event_time, applied_at)] = query(
        serving_db, "SELECT batch_id, max_event_time, applied_at FROM streaming_batches WHERE query = %s", (topic,))
    assert applied_batch == batch_id and replay.stats.good_messages == 1
    # The first batch ever: capped by the clock alone, the one recorded a second before it was applied.
    assert max_event_time == planned_at
    assert applied_at - planned_at >= timedelta(seconds=1)


def test_the_watermark_decision_never_passes_the_clock_nor_the_bound():
    """Property: whatever the batch's newest watermark time (any producer clock), the previous watermark
    time and the clock, the watermark after the batch is at most the clock's or the bound's."""
    from hypothesis import given
    from hypothesis import strategies as st

    times = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9000, 1, 1))
    durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650))

    @given(st.none() | times, st.none() | times, times, durations, durations)
    def check(newest, previous, clock, delay, bound):
        decision = BatchWatermark(previous, clock, delay, bound)
        contributed = decision.contribution(newest)
        if newest is None:
            assert contributed is None
            return
        assert contributed <= min(newest, clock)
        if previous is None:
            assert contributed == min(newest, clock)
        else:
            assert contributed == min(newest, clock, previous + bound)
            after = max(previous, contributed)  # the ledger's max_event_time after the batch
            assert after <= max(previous, min(clock, previous + bound))
            assert decision.watermark == previous - delay

    check()


def test_the_parse_never_gives_a_watermark_time_past_the_records_kafka_time(spark):
    """Property, through the Spark parse on small batches: for any CreateTime and any JSON time, an
    accepted record's watermark time is its event time capped by its Kafka time, and the batch's
    contribution after the stream's clock is at most that clock and the bound past the previous."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis import strategies as st
    from pyspark.sql import functions as F

    from antenna_assets.transforms.devices import WATERMARK_TIME, parse_device_messages

    clock = int(time.time())
    # Spark's timestamps: years 1 to 9999.
    kafka_millis = st.integers(-62_135_596_800_000, 253_402_300_799_999) | st.integers(
        (clock - 86400) * 1000, (clock + 7200) * 1000)
    json_times = st.integers(-2**63, 2**63 - 1) | st.integers(clock - 86400, clock + 7200)
    bound = timedelta(minutes=1)

    @hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(st.tuples(json_times, kafka_millis), min_size=1, max_size=20),
           st.none() | st.integers(clock - 86400, clock))
    def check(records, previous_seconds):
        rows = [(json.dumps(_message(ts, "u", 1)).encode(), "t", 0, offset, millis)
                for offset, (ts, millis) in enumerate(records)]
        kafka_rows = (spark.createDataFrame(rows, "value binary, topic string, partition int, offset long, millis long")
                      .select(F.lit(None).cast("binary").alias("key"), "value", "topic", "partition", "offset",
                              F.timestamp_millis("millis").alias("timestamp")))
        parsed = parse_device_messages(kafka_rows).select(
            "offset", "timestamp", F.unix_micros(WATERMARK_TIME).alias("watermark_micros")).where("reason IS NULL")
        accepted = parsed.collect()
        for row in accepted:
            json_time, millis = records[row.offset]
            assert row.watermark_micros == min(json_time * 1_000_000, millis * 1000)
        previous = utc_from_epoch_seconds(previous_seconds)
        decision = BatchWatermark(previous, utc_from_epoch_seconds(clock), timedelta(minutes=1), bound)
        newest = max((row.watermark_micros for row in accepted), default=None)
        contributed = decision.contribution(utc_from_epoch_seconds(newest / 1e6) if newest is not None else None)
        if contributed is not None:
            assert contributed <= utc_from_epoch_seconds(clock)
            assert previous is None or contributed <= previous + bound

    check()


# Topic identity

def test_a_recreated_topic_with_a_lost_checkpoint_is_read_from_its_start(settings, spark, serving_db, tmp_path):
    """Issue 28, case 2: the new topic's records sit below the old topic's offset marks."""
    topic = _one_partition_topic(settings)
    old = describe_topic(librdkafka_config(settings), topic).identity
    now = int(time.time())
    before = _events(now - 60, 3000)
    _produce(settings, topic, before)
    assert _drain(spark, settings, topic, serving_db, tmp_path).stats.good_messages == 3000
    _recreate_topic(settings, topic)
    new = describe_topic(librdkafka_config(settings), topic).identity
    assert new.cluster_id == old.cluster_id and new.topic_id != old.topic_id
    shutil.rmtree(tmp_path / "checkpoints" / topic)
    after = _events(now, 1000)
    _produce(settings, topic, after)

    layer = _drain(spark, settings, topic, serving_db, tmp_path)
    assert (layer.stats.good_messages, layer.stats.late_messages) == (1000, 0)
    _assert_tables_hold(serving_db, before + after)
    assert spark.read.parquet(str(tmp_path / "landing")).count() == 4000
    # Each topic keeps marks of its own.
    marks = query(serving_db, "SELECT kafka_topic_id, applied_until, landed_until FROM streaming_offsets "
                              "WHERE query = %s", (topic,))
    assert set(marks) == {(old.topic_id, 3000, 3000), (new.topic_id, 1000, 1000)}


def test_a_recreated_topics_dead_letters_at_the_old_offsets_are_all_kept(settings, spark, serving_db, tmp_path):
    """The new topic numbers its records from 0 again: its dead letters are keyed by the topic's identity, so
    they do not collide with (and vanish behind) the old topic's at the same offsets."""
    from confluent_kafka import Producer

    def send_garbage(tag: bytes) -> None:
        producer = Producer(librdkafka_config(settings))
        for i in range(3):
            producer.produce(topic, b"\xff" + tag + bytes([i]))
        assert producer.flush(10) == 0

    topic = _one_partition_topic(settings)
    send_garbage(b"old")
    assert _drain(spark, settings, topic, serving_db, tmp_path).stats.bad_messages == 3
    _recreate_topic(settings, topic)
    shutil.rmtree(tmp_path / "checkpoints" / topic)
    send_garbage(b"new")
    assert _drain(spark, settings, topic, serving_db, tmp_path).stats.bad_messages == 3

    rows = query(serving_db, "SELECT kafka_topic_id, kafka_offset, raw_value FROM dead_letter WHERE topic = %s", (topic,))
    assert len(rows) == 6 and len({topic_id for topic_id, _, _ in rows}) == 2
    assert sorted(bytes(value) for _, _, value in rows) == sorted(
        b"\xff" + tag + bytes([i]) for tag in (b"old", b"new") for i in range(3))


def test_a_recreated_topic_under_its_old_checkpoint_stops_the_stream_in_one_line(settings, spark, serving_db,
                                                                                tmp_path):
    """The checkpoint kept: Spark would go on from the old topic's offsets (5) in the new topic and never
    read its first records."""
    topic = _one_partition_topic(settings)
    now = int(time.time())
    before = _events(now - 60, 5)
    _produce(settings, topic, before)
    _drain(spark, settings, topic, serving_db, tmp_path)
    _recreate_topic(settings, topic)
    after = _events(now, 20)
    _produce(settings, topic, after)

    with pytest.raises(MicroBatchFailed) as stopped:
        _drain(spark, settings, topic, serving_db, tmp_path)
    line = _one_line(stopped)
    assert f"topic '{topic}' is now topic id" in line and "Delete the query's checkpoint folder" in line
    _assert_tables_hold(serving_db, before)
    # What the line says to do.
    shutil.rmtree(tmp_path / "checkpoints" / topic)
    assert _drain(spark, settings, topic, serving_db, tmp_path).stats.good_messages == 20
    _assert_tables_hold(serving_db, before + after)


def test_marks_beyond_a_partitions_end_stop_the_stream_in_one_line_that_says_what_to_do(settings, spark, serving_db,
                                                                                       tmp_path):
    """A ledger of an older version (marks without identity) whose marks are past the partition's end: say
    the topic was recreated before the upgrade. The marks are taken as the topic's, and checked."""
    topic = _one_partition_topic(settings)
    sent = _events(int(time.time()), 10)
    _produce(settings, topic, sent)
    execute(serving_db, "INSERT INTO streaming_offsets (query, topic, kafka_partition, applied_until, landed_until) "
                        "VALUES (%s, %s, 0, 500, 500)", (topic, topic))

    with pytest.raises(MicroBatchFailed) as stopped:
        _drain(spark, settings, topic, serving_db, tmp_path)
    line = _one_line(stopped)
    assert f"topic '{topic}' partition 0 " in line and "ends at offset 10, below offset 500" in line, line
    assert read_table(serving_db, BYTES_AGG_USER) == {}
    [(attempts, error)] = query(serving_db, "SELECT attempts, error FROM streaming_failures WHERE query = %s", (topic,))
    assert attempts == 1 and error in line  # not retried: no retry can help
    # The line names the statement to run when those records are new; then they are read.
    execute(serving_db, re.search(r"\((DELETE FROM [^)]*)\)", line).group(1))
    assert _drain(spark, settings, topic, serving_db, tmp_path).stats.good_messages == 10
    _assert_tables_hold(serving_db, sent)


def test_the_topic_is_asked_of_kafka_at_the_first_batch_and_below_marks_only(settings, spark, serving_db, tmp_path):
    topic = _one_partition_topic(settings)
    now = int(time.time())
    first = _events(now - 60, 1000)
    _produce(settings, topic, first)
    layer = _drain(spark, settings, topic, serving_db, tmp_path, max_offsets_per_trigger=300)
    assert (layer.stats.batches, layer.stats.topic_checks) == (4, 1)
    # A lost checkpoint: batches of 300 from offset 0 again; the first four hold records below the mark (1000).
    shutil.rmtree(tmp_path / "checkpoints" / topic)
    second = _events(now, 500)
    _produce(settings, topic, second)
    resumed = _drain(spark, settings, topic, serving_db, tmp_path, max_offsets_per_trigger=300)
    assert (resumed.stats.batches, resumed.stats.topic_checks) == (5, 1 + 4)
    assert resumed.stats.good_messages == 500
    _assert_tables_hold(serving_db, first + second)


@pytest.fixture(scope="module")
def other_cluster(settings, tmp_path_factory) -> Settings:
    """A second Kafka cluster (a broker of its own), stopped afterwards."""
    port = settings.kafka_port + OTHER_CLUSTER_PORT_OFFSET
    stack = tmp_path_factory.mktemp("other-cluster")
    (stack / "jars").symlink_to(settings.jars_dir)  # the session stack's, not fetched again
    other = Settings.from_env(stack_dir=stack, kafka_port=port, kafka_controller_port=port + 1,
                              kafka_bootstrap=f"127.0.0.1:{port}", kafka_heap="256m")
    broker = KafkaBroker(other)
    try:
        broker.up()
        yield other
    finally:
        broker.down()


def test_the_same_topic_name_on_another_cluster_gets_marks_of_its_own(settings, other_cluster, spark, serving_db,
                                                                      tmp_path):
    topic = _one_partition_topic(settings)
    ensure_topic(other_cluster.replace(topic=topic, topic_partitions=1))
    now = int(time.time())
    here = _events(now - 60, 30)
    _produce(settings, topic, here)
    _drain(spark, settings, topic, serving_db, tmp_path)
    # The stream pointed at the other cluster, its checkpoint lost: the topic there is read from its start.
    shutil.rmtree(tmp_path / "checkpoints" / topic)
    there = _events(now, 40)
    _produce(other_cluster, topic, there)
    layer = _drain(spark, other_cluster, topic, serving_db, tmp_path)

    assert layer.stats.good_messages == 40
    _assert_tables_hold(serving_db, here + there)
    here_id, there_id = (describe_topic(librdkafka_config(cluster), topic).identity.cluster_id
                         for cluster in (settings, other_cluster))
    assert here_id != there_id
    assert dict(query(serving_db, "SELECT kafka_cluster_id, applied_until FROM streaming_offsets WHERE query = %s",
                      (topic,))) == {here_id: 30, there_id: 40}
