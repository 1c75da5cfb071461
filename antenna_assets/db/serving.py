"""Idempotent writes to the serving tables."""

from __future__ import annotations

import csv
import io

from datetime import datetime
from typing import Iterable, Sequence

from psycopg2.extras import execute_values

from antenna_assets.db.schema import AggregateTable


def add_to_totals(cur, table: AggregateTable, rows: Sequence[tuple[str, datetime, int]]) -> None:
    """Add partial sums to the running totals of (key, date); a new key/window starts at the partial sum.

    Rows go through COPY into a temporary table and one INSERT ... ON CONFLICT: a backfill's
    micro-batch can carry hundreds of thousands of (key, window) rows.
    """
    if not rows:
        return
    key, _, value = table.columns
    staging = f"staging_{table.name}"
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (LIKE {table.name}) ON COMMIT DELETE ROWS")
    buffer = io.StringIO()
    csv.writer(buffer).writerows((k, d.isoformat(sep=" "), v) for k, d, v in rows)
    buffer.seek(0)
    cur.copy_expert(f"COPY {staging} ({key}, date, {value}) FROM STDIN WITH (FORMAT csv)", buffer)
    cur.execute(
        f"INSERT INTO {table.name} ({key}, date, {value}) SELECT {key}, date, {value} FROM {staging} "
        f"ON CONFLICT ({key}, date) DO UPDATE SET {value} = {table.name}.{value} + EXCLUDED.{value}")


def replace_window(cur, table: str, columns: Sequence[str], start: datetime, end: datetime,
                   rows: Iterable[tuple]) -> int:
    """Delete the rows of [start, end) and insert `rows` instead: a re-run leaves the same table."""
    cur.execute(f"DELETE FROM {table} WHERE date >= %s AND date < %s", (start, end))
    rows = list(rows)
    if rows:
        execute_values(cur, f"INSERT INTO {table} ({', '.join(columns)}) VALUES %s", rows, page_size=5000)
    return len(rows)
