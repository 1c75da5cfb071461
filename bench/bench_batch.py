"""The batch layer's four hourly tables in Spark against the same results in DuckDB, from the same Parquet.

    python -m bench.bench_batch [--events N] [--scaling N,N,...] [--quick] [--no-record]

Generates one hour of contract-shaped events (20,000 users, 500 antennas, 5 apps) straight into
the raw_devices layout `year=/month=/day=/hour=` with numpy and pyarrow (seeded, cached under
bench/data), and the hour's user_metadata snapshot from `synthetic_users`. Then, in one warm
local[2] Spark session, times the production code path (`read_hours` + `compute_hourly_tables`,
results collected to the driver; no PostgreSQL write) and DuckDB SQL computing the same four
tables, checks both give equal rows, and reports best/median of 5 rounds after a warm-up run (every
timed work once per round, in turn, so a shared host's slow minutes fall on all of them) and the
ratio Spark / DuckDB. It also times, in Spark, the per-user sum alone (the least work any plan of
the four tables does; issue 17's target is the job at most 1.5x it) against DuckDB's whole job, and
the per-(antenna, app) sum alone, the batch layer's other scan. The scaling runs repeat the comparison for each size to show cost per million events.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from antenna_assets.batch.layer import compute_hourly_tables, read_hours
from antenna_assets.lake.layout import hour_partition_dir
from antenna_assets.settings import Settings
from antenna_assets.sources.users import APPS, antenna_id, synthetic_users
from bench.common import DATA_DIR, Timings, record_run, time_interleaved

HOUR = datetime(2026, 11, 28, 13)
HOUR_EPOCH = int((HOUR - datetime(1970, 1, 1)).total_seconds())
USERS, ANTENNAS = 20_000, 500
ROWS_PER_FILE = 1_000_000
SEED = 7
REPEATS = 5
TABLES = ("bytes_agg_antenna_1h", "bytes_agg_user_1h", "bytes_agg_app_1h", "users_over_quota_1h")

SECTION = "## Batch layer"
SECTION_INTRO = (
    "One UTC hour of generated events (20,000 users, 500 antennas, 5 apps, `bytes` uniform 0..9999) as\n"
    "Parquet in the raw_devices layout, plus that hour's user_metadata snapshot (20,000 users).\n"
    "Spark: the batch layer's own `read_hours` + `compute_hourly_tables` in a warm `local[2]` session,\n"
    "the four tables (and unknown_users) collected to the driver as production does, without the\n"
    "PostgreSQL write. DuckDB (2 threads): the same four tables in SQL from the same files. Both results\n"
    "are checked equal in every run. Times: best / median of 5 rounds after one warm-up run, every timed work\n"
    "once per round, in turn (since 2026-12-06; before, 3 runs of each, one work after the other). Ratio: Spark best /\n"
    "DuckDB best. Target: ratio <= 2.0. Floor: Spark's per-user sum alone (`groupBy(id).sum(bytes)` on the\n"
    "same files), which any plan of the four tables includes, and its ratio to DuckDB's whole job.\n"
    "Scaling: the same at several sizes, as seconds per million events.\n\n"
)
TABLE_HEADER = (
    "| date | machine | command | events | Spark s (best / median) | DuckDB s (best / median) | ratio "
    "| floor: Spark per-user sum alone s (ratio to DuckDB; job / floor; per-user + per-(antenna, app) sums alone / floor) | scaling: events -> Spark / DuckDB s per million events |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


@dataclass(frozen=True)
class Comparison:
    events: int
    spark: Timings
    duckdb: Timings
    per_user_alone: Timings
    per_antenna_app_alone: Timings

    @property
    def ratio(self) -> float:
        return self.spark.best / self.duckdb.best

    @property
    def floor_ratio(self) -> float:
        return self.per_user_alone.best / self.duckdb.best

    @property
    def over_floor(self) -> float:
        return self.spark.best / self.per_user_alone.best

    @property
    def both_sums_over_floor(self) -> float:
        """Both sums any two-scan plan does, alone, over the per-user floor: the least such a plan costs."""
        return (self.per_user_alone.best + self.per_antenna_app_alone.best) / self.per_user_alone.best


def generate_hour(events: int, seed: int = SEED) -> Path:
    """The lake root of one hour of `events` events, generated once and reused (a marker file says it is whole)."""
    root = DATA_DIR / f"raw_devices-{events}ev-{USERS}u-{ANTENNAS}a-seed{seed}"
    done = root / "_COMPLETE"
    if done.exists():
        return root
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / hour_partition_dir(HOUR)
    folder.mkdir(parents=True, exist_ok=True)
    user_ids = pa.array([u.id for u in synthetic_users(USERS)])
    antenna_ids = pa.array([antenna_id(n) for n in range(ANTENNAS)])
    apps = pa.array(APPS)
    rng = np.random.default_rng(seed)
    # Written a file at a time, so 50M events never sit in memory at once.
    for part, first in enumerate(range(0, events, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, events - first)
        timestamps = HOUR_EPOCH + rng.integers(0, 3600, n)
        table = pa.table({
            "timestamp": pa.array(timestamps, pa.int64()),
            "id": user_ids.take(rng.integers(0, USERS, n)),
            "antenna_id": antenna_ids.take(rng.integers(0, ANTENNAS, n)),
            "bytes": pa.array(rng.integers(0, 10_000, n), pa.int64()),
            "app": apps.take(rng.integers(0, len(APPS), n)),
            # Spark's TIMESTAMP in Parquet: microseconds, adjusted to UTC.
            "event_time": pa.array(timestamps * 1_000_000, pa.timestamp("us", tz="UTC")),
        })
        pq.write_table(table, folder / f"part-{part:05d}.parquet")
    done.touch()
    return root


def snapshot_rows() -> list[tuple]:
    """The hour's user_metadata snapshot: (id, email, quota, date)."""
    return [(u.id, u.email, u.quota, HOUR) for u in synthetic_users(USERS)]


