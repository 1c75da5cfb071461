"""The serving layer on a real PostgreSQL: lambda views row by row, and the read-only role."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import psycopg2
import pytest

from antenna_assets.batch.layer import write_hourly_tables
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.serving.migration import migrate
from antenna_assets.errors import StackError
from antenna_assets.postgres import connect
from antenna_assets_tests.serving_seed import HOUR, RENAMED_EMAIL, UNKNOWN_ID, Seeded, fill_serving

NOW = datetime(2026, 11, 29, 3, 37)


def _expected_lambda(seeded: Seeded, speed_rows: dict, batch_rows: list, email_of=None):
    expected = {(k, d): (v, "batch", None) for k, d, v in batch_rows}
    summed = defaultdict(int)
    for (key, window), value in speed_rows.items():
        hour = window.replace(minute=0)
        if hour in seeded.batched_hours:
            continue
        if email_of is not None:
            if key not in email_of:
                continue
            key = email_of[key]
        summed[(key, hour)] += value
    expected.update({k: (v, "speed", seeded.latest_event) for k, v in summed.items()})
    return expected


def _rows(conn, sql: str) -> list[tuple]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


@pytest.fixture(scope="module")
def lambda_db(settings):
    from antenna_assets_tests.conftest import fresh_database

    with fresh_database(settings) as url:
        conn = connect(url)
        seeded = fill_serving(conn, NOW)
        migrate(conn)  # a second migration replaces the views and keeps every row
        yield conn, seeded, url
        conn.close()


def test_lambda_views_row_by_row(lambda_db):
    conn, seeded, _ = lambda_db
    speed, batch = seeded.speed, seeded.batch
    live = dict(_rows(conn, "SELECT id, email FROM user_metadata"))
    quotas = {}
    for email, quota in _rows(conn, "SELECT email, quota FROM user_metadata"):
        quotas[email] = max(quota, quotas.get(email, 0))
    cases = {
        "serving_antenna_1h": _expected_lambda(seeded, speed[BYTES_AGG_ANTENNA], batch["bytes_agg_antenna_1h"]),
        "serving_user_1h": _expected_lambda(seeded, speed[BYTES_AGG_USER], batch["bytes_agg_user_1h"], email_of=live),
        "serving_app_1h": _expected_lambda(seeded, speed[BYTES_AGG_APP], batch["bytes_agg_app_1h"]),
    }
    for view, expected in cases.items():
        actual = {(k, d): (v, s, t) for k, d, v, s, t in _rows(conn, f"SELECT * FROM {view}")}
        assert actual == expected, view
        assert {s for _, s, _ in actual.values()} == {"batch", "speed"}
    users = cases["serving_user_1h"]
    assert (RENAMED_EMAIL, seeded.current) in users, "speed rows map ids through the live user_metadata"
    assert not any(k == UNKNOWN_ID for k, _ in users)

    over = {(e, d): (q, b, s) for e, d, q, b, s in _rows(conn, "SELECT * FROM serving_users_over_quota_1h")}
    expected_over = {(e, d): (q, b, "batch") for e, d, q, b in batch["users_over_quota_1h"]}
    expected_over.update({(e, d): (quotas[e], b, "speed") for (e, d), (b, source, _) in users.items()
                          if source == "speed" and b > quotas[e]})
    assert over == expected_over
    assert not any(d == seeded.batched_hours[1] for _, d in over), "a batch-final hour with nobody over quota stays empty"
    assert {d for (_, d), (_, _, s) in over.items() if s == "speed"} == {seeded.unbatched, seeded.current}

    diff = _rows(conn, "SELECT date, batch_bytes, speed_bytes FROM serving_speed_vs_batch_1h ORDER BY date")
    assert diff == [(h, sum(v for _, d, v in batch["bytes_agg_antenna_1h"] if d == h),
                     sum(v for (_, w), v in speed[BYTES_AGG_ANTENNA].items() if w.replace(minute=0) == h))
                    for h in seeded.batched_hours]

    dead = _rows(conn, "SELECT reason, sum(messages) FROM serving_dead_letters_5m GROUP BY 1 ORDER BY 1")
    assert dead == sorted(_rows(conn, "SELECT reason, count(*) FROM dead_letter GROUP BY 1"))
    (latest, lag), = _rows(conn, "SELECT latest_event_time, lag_seconds FROM serving_stream_freshness")
    assert latest == seeded.latest_event and lag > 0


def test_batch_rerun_keeps_one_final_mark(lambda_db):
    conn, seeded, _ = lambda_db
    before = _rows(conn, "SELECT table_name, date FROM batch_hours ORDER BY 1, 2")
    hour = seeded.batched_hours[0]
    write_hourly_tables(conn, {name: [r for r in table if r[1] == hour] for name, table in seeded.batch.items()},
                        hour, hour + HOUR)
    conn.commit()
    assert _rows(conn, "SELECT table_name, date FROM batch_hours ORDER BY 1, 2") == before
    assert len(before) == 4 * len(seeded.batched_hours)


def test_migration_marks_hours_batched_before_it(settings):
    """A serving database from before batch_hours: its batch rows stay final, not doubled by speed rows."""
    from antenna_assets_tests.conftest import fresh_database

    hour = NOW.replace(minute=0)
    with fresh_database(settings) as url:
        conn = connect(url)
        with conn.cursor() as cur:
            cur.execute("DROP TABLE batch_hours CASCADE")
            cur.execute("DROP TABLE schema_version")  # older databases have no version mark
            cur.execute("INSERT INTO bytes_agg_app_1h VALUES ('WHATSAPP', %s, 10)", (hour,))
            cur.execute("INSERT INTO bytes_agg_app VALUES ('WHATSAPP', %s, 3)", (hour,))
        conn.commit()
        migrate(conn)
        assert _rows(conn, "SELECT app, sum_app_bytes, source FROM serving_app_1h") == [("WHATSAPP", 10, "batch")]
        conn.close()


def test_reader_role_reads_serving_only_and_cannot_write(settings, lambda_db):
    from antenna_assets.serving.roles import READER_ROLE, ensure_reader_role

    _, seeded, url = lambda_db
    reader_url = ensure_reader_role(settings.replace(postgres_url=url), private_databases=(settings.dagster_db,))
    again = ensure_reader_role(settings.replace(postgres_url=url), private_databases=(settings.dagster_db,))
    assert again == reader_url and READER_ROLE in reader_url
    reader = connect(reader_url)
    try:
        assert len(_rows(reader, "SELECT * FROM serving_antenna_1h")) > 0
        assert _rows(reader, "SELECT count(*) FROM serving_dead_letters_5m")[0][0] > 0
        reader.rollback()
        refused = [
            "INSERT INTO bytes_agg_antenna VALUES ('x', now(), 1)",
            "SET TRANSACTION READ WRITE; INSERT INTO bytes_agg_antenna VALUES ('x', now(), 1)",
            "SET TRANSACTION READ WRITE; DELETE FROM bytes_agg_antenna_1h",
            "SET TRANSACTION READ WRITE; CREATE TABLE mine (x int)",
            "SELECT raw_value FROM dead_letter",
            "SELECT * FROM user_metadata",
            "SELECT * FROM streaming_batches",
        ]
        for statement in refused:
            with pytest.raises((psycopg2.errors.InsufficientPrivilege, psycopg2.errors.ReadOnlySqlTransaction)):
                _rows(reader, statement)
            reader.rollback()
    finally:
        reader.close()
    with pytest.raises(StackError, match="permission denied|not permitted"):
        connect(settings.replace(postgres_url=reader_url).postgres_url_for(settings.dagster_db)).close()


def test_serving_views_asset_records_rows_per_source_and_links_the_dashboard(lambda_db):
    import dagster as dg

    from antenna_assets.assets.serving import ANTENNA_USAGE_DASHBOARD, DASHBOARD_URL, serving_views
    from antenna_assets.resources import PostgresResource

    conn, _, url = lambda_db
    result = dg.materialize([serving_views], resources={"postgres": PostgresResource(url=url)})
    assert result.success
    metadata = {m.asset_key.path[-1]: m.metadata for m in result.get_asset_materialization_events()
                for m in [m.event_specific_data.materialization]}
    expected = dict(_rows(conn, "SELECT source, count(*) FROM serving_antenna_1h GROUP BY 1"))
    assert metadata["serving_antenna_1h"]["batch_rows"].value == expected["batch"]
    assert metadata["serving_antenna_1h"]["speed_rows"].value == expected["speed"]
    assert metadata["serving_stream_freshness"]["rows"].value == 1
    assert metadata["serving_user_1h"]["dashboard"].value == DASHBOARD_URL
    assert ANTENNA_USAGE_DASHBOARD.metadata["dashboard"].value.endswith("/superset/dashboard/antenna-usage/")
