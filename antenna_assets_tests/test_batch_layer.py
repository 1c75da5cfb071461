"""The batch layer's assets, materialized with Dagster on real Spark, PostgreSQL and lake files."""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

import dagster as dg
import pytest
from confluent_kafka import Producer

from antenna_assets import checks
from antenna_assets.assets.batch import hourly_tables, raw_devices
from antenna_assets.assets.sources import user_metadata
from antenna_assets.partitions import partition_range_tags
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP_1H, BYTES_AGG_USER_1H
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.sources.simulator import SimulatorConfig, run_simulation
from antenna_assets.stack.kafka import ensure_topic
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, run_until_stopped
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets_tests.conftest import GCS_BUCKET, fresh_database
from antenna_assets_tests.truth import expected, query, read_table

START = datetime(2025, 6, 1, 8)
HOURS = ["2025-06-01-08:00", "2025-06-01-09:00"]
GHOST = "99999999-0000-0000-0000-000000000000"  # sends traffic but is not in user_metadata
EMAIL = {u.id: u.email for u in PROVISIONED_USERS}
QUOTA = {u.email: u.quota for u in PROVISIONED_USERS}


@pytest.fixture(scope="module", params=["local", "gcs"])
def landed(request, settings, spark, tmp_path_factory):
    """Two backfilled hours (plus a message from an unknown id) streamed into a lake and a database.

    The lake is a local folder, then a bucket on the GCS API emulator: every test runs on both."""
    topic = f"batch-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=topic))
    truth = run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=2, start=START,
                                           seed=3, malformed_fraction=0.02, progress=False))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    ghost_time = int((START - datetime(1970, 1, 1)).total_seconds()) + 42
    producer.produce(topic, json.dumps({"timestamp": ghost_time, "id": GHOST, "antenna_id": "ghost-antenna",
                                        "bytes": 777, "app": "SKYPE"}).encode())
    assert producer.flush(10) == 0
    if request.param == "gcs":
        request.getfixturevalue("gcs_emulator")
        root = f"gs://{GCS_BUCKET}/{topic}"
    else:
        root = str(tmp_path_factory.mktemp("lake"))
    lake = LakeResource(root=root, checkpoints=f"{root}/_checkpoints", endpoint=settings.gcs_endpoint)
    lake.validate()
    with fresh_database(settings) as url:
        layer = SpeedLayer(spark, SpeedLayerConfig(trigger="available_now", watermark="3650 days", query_name=topic),
                           SpeedLayerTargets(settings.kafka_bootstrap, topic, lake.landing_path,
                                             lake.checkpoint_path(topic), url))
        run_until_stopped(layer)
        yield truth, url, lake


def _resources(url, lake):
    return {"postgres": PostgresResource(url=url), "lake": lake, "spark": SparkResource.for_lake(lake)}


def _materialize_range(url, lake, keys=HOURS):
    return dg.materialize([user_metadata, raw_devices, hourly_tables], resources=_resources(url, lake),
                          tags=partition_range_tags(keys[0], keys[-1]),
                          instance=dg.DagsterInstance.ephemeral())


def _expected_by_email(truth):
    sums = {}
    for (user, hour), total in expected(truth, "user", hourly=True).items():
        sums[(EMAIL[user], hour)] = sums.get((EMAIL[user], hour), 0) + total
    return sums


