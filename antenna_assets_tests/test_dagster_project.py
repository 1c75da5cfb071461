"""The project as a Dagster user meets it: Dagster's standard metadata read back from a real batch run,
the freshness policy reporting an overdue hour, the speed layer's lag check, the serving views'
automation, and the resources as the UI's Resources page shows them."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import dagster as dg
import pytest
from confluent_kafka import Producer
from dagster._core.definitions.asset_health.asset_freshness_health import get_freshness_status_and_metadata
from dagster._core.definitions.asset_health.asset_health import AssetHealthStatus
from dagster._core.definitions.freshness import FreshnessState
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.test_utils import freeze_time
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster._daemon.freshness import FreshnessDaemon

from antenna_assets.assets.batch import HOURLY_TABLE_DESCRIPTIONS
from antenna_assets.catalog import ASSET_TABLES, OWNERS, catalogued
from antenna_assets.definitions import defs
from antenna_assets.freshness import STREAM_LAG, stream_lag
from antenna_assets.hours import utc_now
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.serving.schema import STREAMING_TABLES
from antenna_assets.settings import Settings
from antenna_assets.stack.kafka import ensure_topic
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, run_until_stopped
from antenna_assets_tests.conftest import REPO, fresh_database
from antenna_assets_tests.truth import query

HOUR = datetime(2025, 10, 1, 10)
HOURLY_ASSETS = ("raw_devices", *HOURLY_TABLE_DESCRIPTIONS)
# Views whose inputs are batch tables or user_metadata: they follow the batch. The other two read only the
# stream's tables, which a never-ending run writes, and are left to the stream.
VIEWS_AFTER_THE_BATCH = {"serving_antenna_1h", "serving_user_1h", "serving_app_1h", "serving_users_over_quota_1h",
                         "serving_speed_vs_batch_1h"}


def _send(bootstrap: str, topic: str, times: list[datetime]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for n, at in enumerate(times):
        producer.produce(topic, json.dumps({"timestamp": int(at.replace(tzinfo=timezone.utc).timestamp()),
                                            "id": f"user-{n}", "antenna_id": f"antenna-{n % 2}", "bytes": 100 + n,
                                            "app": "SKYPE"}).encode())
    assert producer.flush(10) == 0


def _stream(spark, settings: Settings, topic: str, lake: LakeResource, url: str) -> None:
    targets = SpeedLayerTargets(settings.kafka_bootstrap, topic, lake.landing_path, lake.checkpoint_path(topic), url)
    run_until_stopped(SpeedLayer(spark, SpeedLayerConfig(trigger="available_now", watermark="3650 days",
                                                         query_name=topic), targets))


@dataclass
class BatchHour:
    instance: dg.DagsterInstance
    url: str
    lake: LakeResource
    messages: int
    automation_cursor: object  # the automation's evaluation just before the batch ran


@pytest.fixture(scope="module")
def batch_hour(settings, spark, tmp_path_factory):
    """Six messages of HOUR streamed into a lake and a database, then the hourly job run for HOUR on an
    instance of its own, as the hourly sensor runs it."""
    topic = f"project-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=topic))
    times = [HOUR + timedelta(minutes=7 * n) for n in range(6)]
    _send(settings.kafka_bootstrap, topic, times)
    lake = LakeResource(root=str(tmp_path_factory.mktemp("lake")))
    with fresh_database(settings) as url, dg.instance_for_test() as instance:
        _stream(spark, settings, topic, lake, url)
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        result = defs.resolve_job_def("hourly_batch_job").execute_in_process(
            partition_key=f"{HOUR:%Y-%m-%d-%H:%M}", instance=instance,
            resources={"postgres": PostgresResource(url=url), "lake": lake, "spark": SparkResource.for_lake(lake)})
        assert result.success
        yield BatchHour(instance, url, lake, len(times), before.cursor)


def test_standard_metadata_from_the_batch_run_and_the_specs(batch_hour):
    latest = {name: batch_hour.instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata
              for name in HOURLY_ASSETS}
    assert latest["raw_devices"]["dagster/row_count"].value == batch_hour.messages
    assert latest["raw_devices"]["dagster/uri"].value == batch_hour.lake.raw_devices_path
    antennas = query(batch_hour.url, "SELECT count(*) FROM bytes_agg_antenna_1h WHERE date = %s", (HOUR,))[0][0]
    assert antennas == 2 and latest["bytes_agg_antenna_1h"]["dagster/row_count"].value == antennas
    assert not any("row_count" in metadata for metadata in latest.values())  # only Dagster's key

    specs = {spec.key.path[-1]: spec for spec in defs.resolve_all_asset_specs()}
    assert all(spec.owners == OWNERS for spec in specs.values())
    antenna = specs["bytes_agg_antenna_1h"].metadata
    assert antenna["dagster/table_name"] == "bytes_agg_antenna_1h"
    assert [(c.name, c.type, c.constraints.nullable) for c in antenna["dagster/column_schema"].columns] == [
        ("antenna_id", "TEXT", False), ("date", "TIMESTAMP", False), ("sum_antenna_bytes", "NUMERIC(38, 0)", False)]
    assert antenna["dagster/column_schema"].constraints.other == ["PRIMARY KEY (antenna_id, date)"]
    for name, table in ASSET_TABLES.items():  # the catalog's columns are the tables' one definition
        assert [c.name for c in specs[name].metadata["dagster/column_schema"].columns] == list(table.names), name
    assert specs["serving_antenna_1h"].metadata["dagster/table_name"] == "serving_antenna_1h"
    [code] = specs["raw_devices"].metadata["dagster/code_references"].code_references
    assert code.file_path == str(REPO / "antenna_assets" / "assets" / "batch.py") and code.line_number > 1


def test_code_references_link_to_the_repository_when_it_has_a_web_address(settings):
    from antenna_assets.assets.batch import raw_devices

    linked = settings.replace(git_url="https://github.com/antenna-example/antenna_assets", git_branch="release")
    [asset] = catalogued([raw_devices], linked)
    [code] = asset.specs_by_key[dg.AssetKey("raw_devices")].metadata["dagster/code_references"].code_references
    assert isinstance(code, dg.UrlCodeReference)
    assert code.url.startswith("https://github.com/antenna-example/antenna_assets/tree/release/antenna_assets/assets/batch.py")


def _freshness(instance) -> dict[str, FreshnessState]:
    records = instance.get_freshness_state_records([dg.AssetKey(name) for name in HOURLY_ASSETS])
    return {key.path[-1]: record.freshness_state for key, record in records.items()}


def test_an_overdue_hour_fails_the_freshness_policy_and_the_ui_health(batch_hour, settings):
    """Dagster's freshness daemon, one iteration over this code location: fresh right after the hour's
    run; once the next hour is past its deadline (close + grace + batch_run_minutes) with no new run,
    every hourly asset fails its policy and the UI's asset health says Degraded."""
    instance = batch_hour.instance
    ran_at = instance.get_latest_materialization_event(dg.AssetKey("raw_devices")).timestamp
    origin = InProcessCodeLocationOrigin(LoadableTargetOrigin(module_name="antenna_assets.definitions",
                                                              working_directory=str(REPO)))
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget(origin)) as workspace:
        daemon = FreshnessDaemon()
        list(daemon.run_iteration(workspace))
        assert set(_freshness(instance).values()) == {FreshnessState.PASS}
        # Some deadline tick lies in (ran_at + B, ran_at + 1 h + B]: by then the next hour was due.
        overdue = ran_at + 3600 + 60 * settings.batch_run_minutes + 60
        with freeze_time(overdue):
            list(daemon.run_iteration(workspace))
            assert _freshness(instance) == {name: FreshnessState.FAIL for name in HOURLY_ASSETS}
            health, _ = asyncio.run(get_freshness_status_and_metadata(workspace.create_request_context(),
                                                                      dg.AssetKey("bytes_agg_user_1h")))
    assert health == AssetHealthStatus.DEGRADED


