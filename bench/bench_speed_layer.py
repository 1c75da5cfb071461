"""The speed layer's throughput, freshness and memory on the running local stack.

    python -m bench.bench_speed_layer [--messages N] [--max-offsets-per-trigger M] [--backlog-rate B] [--rate R]
                                      [--seconds S] [--quick] [--no-record]

Throughput (catch-up): the simulator preloads N messages (2 processes, 2,000 users, 100 antennas,
0.1% malformed; B events per second of event time, as an outage under live traffic leaves them)
into a fresh topic; the real SpeedLayer drains it with the available_now trigger
into a fresh lake folder and a fresh serving database (lake + three tables + dead letters + ledger),
twice: after a small warm-up, and after the reference and the floor (best of 2, as theirs are); each
result is checked against the simulator's ground truth. Reference, in the same warm Spark
session: a batch query that only reads the same topic, parses it with from_json (the contract's
schema) and counts the valid messages. Ratio = speed layer events/s / reference events/s.
Floor: the same stream with its totals taken out (`LandOnly`: the same Kafka source, micro-batches,
parse, cache and lake write, no sums, dead letters, ledger or PostgreSQL), drained twice between the
speed layer's two drains; the benchmark says the floor is broken if the speed layer beats it.

Freshness: with the processing-time trigger (the default, then 1 s), a paced producer sends R events/s for
S seconds, each stamped with its send time; a poller reads bytes_agg_antenna every ~100 ms and each
event's latency is the time from its send to the first poll whose running total includes it
(see `freshness`). Freshness floor, right after each trigger's run: the same, with the least a micro-batch
must do to make an event visible (`TotalsOnly`: plain from_json, per-antenna sums, PostgreSQL). Peak RSS:
this Python driver plus its Spark JVM (and the JVM's Python workers), sampled every 200 ms. Topics,
databases and lake folders are deleted afterwards.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import sys
import tempfile
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg2

from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.settings import Settings
from antenna_assets.sources.simulator import GroundTruth, SimulatorConfig, simulate
from antenna_assets.sources.simulator.producer import PRODUCER_TUNING
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.ledger import BatchKey
from antenna_assets.serving.writes import add_to_totals
from antenna_assets.speed.layer import LAKE, POSTGRES, SPARK_TOTALS, SpeedLayer, SpeedLayerTargets, run_until_stopped
from antenna_assets.transforms.aggregates import window_start
from antenna_assets.transforms.devices import DEVICE_MESSAGE_SCHEMA, FIELD_NAMES, valid_events
from antenna_assets.sources.users import APPS, antenna_id, user_id
from antenna_assets_tests.truth import expected, read_table
from bench.common import (BackgroundLoop, PeakMemory, RssPeak, cluster_settings, delete_topic, fresh_database,
                          fresh_topic, record_run, time_warm)

USERS, ANTENNAS = 2_000, 100
NO_LATE_DROPS = "3650 days"  # a backfill reaches Kafka out of event-time order across partitions
WINDOW_SECONDS = 300
POLL_SECONDS = 0.1
TICK_SECONDS = 0.01
TABLES = ((BYTES_AGG_ANTENNA, "antenna"), (BYTES_AGG_USER, "user"), (BYTES_AGG_APP, "app"))
WARM_UP_MESSAGES = 1_000_000
DEFAULT_TRIGGER = SpeedLayerConfig.model_fields["trigger_interval"].default
TRIGGERS = f"{DEFAULT_TRIGGER},1 second"  # the default, and the default before 2026-11-29

SECTION = "## Speed layer"
SECTION_INTRO = (
    "On the local stack (single-node Kafka, 3-partition topics; embedded PostgreSQL), Spark `local[2]`.\n"
    "Throughput: the simulator preloads the topic (backfill, 2 processes, 2,000 users, 100 antennas, 0.1%\n"
    "malformed); the real `SpeedLayer` drains it with `trigger=available_now` (watermark 3650 days, so\n"
    "nothing is late) into a fresh lake folder and a fresh serving database: lake Parquet + three speed\n"
    "tables + dead letters + batch ledger. events/s = messages / wall time from query start to stop, best of\n"
    "two drains (since 2026-12-05; one before): after a 1M-message warm-up, and after the reference's and the\n"
    "floor's runs, so as warm as their timed runs; the first run's figure is beside it.\n"
    "Checked every run: ledger good/bad messages, the three tables, dead letters and lake rows equal the\n"
    "simulator's ground truth. Reference (same warm session, same topic): a Spark batch query that only\n"
    "reads Kafka, parses with `from_json` (the contract's schema) and counts valid messages; best of 2 after\n"
    "a warm-up. Ratio = speed layer / reference. Targets: >= 150,000 events/s and ratio >= 0.5. Steps: the\n"
    "run's seconds in the Spark job of the sums (Kafka read and parse included), the PostgreSQL transaction\n"
    "and the lake write. Ceiling: events/s if the Spark work cost only the reference's and the lake write\n"
    "nothing, with the run's PostgreSQL seconds. Floor (in the reference cell, same session and topic): since\n"
    "2026-12-06 the speed layer's own stream without its totals (same Kafka source, micro-batches, parse, cache\n"
    "and lake write; no sums, dead letters, ledger or PostgreSQL), best of 2 drains between the speed layer's\n"
    "two; before, a batch job that read the whole topic, parsed it once (cached; uncached before 2026-11-29)\n"
    "and wrote the valid messages to Parquet by UTC hour, best of 2 after a warm-up; ratio = floor / reference.\n"
    "Freshness: processing-time trigger; a paced producer process sends R events/s (2,000 users, 100\n"
    "antennas) stamped with their send time and remembers, per (antenna, 5-minute window), each event's\n"
    "send time and the window's running byte sum after it; a poller reads `bytes_agg_antenna` every 100 ms\n"
    "and an event is visible at the first poll whose total reaches its running sum (bytes >= 1, so sums\n"
    "strictly increase). Latency = visible - sent, so it includes producer linger (5 ms), the trigger wait,\n"
    "the micro-batch and the poll period. Target: p99 <= 5 s. Peak RSS: driver Python + Spark JVM (+ its\n"
    "Python workers), sampled every 200 ms. Freshness floor (since 2026-12-06, after each trigger's run): the\n"
    "same load on a stream that only parses with from_json, sums per antenna and adds them to PostgreSQL.\n\n"
)
TABLE_HEADER = (
    "| date | machine | command | messages | speed layer events/s | reference events/s | ratio "
    "| freshness p50 / p99 (trigger) | peak RSS |\n"
    "|---|---|---|---|---|---|---|---|---|\n"
)


@dataclass(frozen=True)
class Throughput:
    messages: int
    seconds: float
    batches: int
    memory: RssPeak
    step_seconds: dict[str, float]  # SpeedLayerStats.step_seconds

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def ceiling(self, reference_rate: float) -> float:
        """events/s if the Spark work cost only the reference's read and parse, and the lake write nothing,
        with this run's PostgreSQL time: what this design could reach at best on this machine."""
        return self.messages / (self.messages / reference_rate + self.step_seconds[POSTGRES])

    def steps(self) -> str:
        return ", ".join(f"{step} {seconds:.1f} s" for step, seconds in self.step_seconds.items())


