"""Idempotent writes to the serving tables."""

from __future__ import annotations

from datetime import datetime
from typing import Iterable, Sequence

from psycopg2.extras import execute_values

from antenna_assets.db.schema import AggregateTable


def add_to_totals(cur, table: AggregateTable, rows: Sequence[tuple[str, datetime, int]]) -> None:
    """Add partial sums to the running totals of (key, date); a new key/window starts at the partial sum."""
    if not rows:
        return
    key, _, value = table.columns
    execute_values(
        cur,
        f"INSERT INTO {table.name} ({key}, date, {value}) VALUES %s "
        f"ON CONFLICT ({key}, date) DO UPDATE SET {value} = {table.name}.{value} + EXCLUDED.{value}",
        rows, page_size=5000,
    )


def replace_window(cur, table: str, columns: Sequence[str], start: datetime, end: datetime,
                   rows: Iterable[tuple]) -> int:
    """Delete the rows of [start, end) and insert `rows` instead: a re-run leaves the same table."""
    cur.execute(f"DELETE FROM {table} WHERE date >= %s AND date < %s", (start, end))
    rows = list(rows)
    if rows:
        execute_values(cur, f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s", rows, page_size=5000)
    return len(rows)