def _requested(evaluation) -> set:
    return {result.key for result in evaluation.results if result.true_subset.size}


def test_the_serving_views_follow_the_batch(batch_hour):
    """Declarative Automation on this instance: the batch run updated the hourly tables, so the views
    reading them are requested once; the stream's views are not (their inputs come from the stream)."""
    after = dg.evaluate_automation_conditions(defs=defs, instance=batch_hour.instance,
                                              cursor=batch_hour.automation_cursor)
    assert {key.path[-1] for key in _requested(after)} == VIEWS_AFTER_THE_BATCH
    again = dg.evaluate_automation_conditions(defs=defs, instance=batch_hour.instance, cursor=after.cursor)
    assert again.total_requested == 0


def test_the_stream_lag_check_is_automated_every_few_minutes(settings):
    instance = dg.DagsterInstance.ephemeral()
    tick = utc_now().replace(tzinfo=timezone.utc, second=0, microsecond=0) + timedelta(hours=1)
    tick = tick.replace(minute=0)  # a multiple of every ANTENNA_STREAM_LAG_CHECK_MINUTES
    with freeze_time(tick - timedelta(seconds=30)):
        before = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    with freeze_time(tick + timedelta(seconds=30)):
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=before.cursor)
    assert _requested(after) == {dg.AssetCheckKey(dg.AssetKey(table.name), STREAM_LAG) for table in STREAMING_TABLES}