@dataclass(frozen=True)
class Freshness:
    trigger: str
    events: int
    visible: int
    p50: float
    p99: float
    max: float
    memory: RssPeak


def spark_session(app_name: str = "bench_speed_layer", **conf: str):
    """The benchmarks' session: local[2], or the Spark standalone cluster the settings name
    (ANTENNA_SPARK_WORKERS, or a spark:// ANTENNA_SPARK_MASTER; ANTENNA_SPARK_APP_CORES of its cores), and
    `conf` (Spark keys) over the product's configuration."""
    from antenna_assets.resources.spark import build_spark_session

    settings = Settings.from_env()
    master = settings.spark_master if settings.spark_master.startswith("spark://") else "local[2]"
    return build_spark_session(settings, app_name=app_name, extra={"spark.master": master, **conf})


@contextmanager
def scratch_topic(settings: Settings, purpose: str):
    topic = fresh_topic(settings, purpose)
    try:
        yield topic
    finally:
        delete_topic(settings, topic)


@contextmanager
def scratch_folder():
    folder = Path(tempfile.mkdtemp(prefix="antenna-bench-speed-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def targets(settings: Settings, topic: str, postgres_url: str, folder: Path) -> SpeedLayerTargets:
    return SpeedLayerTargets(settings.kafka_bootstrap, topic, str(folder / "landing"), str(folder / "checkpoint"),
                             postgres_url)


def streaming_process_memory() -> PeakMemory:
    """Peak RSS of this driver and its Spark JVM subtree, not of producer processes it spawned."""
    return PeakMemory(include=lambda process: process.name() == "java")


# Throughput -------------------------------------------------------------------------------------


def preload(settings: Settings, topic: str, messages: int, event_rate: float = 0) -> GroundTruth:
    """`messages` in the topic, `event_rate` per second of event time: a backlog left by an outage of
    the stream under live traffic; 0: one message per user per minute, a backfill's shape (every
    user in a new 5-minute window every 5 messages: the most partial sums per message)."""
    interval = USERS / event_rate if event_rate else 60.0
    hours = -(-messages // USERS) * interval / 3600 + 1
    result = simulate(SimulatorConfig(settings.kafka_bootstrap, topic, users=USERS, antennas=ANTENNAS,
                                      interval_seconds=interval, backfill_hours=hours, count=messages, seed=1,
                                      processes=2, malformed_fraction=0.001, extra_field_fraction=0.0, progress=False))
    print(f"  preloaded {result.produced:,} messages ({result.truth.malformed:,} malformed) in "
          f"{result.seconds:.1f} s", flush=True)
    return result.truth


def read_topic(spark, settings: Settings, topic: str):
    """The whole topic as a batch DataFrame, read with the speed layer's Kafka options (8 MiB fetches,
    its default minPartitions)."""
    return (spark.read.format("kafka")
            .option("kafka.bootstrap.servers", settings.kafka_bootstrap)
            .option("subscribe", topic)
            .option("startingOffsets", "earliest").option("endingOffsets", "latest")
            .option("kafka.max.partition.fetch.bytes", str(8 * 1024 * 1024))
            # A batch query's fetch otherwise waits Kafka's 500 ms for more data at the end of its
            # range: ~1 s of every read (100 records: 1.27 s -> 0.21 s). The stream's reads use the same setting.
            .option("kafka.fetch.max.wait.ms", str(SpeedLayerConfig().kafka_fetch_max_wait_ms))
            .option("minPartitions", str(2 * spark.sparkContext.defaultParallelism))
            .load())


def parse_and_count(spark, settings: Settings, topic: str) -> int:
    """The reference: read the whole topic, parse every value with from_json, count the valid messages.

    Parsed in a projection of its own: tests of the parsed fields written on the from_json call itself
    are each compiled into a parse of their own (six parses per message, measured 2.4x slower).
    """
    from pyspark.sql import functions as F

    message = F.col("message")
    valid = message["bytes"] >= 0
    for field in FIELD_NAMES:  # touching every field keeps Spark from pruning the parse
        valid = valid & message[field].isNotNull()
    return (read_topic(spark, settings, topic)
            .select(F.from_json(F.col("value").cast("string"), DEVICE_MESSAGE_SCHEMA).alias("message"))
            .select(F.count_if(valid)).collect()[0][0])


class LandOnly(SpeedLayer):
    """The floor: the speed layer's own stream with its totals taken out. The same Kafka source, trigger and
    micro-batches, each parsed and cached as the speed layer does (`cached_batch`) and its valid messages
    landed by the same lake write (enriched, by UTC hour and batch): no sums, dead letters, ledger, offset
    marks or PostgreSQL transaction. So it does strictly less than the speed layer on the same path.

    Until 2026-12-06 the floor was a batch job over the whole topic, another path: one cached batch of 5M
    records (a quarter of it spilled to disk), no enrichment, no micro-batches. Its speed depended on the
    heap it found, and the speed layer once beat it (BENCHMARKS.md, Performance round 3)."""

    def _process(self, kafka_rows, key: BatchKey) -> None:
        parsed, _ = self.cached_batch(kafka_rows)
        try:
            with self.stats.timing(LAKE):
                self._land(self._lake_frame(valid_events(parsed), key, self.user_metadata().frame), None)
        finally:
            parsed.unpersist()
        self.stats.batches += 1


class TotalsOnly(SpeedLayer):
    """The freshness floor: the least a micro-batch must do to make an event visible in bytes_agg_antenna.
    The speed layer's Kafka source, trigger and batch settings; each batch parsed with a plain from_json (the
    reference's parse, no contract rules), summed per antenna and 5-minute window in one Spark job, collected
    through Arrow and added by the same PostgreSQL write (`add_to_totals`). No cache, user, app or partition
    sums, dead letters, ledger, watermark or lake write."""

    def _process(self, kafka_rows, key: BatchKey) -> None:
        from pyspark.sql import functions as F

        message = F.from_json(F.col("value").cast("string"), DEVICE_MESSAGE_SCHEMA)
        with self.stats.timing(SPARK_TOTALS):
            sums = (self.batch_settings(kafka_rows).select(message.alias("m"))
                    .select(F.col("m.antenna_id").alias("key"), F.col("m.bytes").alias("bytes"),
                            window_start(self.config.window, F.timestamp_seconds("m.timestamp")))
                    .groupBy("key", "date").agg(F.sum("bytes").alias("bytes"))
                    .select("key", F.unix_seconds("date").alias("date"), "bytes").toArrow())
        with self.stats.timing(POSTGRES), self.postgres.transaction() as conn, conn.cursor() as cur:
            add_to_totals(cur, BYTES_AGG_ANTENNA, sums)
        self.stats.batches += 1


def run_speed_layer(spark, settings: Settings, topic: str, postgres_url: str, folder: Path,
                    config: SpeedLayerConfig, produced: int, layer_class: type[SpeedLayer] = SpeedLayer) -> Throughput:
    layer = layer_class(spark, config, targets(settings, topic, postgres_url, folder))
    with streaming_process_memory() as memory:
        started = time.perf_counter()
        run_until_stopped(layer)
        seconds = time.perf_counter() - started
    return Throughput(produced, seconds, layer.stats.batches, memory.peak, dict(layer.stats.step_seconds))


def check_against_truth(spark, postgres_url: str, folder: Path, query_name: str, truth: GroundTruth) -> None:
    with closing(psycopg2.connect(postgres_url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT sum(good_messages), sum(bad_messages) FROM streaming_batches WHERE query = %s",
                    (query_name,))
        good, bad = cur.fetchone()
        cur.execute("SELECT count(*) FROM dead_letter")
        dead_letters = cur.fetchone()[0]
    problems = []
    if (good, bad, dead_letters) != (truth.messages, truth.malformed, truth.malformed):
        problems.append(f"ledger good/bad {good}/{bad}, dead letters {dead_letters}; "
                        f"truth {truth.messages}/{truth.malformed}")
    problems += [f"{table.name} differs from the ground truth" for table, per in TABLES
                 if read_table(postgres_url, table) != expected(truth, per)]
    landed = spark.read.parquet(str(folder / "landing")).count()
    if landed != truth.messages:
        problems.append(f"lake holds {landed:,} events, truth {truth.messages:,}")
    if problems:
        sys.exit("speed layer result is wrong: " + "; ".join(problems))
    print(f"  checked: ledger, 3 tables, {dead_letters:,} dead letters and {landed:,} lake rows equal the ground truth",
          flush=True)


def warm_up_speed_layer(spark, settings: Settings, config: SpeedLayerConfig, event_rate: float) -> None:
    """One throwaway run on a small topic, so that the measured run, like the reference, finds the
    session's JVM warm (a long-running stream is; its first batches here took up to 2x longer)."""
    with scratch_topic(settings, "warm-up") as topic:
        truth = preload(settings, topic, WARM_UP_MESSAGES, event_rate)
        produced = truth.messages + truth.malformed
        with fresh_database(settings) as url, scratch_folder() as folder:
            run_speed_layer(spark, settings, topic, url, folder,
                            config.model_copy(update={"query_name": topic.replace("-", "_")}), produced)


@dataclass(frozen=True)
class CatchUp:
    """The speed layer's two drains of one backlog, and the reference and floor on the same topic."""

    first: Throughput  # in a JVM that has done only the warm-up: its peak RSS is a stream's own
    second: Throughput  # after the reference's and the floor's runs: as warm as their timed runs
    reference_rate: float
    floors: tuple[Throughput, Throughput]  # LandOnly's two drains, between the speed layer's

    @property
    def best(self) -> Throughput:
        return max(self.first, self.second, key=lambda run: run.rate)

    @property
    def floor_rate(self) -> float:
        return max(run.rate for run in self.floors)

    @property
    def floor_broken(self) -> bool:
        """A floor the full pipeline beats is no lower bound: each does strictly less than the speed layer."""
        return self.best.rate > self.floor_rate


def throughput(spark, settings: Settings, messages: int, max_offsets_per_trigger: int,
               event_rate: float) -> CatchUp:
    """The speed layer drains one preloaded topic twice (fresh database and lake each time), before and
    after the floor's two drains and the reference (timed twice after an untimed warm-up run)."""
    with scratch_topic(settings, "speed") as topic:
        truth = preload(settings, topic, messages, event_rate)
        produced = truth.messages + truth.malformed
        config = SpeedLayerConfig(trigger="available_now", watermark=NO_LATE_DROPS,
                                  max_offsets_per_trigger=max_offsets_per_trigger, query_name=topic.replace("-", "_"),
                                  progress_interval_seconds=3600)

        def drain(label: str) -> Throughput:
            with fresh_database(settings) as url, scratch_folder() as folder:
                run = run_speed_layer(spark, settings, topic, url, folder, config, produced)
                check_against_truth(spark, url, folder, config.query_name, truth)
            print(f"  speed layer, {label}: {produced:,} messages in {run.seconds:.2f} s ({run.batches} batches of "
                  f"<= {max_offsets_per_trigger:,}) = {run.rate:,.0f} events/s; peak RSS {run.memory}; steps: "
                  f"{run.steps()}", flush=True)
            return run

        def land_only(label: str) -> Throughput:
            with fresh_database(settings) as url, scratch_folder() as folder:
                run = run_speed_layer(spark, settings, topic, url, folder, config, produced, LandOnly)
                landed = spark.read.parquet(str(folder / "landing")).count()
            if landed != truth.messages:
                sys.exit(f"the floor landed {landed:,} events, truth {truth.messages:,}")
            print(f"  floor (the stream without its totals), {label}: {run.seconds:.2f} s = {run.rate:,.0f} events/s; "
                  f"peak RSS {run.memory}; lake {run.step_seconds[LAKE]:.1f} s", flush=True)
            return run

        warm_up_speed_layer(spark, settings, config, event_rate)
        first = drain("first run")
        floor_first = land_only("first run")
        reference_timings, valid = time_warm(lambda: parse_and_count(spark, settings, topic), repeats=2)
        if valid != truth.messages:
            sys.exit(f"reference counted {valid:,} valid messages, truth {truth.messages:,}")
        reference_rate = produced / reference_timings.best
        print(f"  reference (read + from_json + count): {reference_timings} = {reference_rate:,.0f} events/s",
              flush=True)
        floors = (floor_first, land_only("second run"))
        result = CatchUp(first, drain("second run"), reference_rate, floors)
        floor_rate = result.floor_rate
        print(f"  floor, best of 2: {floor_rate:,.0f} events/s, ratio {floor_rate / reference_rate:.2f} to the reference"
              + ("; THE FLOOR IS BROKEN: the speed layer beat it" if result.floor_broken else ""), flush=True)
        print(f"  speed layer, best of 2: {result.best.rate:,.0f} events/s; ratio {result.best.rate / reference_rate:.2f}"
              f", {result.best.rate / floor_rate:.2f} of the floor (first run {first.rate / floor_rate:.2f}); ceiling "
              f"{result.best.ceiling(reference_rate):,.0f} events/s", flush=True)
    # Native memory the JVM took meanwhile may stay (BENCHMARKS.md, Memory).
    spark.sparkContext._jvm.System.gc()
    return result


# Freshness --------------------------------------------------------------------------------------


def produce_paced(bootstrap: str, topic: str, rate: float, seconds: float, sent_path: str,
                  clock_offset: float = 0.0) -> None:
    """Send `rate` messages/s for `seconds`, each stamped with its send time minus `clock_offset` seconds
    (a backfill replayed at a live pace); save what was sent (.npz)."""
    from confluent_kafka import Producer

    # The simulator's tuning with a short linger: here latency matters more than batch size.
    producer = Producer({**PRODUCER_TUNING, "linger.ms": 5, "bootstrap.servers": bootstrap})
    rng = np.random.default_rng(3)
    per_tick = max(1, round(rate * TICK_SECONDS))
    total = int(seconds / TICK_SECONDS) * per_tick
    users = rng.integers(1, USERS + 1, total, dtype=np.int32)
    antennas = rng.integers(0, ANTENNAS, total, dtype=np.int16)
    apps = rng.integers(0, len(APPS), total, dtype=np.int8)
    nbytes = rng.integers(1, 10_000, total, dtype=np.int32)
    user_ids, antenna_ids = [user_id(n) for n in range(USERS + 1)], [antenna_id(n) for n in range(ANTENNAS)]
    sent_at = np.empty(total)
    event_time = np.empty(total, dtype=np.int64)
    start = time.time()
    for first in range(0, total, per_tick):
        delay = start + first / per_tick * TICK_SECONDS - time.time()
        if delay > 0:
            time.sleep(delay)
        # One clock reading per tick (its events leave within ~2 ms): a Python call per event held the
        # producer below 60,000 events/s on a core it shares with Spark.
        now = time.time()
        stamp = int(now - clock_offset)
        last = min(first + per_tick, total)
        sent_at[first:last], event_time[first:last] = now, stamp
        for u, a, b, k in zip(users[first:last].tolist(), antennas[first:last].tolist(), nbytes[first:last].tolist(),
                              apps[first:last].tolist()):
            producer.produce(topic, f'{{"timestamp": {stamp}, "id": "{user_ids[u]}", "antenna_id": '
                                    f'"{antenna_ids[a]}", "bytes": {b}, "app": "{APPS[k]}"}}'.encode())
        producer.poll(0)
    if producer.flush(30):
        raise RuntimeError("the freshness producer could not deliver every message")
    np.savez(sent_path, sent_at=sent_at, antenna=antennas, user=users, app=apps, bytes=nbytes, event_time=event_time)


@dataclass(frozen=True)
class AntennaPolls:
    """bytes_agg_antenna as each poll saw it: `totals[poll, column]` of (antenna, window epoch) `columns[key]`
    (0 before the key's first row)."""

    times: np.ndarray
    totals: np.ndarray
    columns: dict[tuple[str, int], int]

    def of(self, key: tuple[str, int]) -> np.ndarray:
        column = self.columns.get(key)
        return self.totals[:, column] if column is not None else np.zeros(len(self.times), np.int64)


class AntennaTablePoller(BackgroundLoop):
    """Reads bytes_agg_antenna every POLL_SECONDS in a thread; `polls()` once stopped. Each poll is kept as two
    small arrays: as a dict of its rows it was ~70 MiB of this process in 90 s at 10 polls a second, counted in
    the benchmarks' peak RSS of the stream (their driver is this process)."""

    def __init__(self, postgres_url: str):
        super().__init__("antenna-poller")
        self.url = postgres_url
        self._times: list[float] = []
        self._rows: list[tuple[np.ndarray, np.ndarray]] = []  # per poll: columns, totals
        self._columns: dict[tuple[str, int], int] = {}

    def _run(self, stop: threading.Event) -> None:
        with closing(psycopg2.connect(self.url)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("SELECT antenna_id, EXTRACT(EPOCH FROM date)::bigint, sum_antenna_bytes "
                                "FROM bytes_agg_antenna")
                    rows = cur.fetchall()
                    polled_at = time.time()
                    columns = [self._columns.setdefault((a, d), len(self._columns)) for a, d, _ in rows]
                    self._rows.append((np.array(columns, np.int32), np.array([v for *_, v in rows], np.int64)))
                    self._times.append(polled_at)
                    stop.wait(POLL_SECONDS)

    def polls(self) -> AntennaPolls:
        totals = np.zeros((len(self._rows), len(self._columns)), np.int64)
        for poll, (columns, values) in enumerate(self._rows):
            totals[poll, columns] = values
        return AntennaPolls(np.array(self._times), totals, dict(self._columns))


def latencies(sent_path: Path, polls: AntennaPolls) -> np.ndarray:
    """Seconds from send to first visibility of each event, in send order (inf: never seen)."""
    sent = np.load(sent_path)
    sent_at, nbytes = sent["sent_at"], sent["bytes"].astype(np.int64)
    window = sent["event_time"] // WINDOW_SECONDS * WINDOW_SECONDS
    group = sent["antenna"].astype(np.int64) * (1 << 40) + window  # one group per (antenna, window)
    order = np.argsort(group, kind="stable")  # by group, in send order within each
    grouped, running = group[order], np.cumsum(nbytes[order])
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    ends = np.r_[starts[1:], len(order)]
    running -= np.repeat(running[starts] - nbytes[order][starts], ends - starts)  # each window's running sum
    antenna_ids = [antenna_id(n) for n in range(ANTENNAS)]
    visible_at = np.full(len(sent_at), np.inf)
    for first, end in zip(starts.tolist(), ends.tolist()):
        a, w = divmod(int(grouped[first]), 1 << 40)
        totals = np.maximum.accumulate(polls.of((antenna_ids[a], w)))
        first_poll = np.searchsorted(totals, running[first:end], side="left")
        seen = first_poll < len(polls.times)
        visible_at[order[first:end][seen]] = polls.times[first_poll[seen]]
    return visible_at - sent_at


def freshness(spark, settings: Settings, trigger_interval: str, rate: float, seconds: float,
              layer_class: type[SpeedLayer] = SpeedLayer) -> Freshness:
    with scratch_topic(settings, "fresh") as topic, fresh_database(settings) as url, scratch_folder() as folder:
        config = SpeedLayerConfig(trigger_interval=trigger_interval, query_name=topic.replace("-", "_"))
        layer = layer_class(spark, config, targets(settings, topic, url, folder))
        sent_path = folder / "sent.npz"
        producer = multiprocessing.get_context("spawn").Process(
            target=produce_paced, args=(settings.kafka_bootstrap, topic, rate, seconds, str(sent_path)),
            name="freshness-producer", daemon=True)
        with AntennaTablePoller(url) as poller, streaming_process_memory() as memory:
            producer.start()
            # Stop a few seconds after the producer, so its last events can become visible.
            stop_at: list[float] = []

            def should_stop() -> bool:
                if producer.exitcode is not None and not stop_at:
                    stop_at.append(time.monotonic() + 10)
                return bool(stop_at) and time.monotonic() >= stop_at[0]

            run_until_stopped(layer, should_stop=should_stop, poll_seconds=0.5)
        if producer.exitcode != 0:
            sys.exit(f"the freshness producer failed (exit code {producer.exitcode})")
        latency = latencies(sent_path, poller.polls())
        latency = latency[np.isfinite(latency)]
        events = len(np.load(sent_path)["sent_at"])
    result = Freshness(trigger_interval, events, len(latency), float(np.percentile(latency, 50)),
                       float(np.percentile(latency, 99)), float(latency.max()), memory.peak)
    print(f"  {'floor ' if layer_class is TotalsOnly else ''}freshness, trigger {trigger_interval}, {rate:,.0f} events/s for {seconds:g} s: {result.visible:,} of "
          f"{result.events:,} events seen; p50 {result.p50:.2f} s, p99 {result.p99:.2f} s, max {result.max:.2f} s; "
          f"peak RSS {result.memory}", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_speed_layer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5_000_000, help="messages preloaded (default 5,000,000)")
    parser.add_argument("--max-offsets-per-trigger", type=int, default=SpeedLayerConfig().max_offsets_per_trigger,
                        help="micro-batch size limit (default: the speed layer's)")
    parser.add_argument("--backlog-rate", type=float, default=20_000,
                        help="events per second of event time in the backlog (default 20,000: an outage under live "
                             "traffic); 0: a backfill's shape, one message per user per minute")
    parser.add_argument("--rate", type=float, default=20_000, help="freshness: events/s (default 20,000)")
    parser.add_argument("--seconds", type=float, default=75, help="freshness: seconds of load per trigger")
    parser.add_argument("--triggers", default=TRIGGERS, help="freshness: trigger intervals to try")
    parser.add_argument("--quick", action="store_true",
                        help="300,000 messages; 20 s of freshness load at the default trigger only")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    messages, seconds, triggers = args.messages, args.seconds, [t for t in args.triggers.split(",") if t]
    if args.quick:
        messages, seconds, triggers = 300_000, 20, [DEFAULT_TRIGGER]
    settings = Settings.from_env()
    spark = spark_session()
    print(f"speed layer throughput, {messages:,} messages:", flush=True)
    catch_up = throughput(spark, settings, messages, args.max_offsets_per_trigger, args.backlog_rate)
    run, first, reference_rate, floor_rate = catch_up.best, catch_up.first, catch_up.reference_rate, catch_up.floor_rate
    fresh, fresh_floors = [], []
    for trigger in triggers:  # each trigger's floor right after it, in the same warm session
        fresh.append(freshness(spark, settings, trigger, args.rate, seconds))
        fresh_floors.append(freshness(spark, settings, trigger, args.rate, seconds, TotalsOnly))
    spark.stop()

    peak = max([first, catch_up.second, *fresh], key=lambda r: r.memory.total)
    command = cluster_settings(settings) + "python -m bench.bench_speed_layer" + (" --quick" if args.quick else (
        f" --messages {messages} --max-offsets-per-trigger {args.max_offsets_per_trigger}"
        f" --backlog-rate {args.backlog_rate:g} --rate {args.rate:g}"
        f" --seconds {seconds:g}" + (f" --triggers '{args.triggers}'" if args.triggers != TRIGGERS else "")))
    freshness_text = "; ".join(f"{f.p50:.2f} / {f.p99:.2f} s ({f.trigger}, {args.rate:,.0f} ev/s, {f.visible:,} of "
                               f"{f.events:,} seen; floor {floor.p50:.2f} / {floor.p99:.2f} s)"
                               for f, floor in zip(fresh, fresh_floors))
    record_run(SECTION, SECTION_INTRO, TABLE_HEADER, command,
               [f"{messages:,}", f"{run.rate:,.0f} (best of 2, first {first.rate:,.0f}; {run.batches} batches; "
                                 f"{run.steps()}; ceiling {run.ceiling(reference_rate):,.0f})",
                f"{reference_rate:,.0f} (floor {floor_rate:,.0f}, ratio {floor_rate / reference_rate:.2f}"
                + ("; FLOOR BROKEN, the speed layer beat it" if catch_up.floor_broken else "")
                + f"; speed layer {run.rate / floor_rate:.2f} of the floor, first run {first.rate / floor_rate:.2f})",
                f"{run.rate / reference_rate:.2f}", freshness_text or "-",
                f"{peak.memory}; catch-up {first.memory}"], dry_run=args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
