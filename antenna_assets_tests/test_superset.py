"""Apache Superset on the test stack: the dashboards imported from the repository (twice), each chart's
data through Superset's REST API against the same question asked of PostgreSQL directly, and the
dashboard in a real headless Chromium.

The serving tables of a fresh database are filled straight through PostgreSQL (serving_seed), so
no Spark is needed. Superset is installed into `<test stack>/superset/venv` on first use.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

import pytest

from antenna_assets.serving.superset_bundle import DASHBOARD_SLUG, SupersetClient, load_assets
from antenna_assets.errors import StackError
from antenna_assets.postgres import connect
from antenna_assets.stack.superset import ADMIN, Superset
from antenna_assets.hours import utc_now
from antenna_assets_tests.conftest import REPO, fresh_database
from antenna_assets_tests.serving_seed import fill_serving

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = Path(os.environ.get("ANTENNA_STACK_DIR", REPO / ".stack" / "test")) / "superset-dashboard.png"


@pytest.fixture(scope="module")
def superset(settings):
    """Superset started on a fresh, seeded serving database; stopped afterwards."""
    with fresh_database(settings) as url:
        conn = connect(url)
        seeded = fill_serving(conn, utc_now())
        conn.close()
        service = Superset(settings.replace(postgres_url=url))
        service.down()  # a server left by an earlier run may serve another database
        print(service.up())
        try:
            yield service, url, seeded
        finally:
            service.down()


@pytest.fixture(scope="module")
def client(superset) -> SupersetClient:
    service, _, _ = superset
    return SupersetClient(service.url, ADMIN, service.admin_password())


def _listed(client: SupersetClient, resource: str) -> list[dict]:
    return client.get(f"/api/v1/{resource}/", q="(page_size:100)")["result"]


def test_bundle_imports_twice_one_copy_each(superset, client):
    service, _, _ = superset
    service.import_dashboards()  # the start imported it once already
    configs = load_assets()
    for resource, prefix, field in (("chart", "charts/", "slice_name"), ("dataset", "datasets/", "table_name"),
                                    ("dashboard", "dashboards/", "dashboard_title"),
                                    ("database", "databases/", "database_name")):
        names = sorted(item[field] for item in _listed(client, resource))
        assert names == sorted(c[field] for n, c in configs.items() if n.startswith(prefix)), resource
    database, = _listed(client, "database")
    detail = client.get(f"/api/v1/database/{database['id']}/connection")["result"]
    assert "antenna_reader" in detail["sqlalchemy_uri"] and not detail["allow_dml"]


def test_dashboard_file_that_fails_to_import_is_named(superset, tmp_path):
    broken = tmp_path / "charts"
    broken.mkdir()
    (broken / "broken.yaml").write_text("slice_name: [unclosed\n")
    with pytest.raises(StackError, match="broken.yaml"):
        load_assets(tmp_path)


def test_stack_status_reports_superset_and_a_taken_port_is_one_line(superset):
    cli = [sys.executable, "-m", "antenna_assets.cli", "stack"]
    status = subprocess.run([*cli, "status"], capture_output=True, text=True, timeout=60)
    assert f"superset: healthy (pid {superset[0].pid()}, {superset[0].url})" in status.stdout
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        up = subprocess.run([*cli, "up", "--superset"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "ANTENNA_SUPERSET_PORT": str(port)})
    assert up.returncode == 1
    assert up.stderr.strip() == (f"antenna: error: port {port} (Superset) is already in use by another process: "
                                 "stop it, or choose another port with ANTENNA_SUPERSET_PORT")
    assert "postgres already running" in up.stdout and "kafka already running" in up.stdout


def test_failed_install_is_one_line(settings, tmp_path, monkeypatch):
    """No reachable package index: one line naming the install log, and nothing left running."""
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = Superset(settings.replace(stack_dir=tmp_path, superset_port=port))
    with pytest.raises(StackError) as failure:
        service.up()
    message = str(failure.value)
    assert "\n" not in message and message.startswith(f"installing Apache Superset into {service.venv} failed")
    assert str(service.install_log) in message and "apache-superset" in message
    assert service.pid() is None and not (service.venv / ".antenna-constraints").exists()


def _utc(ms) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).replace(tzinfo=None)


def _direct(url: str, sql: str) -> list[tuple]:
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
            return cur.fetchall()
    finally:
        conn.close()


def _top_users(url: str) -> list[tuple]:
    rows = _direct(url, "SELECT date, email, sum_user_bytes, source FROM serving_user_1h")
    latest = max(d for d, *_ in rows)
    per_hour = defaultdict(list)
    for date, email, total, source in rows:
        if (latest - date).total_seconds() <= 3600:
            per_hour[date].append((total, email, source))
    top = []
    for date, entries in per_hour.items():
        for total, email, source in entries:
            rank = 1 + sum(other > total for other, _, _ in entries)
            if rank <= 10:
                top.append((date, rank, email, total, source))
    return top


# What each chart shows, asked of PostgreSQL directly (as the product's user, not the reader).
EXPECTED = {
    "Bytes per antenna per hour (UTC)": lambda url: _direct(
        url, "SELECT date_trunc('hour', date), antenna_id, sum(sum_antenna_bytes) FROM serving_antenna_1h GROUP BY 1, 2"),
    "Bytes per antenna, last hours in 5-minute steps (UTC)": lambda url: _direct(
        url, "SELECT date_bin('5 minutes', date, TIMESTAMP '2000-01-01'), antenna_id, sum(sum_antenna_bytes) "
             "FROM bytes_agg_antenna WHERE date >= (SELECT max(date) FROM bytes_agg_antenna) - interval '3 hours' "
             "GROUP BY 1, 2"),
    "Bytes per app per hour (UTC)": lambda url: _direct(
        url, "SELECT date_trunc('hour', date), app, sum(sum_app_bytes) FROM serving_app_1h GROUP BY 1, 2"),
    "Speed vs batch bytes per closed hour (UTC)": lambda url: _direct(
        url, "SELECT date, batch_bytes, speed_bytes, batch_bytes - speed_bytes FROM serving_speed_vs_batch_1h"),
    "Dead letters per reason (UTC, 5-minute steps)": lambda url: _direct(
        url, "SELECT date_bin('5 minutes', ingest_time, TIMESTAMP '2000-01-01'), reason, count(*) FROM dead_letter "
             "GROUP BY 1, 2"),
    "Top users by bytes: latest and previous hour (UTC)": _top_users,
    "Users over quota per hour: provisional (speed) and final (batch)": lambda url: [
        (d, {"batch": "final (batch)", "speed": "provisional (speed)"}[s], e, q, b)
        for e, d, q, b, s in _direct(url, "SELECT * FROM serving_users_over_quota_1h")],
    "Alerts per hour by kind (UTC)": lambda url: _direct(
        url, "SELECT date_trunc('hour', created AT TIME ZONE 'UTC'), kind, count(*) FROM alerts GROUP BY 1, 2"),
}
FRESHNESS = "Stream freshness: seconds since the latest applied event (UTC)"


def test_every_chart_through_the_api_equals_postgres(superset, client):
    service, url, seeded = superset
    charts = _listed(client, "chart")
    assert {c["slice_name"] for c in charts} == {*EXPECTED, FRESHNESS}
    for chart in charts:
        result, = client.get(f"/api/v1/chart/{chart['id']}/data/")["result"]
        assert result["error"] is None, chart["slice_name"]
        rows = [tuple(_utc(v) if c == "date" else v for c, v in zip(result["colnames"], row.values()))
                for row in result["data"]]
        name = chart["slice_name"]
        if name == FRESHNESS:
            (lag,), = rows
            (expected,), = _direct(url, "SELECT extract(epoch FROM (now() AT TIME ZONE 'UTC') - max(max_event_time)) "
                                        "FROM streaming_batches")
            assert abs(lag - float(expected)) < 30  # both against their own now()
            continue
        expected = EXPECTED[name](url)
        assert rows, name
        assert sorted(rows, key=repr) == sorted(expected, key=repr), name
    # The charts cover both sources and the current, speed-only hour.
    hourly = {c["slice_name"]: c for c in charts}["Bytes per antenna per hour (UTC)"]
    hours = {_utc(r["date"]) for r in client.get(f"/api/v1/chart/{hourly['id']}/data/")["result"][0]["data"]}
    assert {seeded.current, *seeded.batched_hours, seeded.unbatched} <= hours


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium (installed when missing and we are root: the project's own setup step)."""
    if not CHROMIUM.exists() and os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True)
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    return CHROMIUM