def _lag_check(url: str) -> list:
    job = dg.define_asset_job("stream_lag_job", selection=dg.AssetSelection.checks(stream_lag))
    checked = dg.Definitions(assets=[dg.AssetSpec(table.name) for table in STREAMING_TABLES], asset_checks=[stream_lag],
                             jobs=[job], resources={"postgres": PostgresResource(url=url)})
    result = checked.resolve_job_def(job.name).execute_in_process(instance=dg.DagsterInstance.ephemeral())
    return result.get_asset_check_evaluations()


def test_the_stream_lag_check_fails_on_an_old_latest_event_and_passes_on_a_new_one(settings, spark, serving_db,
                                                                                    tmp_path):
    topic = f"lag-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=topic))
    lake = LakeResource(root=str(tmp_path))
    [nothing, *_] = _lag_check(serving_db)
    assert not nothing.passed and nothing.metadata["latest_event_time"].value == "none"

    _send(settings.kafka_bootstrap, topic, [HOUR, HOUR + timedelta(minutes=1)])
    _stream(spark, settings, topic, lake, serving_db)
    old = _lag_check(serving_db)
    assert {e.asset_key.path[-1] for e in old} == {table.name for table in STREAMING_TABLES}
    assert not any(e.passed for e in old)
    assert old[0].metadata["lag_seconds"].value > settings.stream_lag_limit_seconds
    assert old[0].metadata["latest_event_time"].value == f"{HOUR + timedelta(minutes=1):%Y-%m-%d %H:%M:%S} UTC"

    # A query of its own: the ledger's event time of a query moves on by at most max_watermark_advance a
    # batch (speed/watermark.py), and the view takes the newest of all queries.
    live = f"lag-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=live))
    sent = utc_now().replace(microsecond=0)
    _send(settings.kafka_bootstrap, live, [sent])
    _stream(spark, settings, live, lake, serving_db)
    new = _lag_check(serving_db)
    assert all(e.passed for e in new), new[0].metadata
    assert 0 <= new[0].metadata["lag_seconds"].value <= time.time() - sent.replace(tzinfo=timezone.utc).timestamp() + 1


def test_the_resources_page_shows_the_values_runs_use(settings):
    resources = {snap.name: snap for snap in RepositorySnap.from_def(defs.get_repository_def()).resources}
    lake = {key: json.loads(value) for key, value in resources["lake"].configured_values.items()}
    assert lake == {"root": settings.lake_root, "checkpoints": settings.checkpoint_root,
                    "project": settings.gcs_project, "endpoint": settings.gcs_endpoint}
    spark = json.loads(resources["spark"].configured_values["spark_config"])
    assert spark["spark.master"] == settings.spark_master and spark["spark.sql.session.timeZone"] == "UTC"
    assert resources["spark"].nested_resources["lake"].name == "lake"  # the top-level lake, not a copy
    assert json.loads(resources["postgres"].configured_values["url"]) == settings.postgres_url

    # A URL from the environment may carry a password: the page names the variable, never the value.
    given = Settings.from_env(postgres_url="postgresql://pipeline:s3cret-pw@127.0.0.1:5999/antenna")
    shown = RepositorySnap.from_def(dg.Definitions(
        resources={"postgres": PostgresResource.from_settings(given)}).get_repository_def()).resources
    assert "s3cret-pw" not in str(shown) and "ANTENNA_POSTGRES_URL" in str(shown[0].configured_values["url"])
