"""The speed layer's ledger: what makes replays add nothing twice and lost checkpoints skip nothing.

Two records, both written in the transactions that change the speed tables and the lake:
- `streaming_batches`, one row per micro-batch of a checkpoint (query, checkpoint id, batch id):
  applied, then landed, with its counts, end offsets and event hours;
- `streaming_offsets`, per query and Kafka partition, the offsets below which every record is
  applied and landed. The speed layer filters each batch's records by these, so whatever the
  checkpoint (replayed, lost, replaced), a record is added once and landed once.

The writes here never commit: each is the whole of one `postgres.transaction` of the speed layer,
which commits when its block ends (the batch applied; the batch landed; a failure recorded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable, Sequence

import pyarrow as pa
from psycopg2.extras import execute_values

from antenna_assets.serving.schema import (DEAD_LETTER, LANDING_HOURS, STREAMING_BATCHES, STREAMING_FAILURES,
                                           STREAMING_OFFSETS, AggregateTable)
from antenna_assets.serving.writes import add_to_totals

# (topic, partition) -> first offset after the records a batch covers.
Offsets = dict[tuple[str, int], int]


@dataclass(frozen=True)
class BatchKey:
    query: str
    checkpoint_id: str
    batch_id: int

    def __str__(self) -> str:
        return f"micro-batch {self.batch_id} of query {self.query!r} (checkpoint {self.checkpoint_id})"


@dataclass(frozen=True)
class MicroBatchResult:
    key: BatchKey
    increments: dict[AggregateTable, pa.Table]  # per table: key, window start (epoch seconds), bytes
    # Pages of dead_letter rows (all its columns, in order), each one INSERT: a page is bounded by bytes,
    # and only one is in memory at a time (speed/dead_letters.py).
    dead_letters: Iterable[Sequence[tuple]]
    good_messages: int
    bad_messages: int
    late_messages: int
    max_event_time: datetime | None
    end_offsets: Offsets
    landed_hours: Sequence[datetime] = ()
    unknown_user_messages: int = 0  # for the stream's progress only; not stored


@dataclass(frozen=True)
class OffsetMarks:
    """Per (topic, partition): offsets below `applied` are in the speed tables, below `landed` in the lake."""

    applied: Offsets
    landed: Offsets


# What a writer supplies; the others are their defaults (applied_at, failed_at) or set later (landed_at).
_BATCH_COLUMNS = ("query", "checkpoint_id", "batch_id", "good_messages", "bad_messages", "late_messages",
                  "max_event_time", "end_offsets", "hours")
_FAILURE_COLUMNS = ("query", "checkpoint_id", "batch_id", "attempts", "offsets", "error")

APPLIED = "applied"  # its sums, dead letters and ledger row are committed; its lake files may be missing
LANDED = "landed"  # and its lake files are written


def _encode(offsets: Offsets) -> str:
    return json.dumps([[topic, partition, end] for (topic, partition), end in sorted(offsets.items())])


def _decode(encoded) -> Offsets:
    return {(topic, int(partition)): int(end) for topic, partition, end in (encoded or [])}


def describe_offsets(offsets: dict[tuple[str, int], tuple[int, int]]) -> str:
    """{(topic, partition): (first, last)} as `devices/0:100-199, devices/1:40-80`."""
    return ", ".join(f"{t}/{p}:{first}-{last}" for (t, p), (first, last) in sorted(offsets.items())) or "no records"


def batch_state(conn, key: BatchKey) -> str | None:
    """APPLIED, LANDED, or None for a batch never applied."""
    with conn.cursor() as cur:
        cur.execute("SELECT landed_at IS NOT NULL FROM streaming_batches "
                    "WHERE query = %s AND checkpoint_id = %s AND batch_id = %s",
                    (key.query, key.checkpoint_id, key.batch_id))
        row = cur.fetchone()
    return None if row is None else LANDED if row[0] else APPLIED


def offset_marks(conn, query: str) -> OffsetMarks:
    with conn.cursor() as cur:
        cur.execute("SELECT topic, kafka_partition, applied_until, landed_until FROM streaming_offsets WHERE query = %s",
                    (query,))
        rows = cur.fetchall()
    return OffsetMarks(applied={(t, p): a for t, p, a, _ in rows}, landed={(t, p): lnd for t, p, _, lnd in rows})


def max_event_time(conn, query: str) -> datetime | None:
    """The latest watermark time (event time, capped by the record's Kafka time) of any applied batch:
    the base of the watermark."""
    with conn.cursor() as cur:
        cur.execute("SELECT max(max_event_time) FROM streaming_batches WHERE query = %s", (query,))
        return cur.fetchone()[0]


def _advance(cur, query: str, offsets: Offsets, column: str) -> None:
    if not offsets:
        return
    # Both marks start at the first batch's end: its records are applied and, once it lands, landed.
    execute_values(
        cur,
        f"{STREAMING_OFFSETS.insert_into()} VALUES %s "
        f"ON CONFLICT (query, topic, kafka_partition) DO UPDATE SET {column} = "
        f"GREATEST(streaming_offsets.{column}, EXCLUDED.{column})",
        [(query, topic, partition, end, end if column == "landed_until" else 0)
         for (topic, partition), end in offsets.items()],
    )


def mark_landed(conn, key: BatchKey) -> None:
    """Record that the applied batch's lake files are written: its row, its offsets, its hours (one transaction)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE streaming_batches SET landed_at = now() AT TIME ZONE 'UTC' "
                    "WHERE query = %s AND checkpoint_id = %s AND batch_id = %s RETURNING end_offsets, hours",
                    (key.query, key.checkpoint_id, key.batch_id))
        end_offsets, hours = cur.fetchone()
        _advance(cur, key.query, _decode(end_offsets), "landed_until")
        if hours:
            execute_values(
                cur,
                f"{LANDING_HOURS.insert_into(('hour',))} VALUES %s "
                "ON CONFLICT (hour) DO UPDATE SET last_batch_at = now() AT TIME ZONE 'UTC'",
                [(hour,) for hour in hours],
            )


def apply_micro_batch(conn, result: MicroBatchResult) -> bool:
    """In one transaction: record the batch, add its partial sums, store its dead letters, advance
    the applied offsets.

    Returns False (and changes nothing) when the batch was already applied: its ledger row exists,
    so the insert did nothing and nothing else is written.
    """
    key = result.key
    with conn.cursor() as cur:
        cur.execute(
            f"{STREAMING_BATCHES.insert_into(_BATCH_COLUMNS)} VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::timestamp[]) "
            "ON CONFLICT DO NOTHING RETURNING batch_id",
            (key.query, key.checkpoint_id, key.batch_id, result.good_messages, result.bad_messages,
             result.late_messages, result.max_event_time, _encode(result.end_offsets), list(result.landed_hours)),
        )
        if cur.fetchone() is None:
            return False
        for table, rows in result.increments.items():
            add_to_totals(cur, table, rows)
        for page in result.dead_letters:
            execute_values(cur, f"{DEAD_LETTER.insert_into()} VALUES %s ON CONFLICT DO NOTHING", page,
                           page_size=len(page))
        _advance(cur, key.query, result.end_offsets, "applied_until")
    return True


def record_failure(conn, key: BatchKey, attempts: int, offsets: str, error: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"{STREAMING_FAILURES.insert_into(_FAILURE_COLUMNS)} VALUES (%s, %s, %s, %s, %s, %s)",
                    (key.query, key.checkpoint_id, key.batch_id, attempts, offsets, error))
