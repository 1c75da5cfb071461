"""The speed layer's ledger and bookkeeping: rows older than `retention_ledger_days` go, except what exactly-once
and the watermark need.

Kept whatever their age: every offset mark (`streaming_offsets`: what makes a replay add nothing twice), each
checkpoint's newest batch and its clock (a checkpoint with no batch left would look unused to `verify_topic`),
each query's batch holding its newest watermark time (the watermark's base), and every batch not landed yet
(its landing updates its row). Removed: other batches (landed), their clocks, failures, and heartbeats of runs
that stopped beating that long ago.
"""

from __future__ import annotations

from datetime import datetime

from antenna_assets.retention.landing import Removed

_KEPT_BATCHES = """
    SELECT query, checkpoint_id, max(batch_id) AS batch_id FROM streaming_batches GROUP BY 1, 2
    UNION SELECT query, checkpoint_id, batch_id FROM streaming_batches b
          WHERE max_event_time = (SELECT max(max_event_time) FROM streaming_batches m WHERE m.query = b.query)"""


def prune_ledger(conn, before: datetime) -> dict[str, Removed]:
    """Delete the ledger's rows from before `before` that nothing needs; in `conn`'s transaction. Per table."""
    with conn.cursor() as cur:
        cur.execute(f"""DELETE FROM streaming_batches b WHERE applied_at < %(before)s AND landed_at IS NOT NULL
                        AND (query, checkpoint_id, batch_id) NOT IN ({_KEPT_BATCHES})""", {"before": before})
        batches = cur.rowcount
        cur.execute(f"""DELETE FROM streaming_batch_clocks c WHERE planned_at < %(before)s
                        AND (query, checkpoint_id, batch_id) NOT IN ({_KEPT_BATCHES})
                        AND NOT EXISTS (SELECT 1 FROM streaming_batches b WHERE b.query = c.query
                                        AND b.checkpoint_id = c.checkpoint_id AND b.batch_id = c.batch_id
                                        AND b.landed_at IS NULL)""", {"before": before})
        clocks = cur.rowcount
        cur.execute("DELETE FROM streaming_failures WHERE failed_at < %s", (before,))
        failures = cur.rowcount
        cur.execute("DELETE FROM streaming_heartbeats WHERE coalesce(beat_at, declared_dead_at) < %s", (before,))
        heartbeats = cur.rowcount
    return {"streaming_batches": Removed(rows=batches), "streaming_batch_clocks": Removed(rows=clocks),
            "streaming_failures": Removed(rows=failures), "streaming_heartbeats": Removed(rows=heartbeats)}
