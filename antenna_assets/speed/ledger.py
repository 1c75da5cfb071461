"""The speed layer's ledger: what makes replays add nothing twice and lost checkpoints skip nothing.

Two records, both written in the transactions that change the speed tables and the lake:
- `streaming_batches`, one row per micro-batch of a checkpoint (query, checkpoint id, batch id):
  applied, then landed, with its counts, end offsets and event hours;
- `streaming_offsets`, per query and Kafka partition, the offsets below which every record is
  applied and landed. The speed layer filters each batch's records by these, so whatever the
  checkpoint (replayed, lost, replaced), a record is added once and landed once. The marks are of
  one topic as Kafka identifies it (cluster id, topic id), checked against Kafka before they are
  used (`verify_topic`): a topic recreated under the same name is never filtered by the old one's.
And, before a batch is applied, `streaming_batch_clocks`: the stream's clock when it was first planned.

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

from antenna_assets.kafka_client import TopicIdentity, TopicState
from antenna_assets.serving.schema import (DEAD_LETTER, LANDING_HOURS, STREAMING_BATCH_CLOCKS, STREAMING_BATCHES,
                                           STREAMING_FAILURES, STREAMING_OFFSETS, AggregateTable)
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
    identity: TopicIdentity  # of the topic the end offsets are in
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
_OFFSET_COLUMNS = ("query", "topic", "kafka_partition", "applied_until", "landed_until", "kafka_cluster_id",
                   "kafka_topic_id")

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


def unlanded_batches(conn, query: str) -> list[tuple[BatchKey, Offsets]]:
    """The query's applied batches without their lake files, oldest first, with their end offsets."""
    with conn.cursor() as cur:
        cur.execute("SELECT checkpoint_id, batch_id, end_offsets FROM streaming_batches "
                    "WHERE query = %s AND landed_at IS NULL ORDER BY applied_at, batch_id", (query,))
        return [(BatchKey(query, checkpoint_id, batch_id), _decode(end_offsets))
                for checkpoint_id, batch_id, end_offsets in cur.fetchall()]


def offset_marks(conn, query: str, identity: TopicIdentity) -> OffsetMarks:
    """The query's marks of the topic with this identity (`verify_topic` checked them)."""
    with conn.cursor() as cur:
        cur.execute("SELECT topic, kafka_partition, applied_until, landed_until FROM streaming_offsets "
                    "WHERE query = %s AND kafka_cluster_id = %s AND kafka_topic_id = %s",
                    (query, identity.cluster_id, identity.topic_id))
        rows = cur.fetchall()
    return OffsetMarks(applied={(t, p): a for t, p, a, _ in rows}, landed={(t, p): lnd for t, p, _, lnd in rows})


class TopicMismatch(RuntimeError):
    """The ledger's offset marks do not fit the topic Kafka has under their name, and using them would
    skip records: one line naming the topic, the partition and both offsets, and what to do."""


def claim_unidentified_marks(conn, query: str, topic: str, identity: TopicIdentity) -> None:
    """Take the query's marks of `topic` recorded before identities (an older version's ledger) as the
    marks of the topic with this `identity`, which `verify_topic` then checks like any."""
    with conn.cursor() as cur:
        cur.execute("UPDATE streaming_offsets SET kafka_cluster_id = %s, kafka_topic_id = %s "
                    "WHERE query = %s AND topic = %s AND kafka_topic_id = ''",
                    (identity.cluster_id, identity.topic_id, query, topic))