def test_backfill_range_in_one_run_equals_ground_truth(landed):
    truth, url, lake = landed
    result = _materialize_range(url, lake)
    assert result.success
    ghost = {(("ghost-antenna", START)): 777}
    assert read_table(url, BYTES_AGG_ANTENNA_1H) == {**expected(truth, "antenna", hourly=True), **ghost}
    app_truth = expected(truth, "app", hourly=True)
    app_truth[("SKYPE", START)] += 777
    assert read_table(url, BYTES_AGG_APP_1H) == app_truth
    assert read_table(url, BYTES_AGG_USER_1H) == _expected_by_email(truth)
    over = {(email, hour, QUOTA[email], total) for (email, hour), total in _expected_by_email(truth).items()
            if total > QUOTA[email]}
    assert set(query(url, "SELECT email, date, quota, sum_user_bytes FROM users_over_quota_1h")) == over
    assert over, "the contract's quotas put some users over in every hour"

    checks_by_name = {(e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()}
    for (asset, name), evaluation in checks_by_name.items():
        if name == checks.ALL_USERS_KNOWN:
            assert not evaluation.passed and evaluation.metadata["unknown_bytes"].value == 777
        else:
            assert evaluation.passed, (asset, name, evaluation.metadata)
    # The speed layer (no late drops here) agrees with the batch layer.
    speed_check = checks_by_name[("bytes_agg_antenna_1h", checks.AGREES_WITH_SPEED_LAYER)]
    assert speed_check.metadata["compared_hours"].value == 2
    assert speed_check.metadata["batch_minus_speed_bytes"].value == 0


def test_rerunning_a_partition_gives_the_same_rows(landed):
    truth, url, lake = landed
    assert _materialize_range(url, lake).success
    before = {t.name: read_table(url, t) for t in (BYTES_AGG_ANTENNA_1H, BYTES_AGG_USER_1H, BYTES_AGG_APP_1H)}
    files_before = [f for f in lake.list_files(lake.raw_devices_path) if f.endswith(".parquet")]
    assert _materialize_range(url, lake, keys=[HOURS[1]]).success
    assert _materialize_range(url, lake).success
    assert {t.name: read_table(url, t) for t in (BYTES_AGG_ANTENNA_1H, BYTES_AGG_USER_1H, BYTES_AGG_APP_1H)} == before
    assert len(files_before) == len([f for f in lake.list_files(lake.raw_devices_path) if f.endswith(".parquet")])


def test_empty_hour_materializes_empty_with_a_warning(landed):
    _, url, lake = landed
    result = dg.materialize([user_metadata, raw_devices, hourly_tables], resources=_resources(url, lake),
                            partition_key="2025-06-02-03:00", instance=dg.DagsterInstance.ephemeral())
    assert result.success
    [materialization] = [m for m in result.asset_materializations_for_node("raw_devices")]
    assert materialization.metadata["dagster/row_count"].value == 0
    assert materialization.metadata["empty_hours"].value == 1


def test_hour_within_its_grace_is_refused(landed, monkeypatch):
    _, url, lake = landed
    last_hour = datetime.utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    # With a grace of a day, the last hour is not closed yet: the stream may still land messages there.
    monkeypatch.setenv("ANTENNA_HOUR_CLOSE_GRACE_MINUTES", "1440")
    result = dg.materialize([raw_devices], resources=_resources(url, lake), partition_key=f"{last_hour:%Y-%m-%d-%H:%M}",
                            instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "not closed" in failure.event_specific_data.error.message


def test_checks_fail_when_what_postgres_received_is_wrong(landed, monkeypatch):
    """The checks judge the written tables: a writer that loses a row, writes nothing, or a negative
    sum makes them fail, although the computed rows were right."""
    from antenna_assets.batch import layer as batch_layer

    _, url, lake = landed
    write = batch_layer.write_hourly_tables

    def broken_write(conn, tables, start, end):
        tampered = dict(tables)
        tampered["bytes_agg_antenna_1h"] = sorted(tables["bytes_agg_antenna_1h"])[1:]  # one row lost
        tampered["bytes_agg_app_1h"] = []  # nothing written
        email, date, total = sorted(tables["bytes_agg_user_1h"])[0]
        tampered["bytes_agg_user_1h"] = [(email, date, -total), *sorted(tables["bytes_agg_user_1h"])[1:]]
        return write(conn, tampered, start, end)

    monkeypatch.setattr(batch_layer, "write_hourly_tables", broken_write)
    result = _materialize_range(url, lake)
    failed = {(e.asset_key.path[-1], e.check_name) for e in result.get_asset_check_evaluations() if not e.passed}
    assert {("bytes_agg_antenna_1h", checks.RECONCILES_WITH_RAW), ("bytes_agg_app_1h", checks.RECONCILES_WITH_RAW),
            ("bytes_agg_app_1h", checks.NON_EMPTY_WHEN_RAW_NON_EMPTY), ("bytes_agg_user_1h", checks.NON_NEGATIVE_SUMS),
            ("bytes_agg_user_1h", checks.RECONCILES_WITH_RAW)} <= failed
    assert ("bytes_agg_antenna_1h", checks.NON_EMPTY_WHEN_RAW_NON_EMPTY) not in failed
    monkeypatch.undo()
    assert _materialize_range(url, lake).success  # the next tests see right tables again


def test_the_lambda_check_fails_on_events_the_speed_layer_dropped_as_late(settings, spark, serving_db, tmp_path):
    """Events later than the watermark are in the lake but not in the speed tables: the batch layer
    counts them and agrees_with_speed_layer reports the difference."""
    topic = f"late-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=topic))
    producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
    base = int((datetime(2025, 6, 3, 10, 40) - datetime(1970, 1, 1)).total_seconds())
    for ts, nbytes in ((base, 10), (base + 1, 20)):
        producer.produce(topic, json.dumps({"timestamp": ts, "id": "u", "antenna_id": "a", "bytes": nbytes,
                                            "app": "SKYPE"}).encode())
    assert producer.flush(10) == 0
    lake = LakeResource(root=str(tmp_path))
    targets = SpeedLayerTargets(settings.kafka_bootstrap, topic, lake.landing_path, lake.checkpoint_path(topic), serving_db)
    config = SpeedLayerConfig(trigger="available_now", query_name=topic)
    run_until_stopped(SpeedLayer(spark, config, targets))
    producer.produce(topic, json.dumps({"timestamp": base - 1800, "id": "u", "antenna_id": "a", "bytes": 5,
                                        "app": "SKYPE"}).encode())  # 30 minutes late: its window closed
    assert producer.flush(10) == 0
    run_until_stopped(SpeedLayer(spark, config, targets))
    result = dg.materialize([user_metadata, raw_devices, hourly_tables], resources=_resources(serving_db, lake),
                            partition_key="2025-06-03-10:00", instance=dg.DagsterInstance.ephemeral())
    [speed_check] = [e for e in result.get_asset_check_evaluations()
                     if (e.asset_key.path[-1], e.check_name) == ("bytes_agg_antenna_1h", checks.AGREES_WITH_SPEED_LAYER)]
    assert not speed_check.passed and speed_check.metadata["batch_minus_speed_bytes"].value == 5
