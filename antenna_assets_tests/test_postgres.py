"""The commit rule on a real PostgreSQL, for one-off transactions and the speed layer's kept connection."""

from __future__ import annotations

from contextlib import closing

import psycopg2
import pytest

from antenna_assets.postgres import KeptConnection, connect, transaction


def _backend(conn) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        return cur.fetchone()[0]


def _count(url: str) -> int:
    with closing(connect(url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM kept")
        return cur.fetchone()[0]


def _login(kept: KeptConnection) -> int:
    with kept.transaction() as conn:
        return _backend(conn)


def _insert(kept: KeptConnection, n: int) -> int:
    """Insert n in its own transaction; the backend it ran on."""
    with kept.transaction() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kept VALUES (%s)", (n,))
        return _backend(conn)


@pytest.fixture
def kept_table(serving_db):
    with transaction(serving_db) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kept (n INT PRIMARY KEY)")
    return serving_db


@pytest.fixture
def kept(kept_table):
    connection = KeptConnection(kept_table)
    yield connection
    connection.close()


def test_kept_connection_commits_each_transaction_on_one_login(kept, kept_table):
    backends = set()
    for n in range(3):
        backends.add(_insert(kept, n))
        assert _count(kept_table) == n + 1  # committed when the block ended
    assert len(backends) == 1


def test_kept_connection_rolls_back_a_failed_transaction_and_goes_on(kept, kept_table):
    first = _login(kept)
    with pytest.raises(psycopg2.errors.UniqueViolation), kept.transaction() as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO kept VALUES (1)")
        cur.execute("INSERT INTO kept VALUES (1)")
    assert _count(kept_table) == 0  # the first insert went with the failed transaction
    assert _insert(kept, 2) == first  # a failed statement does not cost a login
    assert _count(kept_table) == 1


def test_kept_connection_replaces_a_connection_the_server_dropped(kept, kept_table):
    dropped = _login(kept)
    with transaction(kept_table) as other, other.cursor() as cur:  # as a server restart would
        cur.execute("SELECT pg_terminate_backend(%s)", (dropped,))
    # The transaction that meets the dropped connection fails (the speed layer retries its batch) ...
    with pytest.raises(psycopg2.OperationalError):
        _insert(kept, 1)
    # ... and the next one logs in again.
    assert _insert(kept, 2) != dropped
    assert _count(kept_table) == 1


def test_whole_numerics_read_as_ints_and_fractions_as_decimals(serving_db):
    from decimal import Decimal

    with transaction(serving_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT (2::numeric ^ 70)::numeric(38, 0), (-5)::numeric(38, 0), 1.25::numeric, NULL::numeric")
        big, negative, fraction, null = cur.fetchone()
    assert (big, negative, null) == (2**70, -5, None) and type(big) is int and type(negative) is int
    assert fraction == Decimal("1.25") and isinstance(fraction, Decimal)
