"""The operators' `user_metadata` table: provisioning and hourly snapshots."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable

from psycopg2.extras import execute_values

from antenna_assets.serving.schema import CONTRACT_USERS, PROVISIONINGS, USER_METADATA, USER_METADATA_HOURLY
from antenna_assets.sources.users import PROVISIONED_USERS, User

_USER_COLUMNS = ", ".join(USER_METADATA.names)


def provision_users(conn) -> int:
    """Put the contract's 20 users in user_metadata once per database; after that the table is the
    operators' alone: a user they deleted is not brought back, an edited row is not overwritten.

    Returns how many rows were inserted (0 once the database was provisioned)."""
    with conn.cursor() as cur:
        # The record's key serializes two first provisionings: the second waits, then finds it.
        cur.execute(f"{PROVISIONINGS.insert_into(('name',))} VALUES (%s) ON CONFLICT (name) DO NOTHING "
                    "RETURNING name", (CONTRACT_USERS,))
        if cur.fetchone() is None:
            return 0
    return add_users(conn, PROVISIONED_USERS)


def add_users(conn, users: Iterable[User]) -> int:
    """Insert the users that are missing; an existing row (maybe edited by an operator) is kept.

    Returns how many rows were inserted.
    """
    rows = [tuple(u) for u in users]
    with conn.cursor() as cur:
        inserted = execute_values(
            cur,
            f"{USER_METADATA.insert_into()} VALUES %s ON CONFLICT (id) DO NOTHING RETURNING id",
            rows, fetch=True, page_size=5000,
        )
    return len(inserted)


def snapshot_hour(conn, hour: datetime, refresh: bool) -> tuple[int, bool]:
    """Record the live table as the snapshot in force for `hour`.

    An hour that already has a snapshot keeps it unless `refresh`, so re-running an old hour
    reproduces what it computed before. Returns (rows in the snapshot, whether it was taken now).
    """
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM user_metadata_hourly WHERE date = %s", (hour,))
        existing = cur.fetchone()[0]
        if existing and not refresh:
            return existing, False
        cur.execute("DELETE FROM user_metadata_hourly WHERE date = %s", (hour,))
        cur.execute(f"{USER_METADATA_HOURLY.insert_into(('date', *USER_METADATA.names))} "
                    f"SELECT %s, {_USER_COLUMNS} FROM user_metadata", (hour,))
        return cur.rowcount, True


def read_snapshot(conn, hour: datetime) -> list[tuple[str, str, str, int]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_USER_COLUMNS} FROM user_metadata_hourly WHERE date = %s ORDER BY id", (hour,))
        return cur.fetchall()


def read_live(conn) -> list[tuple[str, str, str, int]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {_USER_COLUMNS} FROM user_metadata ORDER BY id")
        return cur.fetchall()
