"""Idempotent writes to the serving tables."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Iterable

import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg2.extras import execute_values

from antenna_assets.serving.schema import TOTAL_BYTES, AggregateTable, Table


def add_to_totals(cur, table: AggregateTable, sums: pa.Table) -> None:
    """Add partial sums to the running totals of (key, date); a new key/window starts at the partial sum.

    `sums` has three columns: the key, the window start in epoch seconds, the bytes. They go through
    COPY into a temporary table and one INSERT ... ON CONFLICT: a backfill's micro-batch can carry
    hundreds of thousands of (key, window) rows, so no Python object is made per row.
    """
    if sums.num_rows == 0:
        return
    key, value = table.key, table.value
    staging = f"staging_{table.name}"
    cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {staging} (key TEXT, epoch BIGINT, value {TOTAL_BYTES}) "
                "ON COMMIT DELETE ROWS")
    buffer = io.BytesIO()
    pa_csv.write_csv(sums, buffer, pa_csv.WriteOptions(include_header=False))
    buffer.seek(0)
    cur.copy_expert(f"COPY {staging} FROM STDIN WITH (FORMAT csv)", buffer)
    cur.execute(
        f"{table.insert_into()} "
        f"SELECT key, to_timestamp(epoch) AT TIME ZONE 'UTC', value FROM {staging} "
        f"ON CONFLICT ({key}, date) DO UPDATE SET {value} = {table.name}.{value} + EXCLUDED.{value}")


def replace_window(cur, table: Table, start: datetime, end: datetime, rows: Iterable[tuple]) -> int:
    """Delete the rows of [start, end) and insert `rows` (all of `table`'s columns, in order) instead:
    a re-run leaves the same table."""
    cur.execute(f"DELETE FROM {table.name} WHERE date >= %s AND date < %s", (start, end))
    rows = list(rows)
    if rows:
        execute_values(cur, f"{table.insert_into()} VALUES %s", rows, page_size=5000)
    return len(rows)


def written_hours(cur, table: str, value: str, start: datetime, end: datetime) -> dict[datetime, tuple[int, int, int]]:
    """What `table` holds for the hours in [start, end), read back from PostgreSQL: per hour, its row
    count, the sum of `value` and the rows whose `value` is negative."""
    cur.execute(f"SELECT date_trunc('hour', date), count(*), sum({value}), count(*) FILTER (WHERE {value} < 0) "
                f"FROM {table} WHERE date >= %s AND date < %s GROUP BY 1", (start, end))
    return {hour: (int(rows), int(total), int(negative)) for hour, rows, total, negative in cur.fetchall()}
