"""Retention: a prune of a month of the speed layer's 5-minute rows, plain DELETE against daily partitions,
and what it does to the stream's PostgreSQL step while it runs.

`bytes_agg_user` only: at the contract's scale (20,000 users, 500 antennas, 5 apps at 20,000 events/s) it is
97.5% of the 5-minute rows (20,000 of 20,505 per window). `--scale` shrinks the users (0.05: 1,000 users,
8.9M rows a month); the row counts, time and I/O are reported as measured and the full-scale time is
extrapolated linearly. The table holds 30 + 7 days; the prune removes the 30 batch-final days older than the
7 days kept, with each hour's total recorded (pruned_speed_hours), as the retention job does:
- DELETE: the product's own `prune_speed_table` on the product's table, then the VACUUM that makes the space
  reusable;
- partitions: the same table partitioned by day; each day's hourly totals inserted, then the partition dropped.
Meanwhile a writer thread does the stream's PostgreSQL step every 0.5 s (`add_to_totals` of a micro-batch's
partial sums into the current window, one transaction) and its commit times are recorded, before and during.
I/O: the backend's bytes read and written (/proc/<pid>/io: the server runs on this machine) and the WAL written.
"""

from __future__ import annotations

import argparse
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa

from antenna_assets.hours import HOUR
from antenna_assets.postgres import connect
from antenna_assets.retention.speed_tables import prune_speed_table
from antenna_assets.serving.schema import BYTES_AGG_USER
from antenna_assets.serving.writes import add_to_totals
from antenna_assets.settings import Settings
from bench.common import fresh_database, record_run

SECTION = "## Retention: a month of 5-minute rows"
INTRO = ("`bytes_agg_user` holding 37 days of 5-minute rows (30 to prune + 7 kept), every hour batch-final; the prune "
         "removes the 30 days and records each hour's total (`pruned_speed_hours`). DELETE: the product's "
         "`prune_speed_table`, then `VACUUM`; partitions: the table partitioned by day, each day's hourly totals "
         "inserted and its partition dropped. I/O: the server backend's bytes read/written (/proc/PID/io) and WAL. "
         "Stream step: `add_to_totals` of a micro-batch (the stream's PostgreSQL transaction) every 0.5 s, commit "
         "time p50/p99/max before and during the prune. Full scale: 20,000 users (20,000 events/s), time scaled "
         "by rows.\n\n")
