"""The operators' page in a real browser (Debian's headless chromium driven by Playwright), served by
the product's own service (`antenna operators serve` in the background), while the speed layer runs;
then the batch layer materializes an hour with the operator's new quota.

Runs Spark: run it under the CPU lock (`flock /tmp/antenna-heavy.lock`).
ANTENNA_OPERATORS_SCREENSHOT=docs/operators-users.png re-creates the README's screenshot.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import shutil
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest
from confluent_kafka import Producer

from antenna_assets.assets.batch import hourly_tables, raw_devices
from antenna_assets.assets.sources import user_metadata
from antenna_assets.postgres import transaction
from antenna_assets.serving.operators.auth import add_operator
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.sources.simulator import SimulatorConfig, run_simulation
from antenna_assets.stack.kafka import ensure_topic
from antenna_assets.stack.operators_page import OperatorsPage
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets
from antenna_assets.hours import utc_now
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets_tests.conftest import fresh_database
from antenna_assets_tests.truth import query

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"
FEDE = next(u for u in PROVISIONED_USERS if u.name == "fede")  # quota 5000: over it every hour
NEWCOMER = "0000cafe-0000-0000-0000-000000000021"  # sends traffic before the operator adds it
REFRESH_SECONDS = 3  # the stream's metadata refresh interval in this test

pytestmark = pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
                                reason="Debian chromium missing: `make browser` installs it")


def _epoch(utc: datetime) -> int:
    return calendar.timegm(utc.timetuple())


@pytest.fixture(scope="module")
def served(settings, tmp_path_factory):
    """The page's service on a fresh serving database, with operator `alice`: (page, database URL)."""
    with fresh_database(settings) as url:
        page_settings = settings.replace(postgres_url=url,
                                stack_dir=tmp_path_factory.mktemp("operators-stack"))
        page = OperatorsPage(page_settings)
        page.up()
        try:
            with transaction(url) as conn:
                add_operator(conn, "alice", PASSWORD)
            yield page, url
        finally:
            print(page.down())


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def test_change_a_quota_in_the_browser_and_the_pipeline_uses_it(settings, spark, served, browser, tmp_path):
    page_service, url = served
    base = page_service.url
    this_hour = utc_now().replace(minute=0, second=0, microsecond=0)
    before_hour, after_hour = this_hour - timedelta(hours=3), this_hour - timedelta(hours=2)
    topic = f"operators-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=topic))
    run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=3,
                                   start=before_hour, seed=15, progress=False))
    lake = LakeResource(root=str(tmp_path / "lake"), checkpoints=str(tmp_path / "lake" / "_checkpoints"))
    # The running stream: re-reads user_metadata every REFRESH_SECONDS; backfilled hours arrive out of order.
    layer = SpeedLayer(spark, SpeedLayerConfig(watermark="3650 days", trigger_interval="1 second",
                                               metadata_refresh_seconds=REFRESH_SECONDS, query_name=topic),
                       SpeedLayerTargets(settings.kafka_bootstrap, topic, lake.landing_path,
                                         lake.checkpoint_path(topic), url))
    stream = layer.start()
    try:
        stream.processAllAvailable()
        layer.wait_for_lake()  # a batch's files may land behind the next
        resources = {"postgres": PostgresResource(url=url), "lake": lake, "spark": SparkResource.for_lake(lake)}

        def materialize(hour: datetime):
            result = dg.materialize([user_metadata, raw_devices, hourly_tables], resources=resources,
                                    partition_key=f"{hour:%Y-%m-%d-%H:%M}", instance=dg.DagsterInstance.ephemeral())
            assert result.success

        materialize(before_hour)
        assert query(url, "SELECT quota FROM users_over_quota_1h WHERE email = %s AND date = %s",
                     (FEDE.email, before_hour)) == [(5000,)]

        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        # Signed out: the page sends the browser to sign in, then back.
        tab.goto(f"{base}/users")
        assert "/login" in tab.url
        tab.fill("#name", "alice")
        tab.fill("#password", "not the password")
        tab.click("button[type=submit]")
        assert "Wrong operator name or password" in tab.inner_text("main")
        tab.fill("#password", PASSWORD)
        tab.click("button[type=submit]")
        tab.wait_for_url(f"{base}/users")
        assert len(tab.locator("tbody tr").all()) == 20
        # Find the user, change the quota to a value in GB.
        tab.fill("input[name=q]", "fed")
        tab.press("input[name=q]", "Enter")
        tab.wait_for_url(re.compile(r".*q=fed.*"))
        rows = tab.locator("tbody tr")
        assert rows.count() == 1 and FEDE.email in rows.inner_text()
        tab.click(f"a[href='/users/{FEDE.id}']")
        tab.fill("#quota", "1.5 GB")
        tab.click("main button[type=submit]")
        assert "Saved 1 change(s)" in tab.inner_text(".flash")
        history = tab.inner_text("table.history")
        assert re.search(r"alice\s+quota\s+5000 \(5 KB\)\s+1500000000 \(1.5 GB\)", history), history
        tab.goto(f"{base}/users?q=fede")
        assert "1.5 GB" in tab.inner_text("tbody tr")
        tab.goto(f"{base}/audit")
        assert FEDE.id in tab.inner_text("main") and "1500000000" in tab.inner_text("main")
        assert query(url, "SELECT quota FROM user_metadata WHERE id = %s", (FEDE.id,)) == [(1_500_000_000,)]

        # The stream sees an edit within its refresh interval: a user the operator adds through the page.
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap})
        message = lambda ts: json.dumps({"timestamp": ts, "id": NEWCOMER, "antenna_id": "a", "bytes": 10,  # noqa: E731
                                         "app": "SKYPE"}).encode()
        producer.produce(topic, message(_epoch(utc_now())))
        producer.flush(10)
        stream.processAllAvailable()
        layer.wait_for_lake()
        tab.goto(f"{base}/users/new")
        tab.fill("#id", NEWCOMER)
        tab.fill("#name", "nuria")
        tab.fill("#email", "nuria@example.com")
        tab.fill("#quota", "250 KB")
        tab.click("main button[type=submit]")
        assert "User nuria" in tab.inner_text(".flash")
        added = time.monotonic()
        seen_after = None
        while time.monotonic() - added < REFRESH_SECONDS + 30:
            producer.produce(topic, message(_epoch(utc_now())))
            producer.flush(10)
            stream.processAllAvailable()
            layer.wait_for_lake()
            emails = {r.email for r in spark.read.parquet(lake.landing_path).where(f"id = '{NEWCOMER}'").collect()}
            if "nuria@example.com" in emails:
                seen_after = time.monotonic() - added
                break
        assert None in emails and seen_after is not None
        print(f"the stream enriched the newcomer's messages {seen_after:.1f} s after the page saved it "
              f"(refresh interval {REFRESH_SECONDS} s, plus a micro-batch)")
        assert seen_after <= REFRESH_SECONDS + 15

        # An hour materialized afterwards uses the new quota: fede is no longer over it.
        materialize(after_hour)
        assert query(url, "SELECT quota FROM user_metadata_hourly WHERE id = %s AND date = %s",
                     (FEDE.id, after_hour)) == [(1_500_000_000,)]
        fede_bytes = query(url, "SELECT sum_user_bytes FROM bytes_agg_user_1h WHERE email = %s AND date = %s",
                           (FEDE.email, after_hour))
        assert fede_bytes and fede_bytes[0][0] > 5000
        over = dict(query(url, "SELECT email, quota FROM users_over_quota_1h WHERE date = %s", (after_hour,)))
        assert FEDE.email not in over and over  # others are still over theirs
        assert query(url, "SELECT quota FROM users_over_quota_1h WHERE email = %s AND date = %s",
                     (FEDE.email, before_hour)) == [(5000,)]  # the earlier hour keeps its snapshot

        tab.goto(f"{base}/users?sort=last_hour&dir=desc")
        assert "over" in tab.inner_text("tbody")  # usage from the serving data, marked against the quotas
        screenshot = os.environ.get("ANTENNA_OPERATORS_SCREENSHOT") or str(tmp_path / "users.png")
        tab.screenshot(path=screenshot, full_page=True)
        assert Path(screenshot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        stream.stop()
        layer.finish_landing()