def spark_session():
    from antenna_assets.resources.spark import build_spark_session

    return build_spark_session(Settings.from_env(), app_name="bench_batch", extra={"spark.master": "local[2]"})


def spark_tables(spark, root: Path, snapshot) -> dict[str, list[tuple]]:
    return compute_hourly_tables(read_hours(spark, str(root), [HOUR]), snapshot, TABLES, [HOUR])


def spark_per_user_alone(spark, root: Path) -> int:
    """The per-user sum and nothing else: every id decoded and hashed once, as any plan of the tables must."""
    from pyspark.sql import functions as F

    return len(read_hours(spark, str(root), [HOUR]).groupBy("id").agg(F.sum("bytes")).collect())


def spark_per_antenna_app_alone(spark, root: Path) -> int:
    """The sum per (antenna, app) and nothing else: the other scan of the batch layer's plan."""
    from pyspark.sql import functions as F

    return len(read_hours(spark, str(root), [HOUR]).groupBy("antenna_id", "app").agg(F.sum("bytes")).collect())


def duckdb_connection():
    import duckdb
    import pyarrow as pa

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'UTC'")
    ids, emails, quotas, dates = zip(*snapshot_rows())
    con.register("user_metadata", pa.table({"id": ids, "email": emails, "quota": pa.array(quotas, pa.int64()),
                                            "date": pa.array(dates, pa.timestamp("us"))}))
    return con


def duckdb_tables(con, root: Path) -> dict[str, list[tuple]]:
    """The four tables in SQL; users are summed once per id, as in the batch layer."""
    # The UTC hour by integer arithmetic: date_trunc on a TIMESTAMPTZ goes through time zone rules, 4x slower.
    con.execute(f"""CREATE OR REPLACE TEMP VIEW events AS SELECT antenna_id, id, app, bytes,
                    make_timestamp(epoch_us(event_time) // 3600000000 * 3600000000) AS date
                    FROM read_parquet('{root}/*/*/*/*/*.parquet', hive_partitioning = true)""")
    con.execute("""CREATE OR REPLACE TEMP TABLE per_email AS
                   SELECT m.email, u.date, sum(u.bytes) AS sum_user_bytes
                   FROM (SELECT id, date, sum(bytes) AS bytes FROM events GROUP BY ALL) u
                   JOIN user_metadata m USING (id, date) GROUP BY ALL""")
    sql = {
        "bytes_agg_antenna_1h": "SELECT antenna_id, date, sum(bytes) FROM events GROUP BY ALL",
        "bytes_agg_user_1h": "SELECT email, date, sum_user_bytes FROM per_email",
        "bytes_agg_app_1h": "SELECT app, date, sum(bytes) FROM events GROUP BY ALL",
        "users_over_quota_1h": """SELECT e.email, e.date, q.quota, e.sum_user_bytes FROM per_email e
                                  JOIN (SELECT email, date, max(quota) AS quota FROM user_metadata GROUP BY ALL) q
                                  USING (email, date) WHERE e.sum_user_bytes > q.quota""",
    }
    return {name: con.execute(query).fetchall() for name, query in sql.items()}