def test_dashboard_renders_every_chart_in_chromium(superset, chromium):
    from playwright.sync_api import sync_playwright

    service, _, _ = superset
    charts = len([n for n in load_assets() if n.startswith("charts/")])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1500})
            page.goto(f"{service.url}/login/")
            page.fill("input[name=username], #username", ADMIN)
            page.fill("input[name=password], #password", service.admin_password())
            page.keyboard.press("Enter")
            page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
            page.goto(f"{service.url}/superset/dashboard/{DASHBOARD_SLUG}/?standalone=1")
            page.wait_for_selector(".dashboard-chart-id-1, [data-test-chart-id]", timeout=120_000)
            # Every chart holder has drawn: a non-empty canvas or svg, a table with rows, or a big number.
            page.wait_for_function(
                """(expected) => {
                    const holders = [...document.querySelectorAll('[data-test-chart-id]')];
                    if (holders.length !== expected) return false;
                    return holders.every(h => {
                        if (h.querySelector('.loading, [data-test=loading-indicator]')) return false;
                        const canvas = [...h.querySelectorAll('canvas')].some(c => c.width > 0 && c.height > 0);
                        const svg = [...h.querySelectorAll('svg')].some(s => s.querySelectorAll('path, rect, text').length > 5);
                        const table = h.querySelectorAll('table tbody tr').length > 0;
                        const number = /\\d/.test((h.querySelector('.header-line, .big-number') || {}).textContent || '');
                        return canvas || svg || table || number;
                    });
                }""", arg=charts, timeout=180_000)
            errors = page.locator("[data-test=chart-container] .alert-danger, .ant-alert-error, [role=alert]")
            assert errors.count() == 0, errors.all_inner_texts()
            page.wait_for_timeout(1500)  # let the charts' entry animations finish before the screenshot
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 50_000