def verify_topic(conn, query: str, checkpoint_id: str, topic: str, kafka: TopicState) -> str | None:
    """Check the topic Kafka has under the name `topic` (`kafka`: its identity and end offsets) against
    the query's offset marks, before a batch uses them.

    Raises TopicMismatch if one of this topic's partitions ends below its mark (its records there would
    be skipped), or if the topic is new to the ledger while the checkpoint (`checkpoint_id`) has applied
    batches of the topic the marks are of (its offsets would skip the new topic's first records).
    Returns a line to log when the topic is new to the ledger under a name it has marks of: a recreated
    topic or another cluster's, which gets marks of its own and is read from where the new checkpoint
    starts (its start, with `starting_offsets` earliest)."""
    identity = kafka.identity
    with conn.cursor() as cur:
        cur.execute("SELECT kafka_cluster_id, kafka_topic_id, kafka_partition, applied_until FROM streaming_offsets "
                    "WHERE query = %s AND topic = %s", (query, topic))
        rows = cur.fetchall()
        cur.execute("SELECT EXISTS (SELECT 1 FROM streaming_batches WHERE query = %s AND checkpoint_id = %s)",
                    (query, checkpoint_id))
        checkpoint_used = cur.fetchone()[0]
    marks = {partition: mark for cluster_id, topic_id, partition, mark in rows
             if TopicIdentity(cluster_id, topic_id) == identity}
    for partition, mark in sorted(marks.items()):
        end = kafka.end_offsets.get(partition, 0)
        if end < mark:
            raise TopicMismatch(
                f"topic {topic!r} partition {partition} ({identity}) ends at offset {end}, below offset {mark} up to "
                f"which query {query!r} applied it (streaming_offsets): its records from offset {end} on would be "
                f"skipped. If that partition lost records and those are new, delete its mark (DELETE FROM "
                f"streaming_offsets WHERE query = '{query}' AND topic = '{topic}' AND kafka_partition = {partition} "
                f"AND kafka_topic_id = '{identity.topic_id}') and start the stream again; if the stream reads the "
                f"wrong cluster, set ANTENNA_KAFKA_BOOTSTRAP")
    others = sorted({TopicIdentity(cluster_id, topic_id) for cluster_id, topic_id, _, _ in rows} - {identity},
                    key=str)
    if marks or not others:
        return None
    before = ", ".join(map(str, others))
    if checkpoint_used:
        raise TopicMismatch(
            f"topic {topic!r} is now {identity}, but the streaming checkpoint of query {query!r} (checkpoint "
            f"{checkpoint_id}) read it when it was {before}: its offsets would skip the new topic's first records. "
            f"Delete the query's checkpoint folder and start the stream again: the new topic is then read from "
            f"its start")
    return (f"topic {topic!r} is {identity}, new to query {query!r}, whose offset marks are of {before}: it is read "
            f"from where the new checkpoint starts, with marks of its own")


def batch_planned_at(conn, key: BatchKey, now: datetime) -> datetime:
    """The stream's clock when the batch was first planned: `now`, recorded, the first time; on a
    replay, what was recorded then. Its transaction must commit before the time is used."""
    with conn.cursor() as cur:
        cur.execute(f"{STREAMING_BATCH_CLOCKS.insert_into()} VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    (key.query, key.checkpoint_id, key.batch_id, now))
        # A second statement, not the insert's RETURNING: a concurrent run's row, committed while this
        # insert waited on it, is seen only by a statement that starts after.
        cur.execute("SELECT planned_at FROM streaming_batch_clocks WHERE query = %s AND checkpoint_id = %s "
                    "AND batch_id = %s", (key.query, key.checkpoint_id, key.batch_id))
        return cur.fetchone()[0]


def max_event_time(conn, query: str) -> datetime | None:
    """The latest watermark time of any applied batch (event time, capped by the record's Kafka time,
    the stream's clock and `max_watermark_advance`, speed/watermark.py): the base of the watermark."""
    with conn.cursor() as cur:
        cur.execute("SELECT max(max_event_time) FROM streaming_batches WHERE query = %s", (query,))
        return cur.fetchone()[0]


def _advance(cur, query: str, identity: TopicIdentity, offsets: Offsets, column: str) -> None:
    if not offsets:
        return
    # Both marks start at the first batch's end: its records are applied and, once it lands, landed.
    execute_values(
        cur,
        f"{STREAMING_OFFSETS.insert_into(_OFFSET_COLUMNS)} VALUES %s "
        f"ON CONFLICT ({', '.join(STREAMING_OFFSETS.primary_key)}) DO UPDATE SET {column} = "
        f"GREATEST(streaming_offsets.{column}, EXCLUDED.{column})",
        [(query, topic, partition, end, end if column == "landed_until" else 0, identity.cluster_id,
          identity.topic_id) for (topic, partition), end in offsets.items()],
    )


def mark_landed(conn, key: BatchKey, identity: TopicIdentity) -> None:
    """Record that the applied batch's lake files are written: its row, its offsets, its hours (one transaction).

    `identity`: the topic's now, which is the one the batch was applied from: a run whose topic is not
    the one its checkpoint read stops before its first batch (`verify_topic`)."""
    with conn.cursor() as cur:
        cur.execute("UPDATE streaming_batches SET landed_at = now() AT TIME ZONE 'UTC' "
                    "WHERE query = %s AND checkpoint_id = %s AND batch_id = %s RETURNING end_offsets, hours",
                    (key.query, key.checkpoint_id, key.batch_id))
        end_offsets, hours = cur.fetchone()
        _advance(cur, key.query, identity, _decode(end_offsets), "landed_until")
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
        _advance(cur, key.query, result.identity, result.end_offsets, "applied_until")
    return True


def record_failure(conn, key: BatchKey, attempts: int, offsets: str, error: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"{STREAMING_FAILURES.insert_into(_FAILURE_COLUMNS)} VALUES (%s, %s, %s, %s, %s, %s)",
                    (key.query, key.checkpoint_id, key.batch_id, attempts, offsets, error))
