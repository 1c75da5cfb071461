"""The serving layer on a real PostgreSQL: lambda views row by row, and the read-only role."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import datetime, timedelta

import pytest

from antenna_assets.batch_layer import write_hourly_tables
from antenna_assets.db.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER, migrate
from antenna_assets.stack.postgres import connect
from antenna_assets.users import PROVISIONED_USERS

HOUR = timedelta(hours=1)
NOW = datetime(2026, 11, 29, 3, 37)
CURRENT = NOW.replace(minute=0)
# Two batch-final hours between a closed hour the batch has not done yet and the current hour.
UNBATCHED, FINAL_1, FINAL_2 = CURRENT - 3 * HOUR, CURRENT - 2 * HOUR, CURRENT - HOUR
SPEED_HOURS = (UNBATCHED, FINAL_1, FINAL_2, CURRENT)
BATCHED_HOURS = (FINAL_1, FINAL_2)
ANTENNAS = [f"antenna-{n}" for n in range(3)]
APPS = ["WHATSAPP", "FACEBOOK", "TWITTER"]
UNKNOWN_ID = "not-a-provisioned-user"
LATEST_EVENT = NOW - timedelta(minutes=1)


def _fill(conn, seed: int = 7):
    """Speed rows in 5-minute windows for every hour (up to the current minute), batch rows for the
    batch-final hours (deliberately different from the speed sums, as after late events), and one
    user edit after the batch ran. Returns what was written, for the expectations."""
    rng = random.Random(seed)
    users = PROVISIONED_USERS[:6]
    speed = {BYTES_AGG_ANTENNA: {}, BYTES_AGG_USER: {}, BYTES_AGG_APP: {}}
    keys = {BYTES_AGG_ANTENNA: ANTENNAS, BYTES_AGG_USER: [u.id for u in users] + [UNKNOWN_ID], BYTES_AGG_APP: APPS}
    for hour in SPEED_HOURS:
        for minute in range(0, 60, 5):
            window = hour + timedelta(minutes=minute)
            if window > NOW:
                break
            for table, table_keys in keys.items():
                for key in table_keys:
                    # Users 0 and 1 go far over their quota in every hour.
                    heavy = table is BYTES_AGG_USER and key in (users[0].id, users[1].id)
                    speed[table][(key, window)] = rng.randint(0, 9999) + (200_000 if heavy else 0)
    batch = {
        "bytes_agg_antenna_1h": [(a, h, rng.randint(0, 10**6)) for a in ANTENNAS for h in BATCHED_HOURS],
        "bytes_agg_user_1h": [(u.email, h, rng.randint(0, 10**6)) for u in users for h in BATCHED_HOURS],
        "bytes_agg_app_1h": [(a, h, rng.randint(0, 10**6)) for a in APPS[:2] for h in BATCHED_HOURS],
        # FINAL_2 has nobody over quota: final all the same.
        "users_over_quota_1h": [(users[0].email, FINAL_1, users[0].quota, users[0].quota + 5)],
    }
    with conn.cursor() as cur:
        for table, rows in speed.items():
            cur.executemany(f"INSERT INTO {table.name} VALUES (%s, %s, %s)", [(k, d, v) for (k, d), v in rows.items()])
        cur.execute("INSERT INTO streaming_batches (query, batch_id, good_messages, bad_messages, late_messages, "
                    "max_event_time) VALUES ('speed_layer', 0, 1, 0, 0, %s), ('speed_layer', 1, 1, 0, 0, %s)",
                    (LATEST_EVENT - HOUR, LATEST_EVENT))
    for hour in BATCHED_HOURS:  # one batch run per hour, through the batch layer's own writer
        write_hourly_tables(conn, {name: [r for r in rows if r[1] == hour] for name, rows in batch.items()}, hour, hour + HOUR)
        conn.commit()
    with conn.cursor() as cur:  # an operator's edit after the batch: the speed rows use the live table
        cur.execute("UPDATE user_metadata SET email = 'renamed@example.com', quota = 1000 WHERE id = %s", (users[2].id,))
    conn.commit()
    return speed, batch


def _expected_lambda(speed_rows: dict, batch_rows: list, email_of=None):
    expected = {(k, d): (v, "batch", None) for k, d, v in batch_rows}
    summed = defaultdict(int)
    for (key, window), value in speed_rows.items():
        hour = window.replace(minute=0)
        if hour in BATCHED_HOURS:
            continue
        if email_of is not None:
            if key not in email_of:
                continue
            key = email_of[key]
        summed[(key, hour)] += value
    expected.update({k: (v, "speed", LATEST_EVENT) for k, v in summed.items()})
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
        written = _fill(conn)
        migrate(conn)  # a second migration replaces the views and keeps every row
        yield conn, written
        conn.close()


def test_lambda_views_row_by_row(lambda_db):
    conn, (speed, batch) = lambda_db
    live = dict(_rows(conn, "SELECT id, email FROM user_metadata"))
    quotas = {}
    for email, quota in _rows(conn, "SELECT email, quota FROM user_metadata"):
        quotas[email] = max(quota, quotas.get(email, 0))
    cases = {
        "serving_antenna_1h": _expected_lambda(speed[BYTES_AGG_ANTENNA], batch["bytes_agg_antenna_1h"]),
        "serving_user_1h": _expected_lambda(speed[BYTES_AGG_USER], batch["bytes_agg_user_1h"], email_of=live),
        "serving_app_1h": _expected_lambda(speed[BYTES_AGG_APP], batch["bytes_agg_app_1h"]),
    }
    for view, expected in cases.items():
        actual = {(k, d): (v, s, t) for k, d, v, s, t in _rows(conn, f"SELECT * FROM {view}")}
        assert actual == expected, view
        assert {s for _, s, _ in actual.values()} == {"batch", "speed"}
    users = cases["serving_user_1h"]
    assert ("renamed@example.com", CURRENT) in users, "speed rows map ids through the live user_metadata"
    assert not any(k == UNKNOWN_ID for k, _ in users)

    over = {(e, d): (q, b, s) for e, d, q, b, s in _rows(conn, "SELECT * FROM serving_users_over_quota_1h")}
    expected_over = {(e, d): (q, b, "batch") for e, d, q, b in batch["users_over_quota_1h"]}
    expected_over.update({(e, d): (quotas[e], b, "speed") for (e, d), (b, source, _) in users.items()
                          if source == "speed" and b > quotas[e]})
    assert over == expected_over
    assert not any(d == FINAL_2 for _, d in over), "a batch-final hour with nobody over quota stays empty"
    assert {d for (_, d), (_, _, s) in over.items() if s == "speed"} == {UNBATCHED, CURRENT}

    diff = _rows(conn, "SELECT date, batch_bytes, speed_bytes FROM serving_speed_vs_batch_1h ORDER BY date")
    assert diff == [(h, sum(v for _, d, v in batch["bytes_agg_antenna_1h"] if d == h),
                     sum(v for (_, w), v in speed[BYTES_AGG_ANTENNA].items() if w.replace(minute=0) == h))
                    for h in BATCHED_HOURS]


def test_batch_rerun_keeps_one_final_mark(lambda_db):
    conn, (_, batch) = lambda_db
    before = _rows(conn, "SELECT table_name, date FROM batch_hours ORDER BY 1, 2")
    rows = {name: [r for r in table if r[1] == FINAL_1] for name, table in batch.items()}
    write_hourly_tables(conn, rows, FINAL_1, FINAL_1 + HOUR)
    conn.commit()
    assert _rows(conn, "SELECT table_name, date FROM batch_hours ORDER BY 1, 2") == before
    assert len(before) == 4 * len(BATCHED_HOURS)


def test_migration_marks_hours_batched_before_it(settings):
    """A serving database from before batch_hours: its batch rows stay final, not doubled by speed rows."""
    from antenna_assets_tests.conftest import fresh_database

    with fresh_database(settings) as url:
        conn = connect(url)
        with conn.cursor() as cur:
            cur.execute("DROP TABLE batch_hours CASCADE")
            cur.execute("INSERT INTO bytes_agg_app_1h VALUES ('WHATSAPP', %s, 10)", (FINAL_1,))
            cur.execute("INSERT INTO bytes_agg_app VALUES ('WHATSAPP', %s, 3)", (FINAL_1,))
        conn.commit()
        migrate(conn)
        assert _rows(conn, "SELECT app, sum_app_bytes, source FROM serving_app_1h") == [("WHATSAPP", 10, "batch")]
        conn.close()
