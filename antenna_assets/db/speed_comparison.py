"""Reads of the speed tables for the batch layer's lambda check."""

from __future__ import annotations

from datetime import datetime

from antenna_assets.db.schema import AggregateTable


def hourly_sums_from_speed(conn, table: AggregateTable, start: datetime, end: datetime) -> dict[tuple[str, datetime], int]:
    """The speed table's 5-minute totals in [start, end) rolled up to (key, hour)."""
    key, _, value = table.columns
    with conn.cursor() as cur:
        cur.execute(f"SELECT {key}, date_trunc('hour', date), sum({value}) FROM {table.name} "
                    "WHERE date >= %s AND date < %s GROUP BY 1, 2", (start, end))
        return {(k, hour): int(total) for k, hour, total in cur.fetchall()}


def stream_progress(conn) -> datetime | None:
    """The latest event time the speed layer has committed to its tables and the lake, over all its queries."""
    with conn.cursor() as cur:
        cur.execute("SELECT max(max_event_time) FROM streaming_batches WHERE landed_at IS NOT NULL")
        return cur.fetchone()[0]


def landed_hours(conn, start: datetime, end: datetime) -> list[datetime]:
    """The hours in [start, end) that the speed layer has landed any message for."""
    with conn.cursor() as cur:
        cur.execute("SELECT hour FROM landing_hours WHERE hour >= %s AND hour < %s ORDER BY hour", (start, end))
        return [row[0] for row in cur.fetchall()]
