"""The speed layer's ledger of applied micro-batches: what makes replays add nothing twice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Sequence

import pyarrow as pa
from psycopg2.extras import execute_values

from antenna_assets.db.schema import AggregateTable
from antenna_assets.db.serving import add_to_totals


@dataclass(frozen=True)
class MicroBatchResult:
    query: str
    batch_id: int
    increments: dict[AggregateTable, pa.Table]  # per table: key, window start (epoch seconds), bytes
    dead_letters: Sequence[tuple]
    good_messages: int
    bad_messages: int
    late_messages: int
    max_event_time: datetime | None
    landed_hours: Sequence[datetime] = ()
    unknown_user_messages: int = 0  # for the stream's progress only; not stored


APPLIED = "applied"  # its sums, dead letters and ledger row are committed; its lake files may be missing
LANDED = "landed"  # and its lake files are written


def batch_state(conn, query: str, batch_id: int) -> str | None:
    """APPLIED, LANDED, or None for a batch never applied."""
    with conn.cursor() as cur:
        cur.execute("SELECT landed_at IS NOT NULL FROM streaming_batches WHERE query = %s AND batch_id = %s",
                    (query, batch_id))
        row = cur.fetchone()
    return None if row is None else LANDED if row[0] else APPLIED


def mark_landed(conn, query: str, batch_id: int) -> None:
    """Record that the applied batch's lake files are written."""
    with conn.cursor() as cur:
        cur.execute("UPDATE streaming_batches SET landed_at = now() AT TIME ZONE 'UTC' "
                    "WHERE query = %s AND batch_id = %s", (query, batch_id))
    conn.commit()


def max_event_time(conn, query: str) -> datetime | None:
    """The latest event time of any applied batch: the base of the watermark."""
    with conn.cursor() as cur:
        cur.execute("SELECT max(max_event_time) FROM streaming_batches WHERE query = %s", (query,))
        return cur.fetchone()[0]


def apply_micro_batch(conn, result: MicroBatchResult) -> bool:
    """In one transaction: record the batch id, add its partial sums, store its dead letters, note
    the hours it landed.

    Returns False (and changes nothing) when the batch id was already applied.
    """
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO streaming_batches (query, batch_id, good_messages, bad_messages, late_messages, max_event_time) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING batch_id",
            (result.query, result.batch_id, result.good_messages, result.bad_messages, result.late_messages,
             result.max_event_time),
        )
        if cur.fetchone() is None:
            conn.rollback()
            return False
        for table, rows in result.increments.items():
            add_to_totals(cur, table, rows)
        if result.dead_letters:
            execute_values(
                cur,
                "INSERT INTO dead_letter (topic, kafka_partition, kafka_offset, raw_value, reason, kafka_timestamp, "
                "ingest_time) VALUES %s ON CONFLICT DO NOTHING",
                result.dead_letters, page_size=5000,
            )
        if result.landed_hours:
            execute_values(
                cur,
                "INSERT INTO landing_hours (hour) VALUES %s "
                "ON CONFLICT (hour) DO UPDATE SET last_batch_at = now() AT TIME ZONE 'UTC'",
                [(hour,) for hour in result.landed_hours],
            )
    conn.commit()
    return True
