"""What the batch layer reads of the speed layer's bookkeeping: the lambda check's sums, the landed hours."""

from __future__ import annotations

from datetime import datetime

from antenna_assets.serving.schema import COMPACTED_HOURS, AggregateTable


def hourly_sums_from_speed(conn, table: AggregateTable, start: datetime, end: datetime) -> dict[tuple[str, datetime], int]:
    """The speed table's 5-minute totals in [start, end) rolled up to (key, hour)."""
    key, value = table.key, table.value
    with conn.cursor() as cur:
        cur.execute(f"SELECT {key}, date_trunc('hour', date), sum({value}) FROM {table.name} "
                    "WHERE date >= %s AND date < %s GROUP BY 1, 2", (start, end))
        return {(k, hour): int(total) for k, hour, total in cur.fetchall()}


def landed_hours(conn, start: datetime, end: datetime) -> list[tuple[datetime, bool]]:
    """The hours in [start, end) that the speed layer has landed any message for, each with whether
    it is stale: never compacted, or data landed for it after its last compaction read the landing."""
    with conn.cursor() as cur:
        cur.execute("SELECT l.hour, c.hour IS NULL OR l.last_batch_at > c.landed_through "
                    "FROM landing_hours l LEFT JOIN compacted_hours c ON c.hour = l.hour "
                    "WHERE l.hour >= %s AND l.hour < %s ORDER BY l.hour", (start, end))
        return cur.fetchall()


def landing_marks(conn, hours) -> dict[datetime, datetime]:
    """When data last landed for each of `hours` (those that have any)."""
    with conn.cursor() as cur:
        cur.execute("SELECT hour, last_batch_at FROM landing_hours WHERE hour = ANY(%s)", (list(hours),))
        return dict(cur.fetchall())


def record_compaction(conn, landed_through: dict[datetime, datetime | None], hours) -> None:
    """raw_devices compacted `hours`, having read the landing as of `landed_through` (per hour)."""
    with conn.cursor() as cur:
        for hour in hours:
            cur.execute(f"{COMPACTED_HOURS.insert_into(('hour', 'landed_through'))} VALUES (%s, %s) "
                        "ON CONFLICT (hour) DO UPDATE "
                        "SET landed_through = EXCLUDED.landed_through, compacted_at = now() AT TIME ZONE 'UTC'",
                        (hour, landed_through.get(hour)))
