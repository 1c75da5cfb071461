"""`antenna demo`, the quickstart's first command, on the test stack: it runs end to end, its tables
equal the simulator's ground truth, and a second run sends nothing twice and changes no table."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest

from antenna_assets.hours import utc_now
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP, BYTES_AGG_APP_1H
from antenna_assets.sources.simulator import GroundTruth
from antenna_assets_tests.test_dagster_cli import OUTDATED
from antenna_assets_tests.truth import expected, query, read_table

# A closed hour within every retention setting's reach (the 5-minute rows are kept 7 days), so the demo's
# retention run has nothing to remove, as the quickstart promises.
FIRST_HOUR = utc_now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
TABLES = ((BYTES_AGG_ANTENNA, "antenna", False), (BYTES_AGG_APP, "app", False),
          (BYTES_AGG_ANTENNA_1H, "antenna", True), (BYTES_AGG_APP_1H, "app", True))


def _demo(env: dict[str, str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "antenna_assets.cli", "demo", "--hours", "1",
                           "--first-hour", f"{FIRST_HOUR:%Y-%m-%d-%H}:00", "--live-minutes", "0", "--no-ui",
                           "--no-superset"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The quickstart's command prints no superseded or deprecated Dagster command or API.
    assert not OUTDATED.search(proc.stdout + proc.stderr), OUTDATED.search(proc.stdout + proc.stderr)
    return proc.stdout


def _snapshot(url: str) -> dict[str, object]:
    return {table.name: read_table(url, table) for table, _, _ in TABLES} | {
        "users_over_quota_1h": query(url, "SELECT email, date, quota, sum_user_bytes FROM users_over_quota_1h ORDER BY 1, 2"),
        "dead_letter": query(url, "SELECT count(*) FROM dead_letter")}


@pytest.mark.slow
def test_demo_runs_end_to_end_and_a_rerun_sends_nothing_twice(settings, topic, serving_db, tmp_path):
    env = {**os.environ, "ANTENNA_TOPIC": topic, "ANTENNA_POSTGRES_URL": serving_db,
           "ANTENNA_LAKE_ROOT": str(tmp_path / "lake")}
    first = _demo(env)
    assert "FAILED" not in first and first.count(": passed") == 13, first
    assert "users_over_quota_1h (" in first and "dead_letter (" in first
    assert "nothing to remove: every store is within its retention" in first
    truth = GroundTruth.from_json(settings.stack_dir / f"demo-ground-truth-{FIRST_HOUR:%Y%m%d%H}.json")
    assert f"good messages: {truth.messages}, dead letters: {truth.malformed}" in first
    for table, per, hourly in TABLES:
        assert read_table(serving_db, table) == expected(truth, per, hourly=hourly), table.name
    tables = _snapshot(serving_db)

    again = _demo(env)
    assert "1 of these hour(s) already sent" in again
    assert "good messages: 0, dead letters: 0" in again
    assert "FAILED" not in again and again.count(": passed") == 13, again
    assert _snapshot(serving_db) == tables
