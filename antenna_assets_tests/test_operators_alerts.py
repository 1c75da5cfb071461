"""The operators' page's Alerts view and a user's alert history (FastAPI's TestClient on the real app, as the
page's own role, on the module's fresh database from conftest's `page`), and the view in Chromium."""

from __future__ import annotations

import os
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from antenna_assets.alerts import rules
from antenna_assets.alerts.outbox import enqueue_alert
from antenna_assets.postgres import transaction
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets_tests.conftest import OPERATOR_PASSWORD
from antenna_assets_tests.test_operators_hardening import served
from antenna_assets_tests.test_operators_http import _client, _sign_in

ANDRES, PACO = PROVISIONED_USERS[:2]
HOUR = datetime(2026, 12, 6, 13)
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def alerted(page):
    """The rules' alerts in the outbox: andres's provisional (sent) and final, paco's provisional (its email
    refused), the stream's lag; enqueued in this order."""
    url, _ = page
    lag = rules.stream_lag(HOUR, HOUR + timedelta(minutes=8), 300)
    alerts = [rules.provisional(rules.Usage(ANDRES.email, HOUR, 250_000, ANDRES.quota)),
              rules.final(rules.Usage(ANDRES.email, HOUR, 260_000, ANDRES.quota)),
              rules.provisional(rules.Usage(PACO.email, HOUR, 400_000, PACO.quota)),
              rules.Alert(f"health.{lag.name}", lag.summary, "health.stream_lag::test", lag.detail)]
    with transaction(url) as conn, conn.cursor() as cur:
        for alert in alerts:
            enqueue_alert(cur, kind=alert.kind, subject=alert.subject, dedup_key=alert.dedup_key, payload=alert.payload)
        cur.execute("UPDATE alerts SET state = 'sent', attempts = 1, sent_at = now() WHERE dedup_key = %s",
                    (alerts[0].dedup_key,))
        cur.execute("UPDATE alerts SET state = 'failed', attempts = 1, last_error = %s WHERE dedup_key = %s",
                    (f"email {PACO.email}: 550 5.1.1 mailbox unavailable", alerts[2].dedup_key))
    return page


def _rows(html: str) -> list[str]:
    return [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row)).strip()
            for row in re.findall(r"<tr>(.*?)</tr>", html.split("<tbody>")[1], re.S)]


def test_the_alerts_view_lists_every_alert_newest_first_with_its_delivery(alerted):
    client = _client(alerted[1])
    assert _sign_in(client, next="/alerts").headers["location"] == "/alerts"
    response = client.get("/alerts")
    assert response.status_code == 200 and '<a href="/alerts">Alerts</a>' in response.text
    rows = _rows(response.text)
    assert [row.split(" ")[2] for row in rows] == ["health.stream_lag", "quota.provisional", "quota.final",
                                                   "quota.provisional"]
    assert "pipeline Stream behind: its latest applied event is 8.0 min old (limit 5 min) pending" in rows[0]
    assert (f"{PACO.email} Over quota (provisional): {PACO.email} used 400 KB of 300 KB in 2026-12-06 13:00-14:00 UTC "
            f"so far failed · 1 attempt(s) email {PACO.email}: 550 5.1.1 mailbox unavailable") in rows[1]
    assert rows[2].endswith("Over quota (final): andres@gmail.com used 260 KB of 200 KB in 2026-12-06 13:00-14:00 UTC "
                            "pending")
    assert re.search(r"used 250 KB of 200 KB in .* so far sent \d\d:\d\d:\d\d · 1 attempt\(s\)$", rows[3])


def test_the_alerts_view_filters_by_user(alerted):
    client = _client(alerted[1])
    _sign_in(client)
    rows = _rows(client.get("/alerts", params={"user": ANDRES.email[:4].upper()}).text)
    assert len(rows) == 2 and all(f"{ANDRES.email} Over quota" in row for row in rows)
    assert _rows(client.get("/alerts", params={"user": "%"}).text) == ["No alerts."]  # a wildcard is a character


def test_a_users_page_shows_their_alert_history_only(alerted):
    client = _client(alerted[1])
    _sign_in(client)
    html = client.get(f"/users/{ANDRES.id}").text
    alerts = html.split("<h2>Alerts</h2>")[1].split("<h2>")[0]
    assert alerts.count("Over quota") == 2 and PACO.email not in alerts and "Stream behind" not in alerts
    assert "No alerts." in client.get(f"/users/{PROVISIONED_USERS[2].id}").text


@pytest.mark.skipif(shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists(),
                    reason="Debian chromium missing: `make browser` installs it")
def test_the_alerts_view_in_chromium(alerted, tmp_path):
    """ANTENNA_OPERATORS_ALERTS_SCREENSHOT=docs/operators-alerts.png keeps the screenshot (docs/alerts.md's)."""
    from playwright.sync_api import sync_playwright

    with served(alerted[1]) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            tab = browser.new_page(viewport={"width": 1280, "height": 560})
            tab.goto(f"{base}/alerts")
            tab.fill("#name", "alice")
            tab.fill("#password", OPERATOR_PASSWORD)
            tab.click("button[type=submit]")
            tab.wait_for_url(f"{base}/alerts")
            assert len(tab.locator("tbody tr").all()) == 4
            assert "550 5.1.1 mailbox unavailable" in tab.inner_text("tbody")
            screenshot = os.environ.get("ANTENNA_OPERATORS_ALERTS_SCREENSHOT") or str(tmp_path / "alerts.png")
            tab.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    assert Path(screenshot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
