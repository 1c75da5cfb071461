"""The streaming run's heartbeat: proof, in PostgreSQL, that a run Dagster lists as started is alive.

A host restart kills the run and the code server that launched it together; nothing is left to tell
Dagster, and the run stays STARTED, which keeps the streaming sensor from launching another. So the
run beats every `stream_heartbeat_seconds` from its wait loop, and the sensor marks a started run whose
last beat is older than `stream_heartbeat_limit_seconds` as failed, and declares it dead here: a run
declared dead that still beats (its process stalled, or cut off from PostgreSQL, for longer than the
limit) stops at its next beat, so two streams do not run side by side; the run beats once more just
before its query starts.

Before that query there is no wait loop: Spark's start (its application, and on a cluster its executors)
and the landing of batches an earlier run left unlanded are calls that can outlast the limit on a busy
host or after a long outage. A thread beats meanwhile (`beating`), so a slow start is not taken for a
dead run, relaunched, and slow again in its successor.

Times are the PostgreSQL server's clock, so the run's and the sensor's hosts need not agree on the time.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from antenna_assets.postgres import KeptConnection
from antenna_assets.serving.schema import STREAMING_HEARTBEATS

_UTC_NOW = "(now() AT TIME ZONE 'UTC')"


class RunDeclaredDead(RuntimeError):
    """The streaming sensor declared this run dead (its heartbeat was older than the limit)."""


class Heartbeat:
    """The beats of one streaming run, on a connection of their own: the micro-batches' connection
    belongs to the thread Spark runs them in."""

    def __init__(self, postgres_url: str, run_id: str, query: str, interval_seconds: float):
        self.run_id, self.query, self.interval_seconds = run_id, query, interval_seconds
        self._postgres = KeptConnection(postgres_url)
        self._next_beat = float("-inf")

    def beat(self) -> None:
        """Record that the run is alive now. Raises RunDeclaredDead if the sensor declared it dead; a
        database that does not answer is only logged: the run's own work fails on it soon enough."""
        self._next_beat = time.monotonic() + self.interval_seconds
        try:
            with self._postgres.transaction() as conn, conn.cursor() as cur:
                cur.execute(
                    f"{STREAMING_HEARTBEATS.insert_into(('run_id', 'query', 'pid', 'host', 'beat_at'))} "
                    f"VALUES (%s, %s, %s, %s, {_UTC_NOW}) ON CONFLICT (run_id) DO UPDATE SET "
                    "query = EXCLUDED.query, pid = EXCLUDED.pid, host = EXCLUDED.host, beat_at = EXCLUDED.beat_at "
                    f"WHERE {STREAMING_HEARTBEATS.name}.declared_dead_at IS NULL RETURNING run_id",
                    (self.run_id, self.query, os.getpid(), socket.gethostname()))
                alive = cur.fetchone() is not None
        except Exception as exc:  # noqa: BLE001 - see docstring
            logging.getLogger(__name__).warning("streaming run %s could not write its heartbeat: %s", self.run_id, exc)
            return
        if not alive:
            raise RunDeclaredDead(f"streaming run {self.run_id} was declared dead by the streaming sensor (its "
                                  "heartbeat was older than ANTENNA_STREAM_HEARTBEAT_LIMIT_SECONDS) and is marked "
                                  "failed: stopping, a new run takes over")

    def beat_if_due(self) -> None:
        if time.monotonic() >= self._next_beat:
            self.beat()

    @contextmanager
    def beating(self) -> Iterator[None]:
        """Beats now, then every interval from a thread of its own until the block ends; raises
        RunDeclaredDead at its end if the sensor declared the run dead meanwhile (a call the block is in,
        e.g. Spark's start, cannot be interrupted). The block must not beat itself: the beats share a
        connection."""
        self.beat()
        done, declared_dead = threading.Event(), []

        def beat_until_done() -> None:
            while not done.wait(self.interval_seconds):
                try:
                    self.beat()
                except RunDeclaredDead as exc:
                    declared_dead.append(exc)
                    return

        beater = threading.Thread(target=beat_until_done, name=f"heartbeat-{self.run_id}", daemon=True)
        beater.start()
        try:
            yield
        finally:
            done.set()
            beater.join()
        if declared_dead:
            raise declared_dead[0]

    def close(self) -> None:
        self._postgres.close()


def last_beat(conn, run_id: str) -> tuple[float, int | None, str | None] | None:
    """(seconds since the run's last beat, its pid, its host), or None if it never beat."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT extract(epoch FROM {_UTC_NOW} - beat_at)::float8, pid, host "
                    f"FROM {STREAMING_HEARTBEATS.name} WHERE run_id = %s AND beat_at IS NOT NULL", (run_id,))
        return cur.fetchone()


def declare_dead(conn, run_id: str) -> None:
    """The run's next beat, if it ever comes, stops it."""
    with conn.cursor() as cur:
        cur.execute(f"{STREAMING_HEARTBEATS.insert_into(('run_id', 'declared_dead_at'))} VALUES (%s, {_UTC_NOW}) "
                    "ON CONFLICT (run_id) DO UPDATE SET declared_dead_at = EXCLUDED.declared_dead_at", (run_id,))
