"""Totals that outgrow a BIGINT: the stream keeps running and every table, view and hourly row is exact.

A report's `bytes` is a BIGINT, and so is a micro-batch's partial sum (SpeedLayerConfig bounds it), but a
key's total over many batches or a whole hour is not: the totals are NUMERIC(38, 0) in PostgreSQL and
exact sums in the batch layer's Spark jobs (README: sums).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pyarrow as pa
from confluent_kafka import Producer

from antenna_assets.batch.layer import compute_hourly_tables, read_hours, write_hourly_tables
from antenna_assets.hours import HOUR
from antenna_assets.postgres import transaction
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.sources.contract import BIGINT_MAX
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, run_until_stopped
from antenna_assets.transforms.aggregates import byte_sum
from antenna_assets_tests.truth import query

HOUR_START = datetime(2025, 7, 1, 10)
USER = PROVISIONED_USERS[0]
LARGEST = BIGINT_MAX // 2  # two of these in a micro-batch still fit a BIGINT; three in a window do not
REPORTS = 7


def test_bigint_overflowing_totals_are_exact_in_stream_batch_and_views(settings, spark, topic, serving_db, tmp_path):
    epoch = int(HOUR_START.replace(tzinfo=timezone.utc).timestamp())
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    for i in range(REPORTS):
        producer.produce(topic, json.dumps({"timestamp": epoch + 60 + i, "id": USER.id, "antenna_id": "a-1",
                                            "bytes": LARGEST, "app": "SKYPE"}).encode())
    assert producer.flush(10) == 0
    with transaction(serving_db) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO user_metadata_hourly VALUES (%s, %s, %s, %s, %s)",
                    (HOUR_START, USER.id, USER.name, USER.email, USER.quota))

    # About two reports a micro-batch: the running totals overflow a BIGINT, and so may a batch's own sum.
    config = SpeedLayerConfig(trigger="available_now", watermark="3650 days", max_offsets_per_trigger=2,
                              max_bytes=LARGEST, query_name=topic)
    landing = str(tmp_path / "landing")
    layer = SpeedLayer(spark, config, SpeedLayerTargets(settings.kafka_bootstrap, topic, landing,
                                                        str(tmp_path / "checkpoint"), serving_db))
    run_until_stopped(layer)

    total = REPORTS * LARGEST
    assert total > BIGINT_MAX
    # Spark spreads maxOffsetsPerTrigger over the topic's partitions and rounds: a batch may hold three
    # reports (its BIGINT sum overflows and it is summed again exactly), so not every batch holds two.
    assert layer.stats.good_messages == REPORTS and layer.stats.batches >= 2
    window = HOUR_START
    for table, key in ((BYTES_AGG_ANTENNA, "a-1"), (BYTES_AGG_USER, USER.id), (BYTES_AGG_APP, "SKYPE")):
        assert query(serving_db, f"SELECT {table.key}, date, {table.value} FROM {table.name}") == [(key, window, total)]
    # The lambda views, before the hour is final: the speed layer's exact totals.
    assert query(serving_db, "SELECT app, sum_app_bytes, source FROM serving_app_1h") == [("SKYPE", total, "speed")]

    # The batch layer's Spark sums of the landed hour overflow a BIGINT too: summed again exactly.
    events = read_hours(spark, landing, [HOUR_START])
    tables = compute_hourly_tables(events, [(USER.id, USER.email, USER.quota, HOUR_START)],
                                   ["bytes_agg_antenna_1h", "bytes_agg_user_1h", "bytes_agg_app_1h",
                                    "users_over_quota_1h"], [HOUR_START])  # one hour, as its run sums it
    assert tables["bytes_agg_app_1h"] == [("SKYPE", HOUR_START, total)]
    assert tables["users_over_quota_1h"] == [(USER.email, HOUR_START, USER.quota, total)]
    with transaction(serving_db) as conn:
        write_hourly_tables(conn, tables, HOUR_START, HOUR_START + HOUR)
    assert query(serving_db, "SELECT email, sum_user_bytes, source FROM serving_user_1h") == [(USER.email, total, "batch")]
    assert query(serving_db, "SELECT batch_bytes, speed_bytes FROM serving_speed_vs_batch_1h") == [(total, total)]
    assert query(serving_db, "SELECT sum_user_bytes FROM serving_users_over_quota_1h") == [(total,)]


def test_byte_sum_is_null_on_overflow_and_exact_when_asked(spark):
    frame = spark.createDataFrame(pa.table({"bytes": pa.array([BIGINT_MAX, 1, 2], pa.int64())}).to_pandas())
    assert frame.select(byte_sum().alias("s")).first().s is None  # not an ARITHMETIC_OVERFLOW error
    assert int(frame.select(byte_sum(exact=True).alias("s")).first().s) == BIGINT_MAX + 3
    small = spark.createDataFrame(pa.table({"bytes": pa.array([5, 6], pa.int64())}).to_pandas())
    assert small.select(byte_sum().alias("s")).first().s == 11