HEADER = ("| date | machine | command | rows in table | rows pruned | method | prune time | vacuum | read / written | "
          "WAL | stream step before (p50/p99/max) | during | full-scale prune (est.) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
DAYS_PRUNED, DAYS_KEPT = 30, 7
FULL_USERS = 20_000


def _fill(conn, table: str, users: int, start: datetime, days: int) -> int:
    """Every user in every 5-minute window of `days` from `start`, one INSERT per day; batch_hours for each hour."""
    with conn.cursor() as cur:
        for day in range(days):
            first = start + timedelta(days=day)
            cur.execute(f"""INSERT INTO {table} (id, date, sum_user_bytes)
                SELECT 'user-' || u, w, (u * 7919 + extract(epoch FROM w)::bigint) %% 10000
                FROM generate_series(1, %s) u,
                     generate_series(%s::timestamp, %s::timestamp - interval '5 minutes', interval '5 minutes') w""",
                        (users, first, first + timedelta(days=1)))
            conn.commit()
        cur.execute("""INSERT INTO batch_hours (table_name, date)
            SELECT t, h FROM unnest(ARRAY['bytes_agg_user_1h', 'users_over_quota_1h']) t,
                 generate_series(%s::timestamp, %s::timestamp, interval '1 hour') h ON CONFLICT DO NOTHING""",
                    (start, start + timedelta(days=days) - HOUR))
        cur.execute(f"ANALYZE {table}")
        cur.execute(f"SELECT count(*) FROM {table}")
        rows = cur.fetchone()[0]
    conn.commit()
    return rows


def _partitioned(conn, start: datetime, days: int) -> None:
    """bytes_agg_user again, partitioned by day (its rows moved into the partitions)."""
    with conn.cursor() as cur:
        # The serving views read the table (a throw-away database: they are not needed here).
        cur.execute("DROP VIEW IF EXISTS serving_user_1h CASCADE")
        cur.execute("ALTER TABLE bytes_agg_user RENAME TO bytes_agg_user_plain")
        cur.execute("CREATE TABLE bytes_agg_user (LIKE bytes_agg_user_plain INCLUDING ALL) PARTITION BY RANGE (date)")
        for day in range(days):
            first = start + timedelta(days=day)
            cur.execute(f"CREATE TABLE bytes_agg_user_{first:%Y%m%d} PARTITION OF bytes_agg_user "
                        "FOR VALUES FROM (%s) TO (%s)", (first, first + timedelta(days=1)))
        cur.execute("INSERT INTO bytes_agg_user SELECT * FROM bytes_agg_user_plain")
        cur.execute("DROP TABLE bytes_agg_user_plain")
        cur.execute("ANALYZE bytes_agg_user")
    conn.commit()


def _drop_days(conn, start: datetime, days: int) -> int:
    """The partitions' way: per day, its hourly totals into pruned_speed_hours, then DROP TABLE."""
    removed = 0
    with conn.cursor() as cur:
        for day in range(days):
            first = start + timedelta(days=day)
            cur.execute(f"""INSERT INTO pruned_speed_hours (table_name, date, rows_removed, total_bytes)
                SELECT 'bytes_agg_user', date_trunc('hour', date), count(*), sum(sum_user_bytes)
                FROM bytes_agg_user_{first:%Y%m%d} GROUP BY 2 RETURNING rows_removed""")
            removed += sum(row[0] for row in cur.fetchall())
            cur.execute(f"DROP TABLE bytes_agg_user_{first:%Y%m%d}")
            conn.commit()
    return removed


class StreamStep(threading.Thread):
    """The stream's PostgreSQL step every 0.5 s: a micro-batch's partial sums of the current window."""

    def __init__(self, url: str, users: int, window: datetime):
        super().__init__(daemon=True)
        self.url, self.users, self.window = url, users, window
        self.phase = "before"
        self.seconds: dict[str, list[float]] = {"before": [], "during": []}
        self.stop = threading.Event()

    def run(self) -> None:
        conn = connect(self.url)
        # Half a second of events at the scaled rate touches about half the users' rows of the window.
        ids = pa.array([f"user-{u}" for u in range(1, self.users + 1, 2)])
        epoch = pa.array([int(self.window.timestamp())] * len(ids), pa.int64())
        sums = pa.table({"id": ids, "epoch": epoch, "bytes": pa.array([1] * len(ids), pa.int64())})
        while not self.stop.is_set():
            started = time.perf_counter()
            with conn.cursor() as cur:
                add_to_totals(cur, BYTES_AGG_USER, sums)
            conn.commit()
            self.seconds[self.phase].append(time.perf_counter() - started)
            time.sleep(max(0.0, 0.5 - (time.perf_counter() - started)))
        conn.close()

    def summary(self, phase: str) -> str:
        values = sorted(self.seconds[phase])
        if not values:
            return "none"
        pick = lambda q: values[min(len(values) - 1, int(q * len(values)))]  # noqa: E731
        return f"{pick(0.5) * 1000:.0f}/{pick(0.99) * 1000:.0f}/{values[-1] * 1000:.0f} ms ({len(values)})"


def _io(conn) -> tuple[int, int, int]:
    """The backend's bytes read and written so far, and the server's WAL position."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid(), pg_current_wal_lsn() - '0/0'::pg_lsn")
        pid, wal = cur.fetchone()
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["read_bytes"]), int(fields["write_bytes"]), int(wal)


def _mib(value: int) -> str:
    return f"{value / 2 ** 20:,.0f} MiB"


def run(users: int, method: str) -> list[str]:
    settings = Settings.from_env()
    start = datetime(2026, 1, 1)
    cutoff = start + timedelta(days=DAYS_PRUNED)
    with fresh_database(settings) as url:
        conn = connect(url)
        rows = _fill(conn, "bytes_agg_user", users, start, DAYS_PRUNED + DAYS_KEPT)
        if method == "partitions":
            _partitioned(conn, start, DAYS_PRUNED + DAYS_KEPT)
        stream = StreamStep(url, users, cutoff + timedelta(days=DAYS_KEPT) - timedelta(minutes=5))
        stream.start()
        time.sleep(15)
        read0, written0, wal0 = _io(conn)
        stream.phase = "during"
        started = time.perf_counter()
        if method == "delete":
            pruned = prune_speed_table(conn, BYTES_AGG_USER, cutoff).rows
            conn.commit()
        else:
            pruned = _drop_days(conn, start, DAYS_PRUNED)
        prune_seconds = time.perf_counter() - started
        vacuum = "none needed"
        if method == "delete":
            conn.autocommit = True
            started = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute("VACUUM bytes_agg_user")
            vacuum = f"{time.perf_counter() - started:.1f} s"
        read1, written1, wal1 = _io(conn)
        stream.stop.set()
        stream.join()
        conn.close()
    full = prune_seconds * FULL_USERS / users
    return [f"{rows:,}", f"{pruned:,}", method, f"{prune_seconds:.2f} s", vacuum,
            f"{_mib(read1 - read0)} / {_mib(written1 - written0)}", _mib(wal1 - wal0), stream.summary("before"),
            stream.summary("during"), f"{full:,.0f} s" if method == "delete" else f"{full:.1f} s"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.05, help="users as a fraction of 20,000 (default 0.05)")
    parser.add_argument("--method", choices=["delete", "partitions", "both"], default="both")
    parser.add_argument("--no-record", action="store_true", help="print the rows, do not add them to BENCHMARKS.md")
    args = parser.parse_args(argv)
    users = max(1, int(FULL_USERS * args.scale))
    for method in (("delete", "partitions") if args.method == "both" else (args.method,)):
        cells = run(users, method)
        print(" | ".join(cells), flush=True)
        record_run(SECTION, INTRO, HEADER, f"python -m bench.bench_retention --scale {args.scale}", cells,
                   args.no_record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