def check_equal(spark_result: dict[str, list[tuple]], duckdb_result: dict[str, list[tuple]], events: int) -> None:
    for name in TABLES:
        ours = sorted(spark_result[name])
        theirs = sorted(tuple(int(v) if isinstance(v, int) else v for v in row) for row in duckdb_result[name])
        if ours != theirs:
            sys.exit(f"{name}: Spark and DuckDB differ ({len(ours)} vs {len(theirs)} rows)")
    if spark_result["unknown_users"]:
        sys.exit(f"{len(spark_result['unknown_users'])} unknown users: the snapshot should cover every id")
    total = sum(row[2] for row in spark_result["bytes_agg_app_1h"])
    print(f"  equal: {', '.join(f'{n} {len(spark_result[n]):,} rows' for n in TABLES)}; {total:,} bytes in "
          f"{events:,} events", flush=True)


def compare(spark, con, snapshot, events: int) -> Comparison:
    root = generate_hour(events)
    timed = time_interleaved({"spark": lambda: spark_tables(spark, root, snapshot),
                              "duckdb": lambda: duckdb_tables(con, root),
                              "per_user": lambda: spark_per_user_alone(spark, root),
                              "per_antenna_app": lambda: spark_per_antenna_app_alone(spark, root)}, REPEATS)
    (spark_timings, spark_result), (duckdb_timings, duckdb_result) = timed["spark"], timed["duckdb"]
    per_user_timings, per_antenna_app_timings = timed["per_user"][0], timed["per_antenna_app"][0]
    check_equal(spark_result, duckdb_result, events)
    result = Comparison(events, spark_timings, duckdb_timings, per_user_timings, per_antenna_app_timings)
    print(f"  {events:,} events: Spark {spark_timings}; DuckDB {duckdb_timings}; ratio {result.ratio:.2f}; "
          f"Spark per-user sum alone {per_user_timings} (ratio {result.floor_ratio:.2f}; the job is "
          f"{result.over_floor:.2f}x it); per (antenna, app) alone {per_antenna_app_timings} (both sums alone "
          f"{result.both_sums_over_floor:.2f}x the floor)", flush=True)
    return result


def per_million(seconds: float, events: int) -> str:
    return f"{seconds / events * 1e6:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="events in the hour (default 10,000,000)")
    parser.add_argument("--scaling", default="1000000,10000000,50000000",
                        help="comma-separated event counts of the scaling runs ('' for none)")
    parser.add_argument("--quick", action="store_true", help="500,000 events, scaling 250,000 and 1,000,000")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    events = 500_000 if args.quick else args.events
    scaling_sizes = [250_000, 1_000_000] if args.quick else [int(n) for n in args.scaling.split(",") if n]

    spark = spark_session()
    con = duckdb_connection()
    snapshot = snapshot_rows()
    print(f"batch layer, {events:,} events (shuffle partitions "
          f"{spark.conf.get('spark.sql.shuffle.partitions')}):", flush=True)
    main_run = compare(spark, con, snapshot, events)
    scaling = [main_run if n == events else compare(spark, con, snapshot, n) for n in scaling_sizes]
    spark.stop()

    scaling_text = "; ".join(f"{s.events / 1e6:g}M -> {per_million(s.spark.best, s.events)} / "
                             f"{per_million(s.duckdb.best, s.events)}" for s in scaling)
    if scaling:
        print(f"scaling (s per million events, Spark / DuckDB): {scaling_text}")
    command = "python -m bench.bench_batch" + (" --quick" if args.quick else f" --events {events} --scaling {args.scaling}")
    record_run(SECTION, SECTION_INTRO, TABLE_HEADER, command,
               [f"{events:,}", f"{main_run.spark.best:.2f} / {main_run.spark.median:.2f}",
                f"{main_run.duckdb.best:.2f} / {main_run.duckdb.median:.2f}", f"{main_run.ratio:.2f}",
                f"{main_run.per_user_alone.best:.2f} ({main_run.floor_ratio:.2f}; job {main_run.over_floor:.2f}x; both sums "
                f"alone {main_run.both_sums_over_floor:.2f}x)",
                scaling_text or "-"], dry_run=args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
