"""The speed layer's micro-batch: parse once, then total, count and land from the same rows.

One query reads Kafka; each micro-batch (`foreachBatch`) parses the JSON once, keeps the result
in memory, and from it
  1. adds the batch's partial 5-minute sums to the speed tables, stores its dead letters and
     records the batch id as applied, all in one PostgreSQL transaction;
  2. writes the valid events to the lake, into a `batch=<id>` partition under their UTC
     year/month/day/hour (a replay overwrites exactly that partition), then records the batch
     as landed. A live-sized batch (`lake_write_behind_max_messages`) does this while the next
     batch runs, which writes its own files only after: batches land in order.
A crash at any point replays the batch with the same offsets: an applied batch is only landed
again, a landed one is skipped, so nothing is added twice and nothing is missing from the lake. A
batch whose files were being written behind the next is no longer in the checkpoint to replay:
the next start writes them from Kafka first, from the ledger's offsets (`land_unlanded`).
A window's running total is visible as soon as its batch commits (seconds), not when it closes.
"""

from __future__ import annotations

import json
import logging
import math
import posixpath
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Mapping, TypeVar
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import tenacity
from pyspark import InheritableThread, StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQuery

from antenna_assets.kafka_client import TopicIdentity, describe_topic
from antenna_assets.speed.ledger import (LANDED, BatchKey, MicroBatchResult, Offsets, TopicMismatch, apply_micro_batch,
                                      batch_planned_at, batch_state, claim_unidentified_marks, describe_offsets,
                                      mark_landed, max_event_time, offset_marks, record_failure, unlanded_batches,
                                      verify_topic)
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.sources.user_metadata import read_live
from antenna_assets.postgres import KeptConnection
from antenna_assets.speed.config import SpeedLayerConfig, parse_duration
from antenna_assets.speed.dead_letters import BatchDeadLetters, as_cached
from antenna_assets.speed.heartbeat import Heartbeat
from antenna_assets.hours import epoch_seconds, utc_from_epoch_seconds, utc_now
from antenna_assets.speed.watermark import BatchWatermark
from antenna_assets.transforms.aggregates import MESSAGES
from antenna_assets.transforms.devices import (LAKE_PARTITION_COLUMNS, WATERMARK_TIME, parse_device_messages,
                                               valid_events,
                                               with_lake_partitions)
from antenna_assets.transforms.micro_batch import (KAFKA_FIRST_OFFSET, KAFKA_OFFSET, KAFKA_PARTITION, PER_PARTITION,
                                                   micro_batch_summary, overflowed, rejected_bytes,
                                                   rejected_count)

BATCH_PARTITION = "batch"
# The steps of a micro-batch: the Spark jobs of its sums and dead letters (Kafka read and parse
# included), their PostgreSQL transaction, the lake write.
SPARK_TOTALS, POSTGRES, LAKE = "spark_totals", "postgres", "lake"
STEPS = (SPARK_TOTALS, POSTGRES, LAKE)
SPEED_TABLES = (BYTES_AGG_ANTENNA, BYTES_AGG_USER, BYTES_AGG_APP)
Planned = TypeVar("Planned")
# A local checkpoint through Hadoop's FileSystem API, not its FileContext (Spark's default): the FileContext
# always takes Hadoop's own local file system, not the java.nio one of resources/spark.py, and runs `readlink`
# as a process for every file status Spark asks for; with `chmod`, ~20 processes and ~70 ms of Spark's two
# checkpoint commits in every micro-batch (BENCHMARKS.md, Speed layer).
CHECKPOINT_FILE_MANAGER = "spark.sql.streaming.checkpointFileManagerClass"
FILE_SYSTEM_CHECKPOINTS = "org.apache.spark.sql.execution.streaming.checkpointing.FileSystemBasedCheckpointFileManager"


@dataclass(frozen=True)
class SpeedLayerTargets:
    """Where the speed layer reads and writes."""

    kafka_bootstrap: str
    topic: str
    landing_path: str
    checkpoint_path: str
    postgres_url: str
    # Spark's `kafka.` options (kafka_client.spark_kafka_options): the cluster's security. Out of the
    # repr, as they may hold the SASL password; Spark keeps them in the driver.
    kafka_options: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The same cluster's librdkafka properties (kafka_client.librdkafka_config), for the admin requests
    # that check the topic's identity; empty: `kafka_bootstrap` in plaintext. Out of the repr likewise.
    kafka_client: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def admin_config(self) -> dict[str, str]:
        return {"bootstrap.servers": self.kafka_bootstrap, **self.kafka_client}
    # Where dead letters too large for PostgreSQL go (speed/dead_letters.py); empty: `dead_letter` beside
    # the landing folder.
    dead_letter_path: str = ""

    @property
    def dead_letters_root(self) -> str:
        return self.dead_letter_path or posixpath.join(posixpath.dirname(self.landing_path.rstrip("/")), "dead_letter")


@dataclass(frozen=True)
class UserDirectory:
    """user_metadata as read at one time: the lake's enrichment (id, email) and the known ids."""

    frame: DataFrame
    ids: pa.Array


@dataclass
class SpeedLayerStats:
    """Counters since the query started (this process only), for progress reports."""

    batches: int = 0
    skipped_batches: int = 0
    good_messages: int = 0
    bad_messages: int = 0
    late_messages: int = 0
    unknown_user_messages: int = 0
    max_event_time: datetime | None = None
    topic_checks: int = 0  # the topic's identity asked of Kafka: at the first batch, then only below a mark
    recovered_batches: int = 0  # applied batches an earlier run left without lake files, written from Kafka
    # Wall seconds per step of the micro-batches (SPARK_TOTALS, POSTGRES, LAKE): where the time goes.
    step_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STEPS, 0.0))

    @contextmanager
    def timing(self, step: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.step_seconds[step] += time.perf_counter() - started


class SpeedLayer:
    def __init__(self, spark: SparkSession, config: SpeedLayerConfig, targets: SpeedLayerTargets):
        self.spark = spark
        self.config = config
        self.targets = targets
        self.window = parse_duration(config.window)
        self.watermark_delay = parse_duration(config.watermark)
        self.max_watermark_advance = parse_duration(config.max_watermark_advance)
        self._identity: TopicIdentity | None = None  # the topic's, checked at the query's first batch
        self.stats = SpeedLayerStats()
        self.postgres = KeptConnection(targets.postgres_url)  # three transactions a batch, one login
        # The landed mark of a batch landing behind the next, written from its thread while the batch's own
        # thread uses `postgres`.
        self._landing_postgres = KeptConnection(targets.postgres_url)
        self._behind: _LandingBehind | None = None
        self._user_metadata: UserDirectory | None = None
        self._user_metadata_read_at = float("-inf")
        self.failure: str | None = None  # set when a micro-batch failed every attempt

    def _kafka(self, reader):
        """`reader` (Spark's stream or batch reader) on the topic's cluster, with the stream's client options."""
        return (reader.format("kafka")
                .options(**{"kafka.bootstrap.servers": self.targets.kafka_bootstrap, **self.targets.kafka_options})
                .option("kafka.max.partition.fetch.bytes", str(8 * 1024 * 1024))
                .option("kafka.fetch.max.wait.ms", str(self.config.kafka_fetch_max_wait_ms))
                .option("kafka.default.api.timeout.ms", str(self.config.kafka_api_timeout_ms))
                .option("kafka.request.timeout.ms", str(self.config.kafka_api_timeout_ms)))

    def kafka_stream(self) -> DataFrame:
        reader = (self._kafka(self.spark.readStream)
                  .option("subscribe", self.targets.topic)
                  .option("startingOffsets", self.config.starting_offsets)
                  .option("failOnDataLoss", str(self.config.fail_on_data_loss).lower())
                  .option("fetchOffset.numRetries", str(self.config.kafka_offset_fetch_attempts)))
        # More tasks than topic partitions: 3 partitions on 2 cores left a core idle for a third of each read.
        min_partitions = self.config.kafka_min_partitions or 2 * self.spark.sparkContext.defaultParallelism
        reader = reader.option("minPartitions", str(min_partitions))
        return reader.option("maxOffsetsPerTrigger", str(self.config.max_offsets_per_trigger)).load()

    def start(self) -> StreamingQuery:
        if urlparse(self.targets.checkpoint_path).scheme in ("", "file"):
            self.spark.conf.set(CHECKPOINT_FILE_MANAGER, FILE_SYSTEM_CHECKPOINTS)
        elif self.spark.conf.get(CHECKPOINT_FILE_MANAGER, None) == FILE_SYSTEM_CHECKPOINTS:
            self.spark.conf.unset(CHECKPOINT_FILE_MANAGER)  # a bucket's checkpoint keeps Spark's default
        self._identity = None  # the new query checks the topic at its first batch
        self._behind = None
        self.land_unlanded()  # before any batch lands: the landed marks advance in order
        writer = (self.kafka_stream().writeStream
                  .queryName(self.config.query_name)
                  .option("checkpointLocation", self.targets.checkpoint_path)
                  .foreachBatch(self.process_batch))
        if self.config.trigger == "available_now":
            writer = writer.trigger(availableNow=True)
        else:
            writer = writer.trigger(processingTime=self.config.trigger_interval)
        return writer.start()

    def user_metadata(self) -> UserDirectory:
        """user_metadata as of at most `metadata_refresh_seconds` ago: operators' edits are seen
        without a restart."""
        now = time.monotonic()
        if self._user_metadata is None or now - self._user_metadata_read_at >= self.config.metadata_refresh_seconds:
            with self.postgres.transaction() as conn:
                rows = [(user_id, email) for user_id, _, email, _ in read_live(conn)]
            ids = pa.array([user_id for user_id, _ in rows], pa.string())
            # Through Arrow: a DataFrame of driver rows otherwise runs a Python worker at every broadcast.
            frame = self.spark.createDataFrame(pd.DataFrame(rows, columns=["id", "email"], dtype=object),
                                               "id string, email string")
            self._user_metadata = UserDirectory(frame, ids)
            self._user_metadata_read_at = now
        return self._user_metadata

    def checkpoint_id(self) -> str:
        """The running query's id: Spark keeps it in the checkpoint, so a new checkpoint has a new one."""
        for query in self.spark.streams.active:
            if query.name == self.config.query_name:
                return query.id
        raise RuntimeError(f"no active streaming query named {self.config.query_name!r}")

    def process_batch(self, kafka_rows: DataFrame, batch_id: int) -> None:
        """Apply and land one micro-batch, retrying it `batch_attempts` times; if it still fails, record
        the failure and raise a one-line MicroBatchFailed naming the batch and its offsets."""
        key = BatchKey(self.config.query_name, self.checkpoint_id(), batch_id)

        def log_failure(state: tenacity.RetryCallState) -> None:
            logging.getLogger(__name__).warning("%s failed (attempt %d of %d): %s", key, state.attempt_number,
                                                self.config.batch_attempts, _one_line(state.outcome.exception()))

        # Any failure is retried, 1, 2, 4, ... s apart (at most 30), then reported whole.
        retrying = tenacity.Retrying(stop=tenacity.stop_after_attempt(self.config.batch_attempts),
                                     wait=tenacity.wait_exponential(max=30), after=log_failure,
                                     retry=tenacity.retry_if_not_exception_type(TopicMismatch))
        try:
            retrying(self._process, kafka_rows, key)
            return
        except tenacity.RetryError as exc:
            attempt, error = exc.last_attempt.attempt_number, _one_line(exc.last_attempt.exception())
        except TopicMismatch as exc:  # no retry can help: an operator chooses, as its line says
            attempt, error = 1, _one_line(exc)
        raise self._failed(key, attempt, self._offsets_of(kafka_rows), error)

    def _failed(self, key: BatchKey, attempts: int, offsets: str, error: str) -> "MicroBatchFailed":
        """The batch's one-line failure, recorded in streaming_failures if the database takes it."""
        self.failure = f"{key}, offsets {offsets}, failed {attempts} times: {error}"
        try:
            with self.postgres.transaction() as conn:
                record_failure(conn, key, attempts, offsets, error)
        except Exception as exc:  # noqa: BLE001 - the database may be what fails; the run still says why
            logging.getLogger(__name__).warning("could not record the failure in streaming_failures: %s", exc)
        return MicroBatchFailed(self.failure)

    @staticmethod
    def _offsets_of(kafka_rows: DataFrame) -> str:
        try:
            rows = kafka_rows.groupBy("topic", "partition").agg(F.min("offset"), F.max("offset")).collect()
        except Exception:  # noqa: BLE001 - only for the failure message
            return "unknown"
        return describe_offsets({(r[0], r[1]): (r[2], r[3]) for r in rows})

    def _verify_topic(self, key: BatchKey) -> TopicIdentity:
        """Ask Kafka for the topic's identity and end offsets and check the ledger's marks against them
        (ledger.verify_topic, which raises TopicMismatch): three admin requests, made at the query's
        first batch and for a batch with records below a mark, not on every batch."""
        kafka = describe_topic(self.targets.admin_config, self.targets.topic)
        self.stats.topic_checks += 1
        # A transaction of its own: committed even when the check stops the stream, whose line names
        # those marks by the identity they now have.
        with self.postgres.transaction() as conn:
            claim_unidentified_marks(conn, key.query, self.targets.topic, kafka.identity)
        with self.postgres.transaction() as conn:
            note = verify_topic(conn, key.query, key.checkpoint_id, self.targets.topic, kafka)
        if note is not None:
            logging.getLogger(__name__).warning(note)
        self._identity = kafka.identity
        return kafka.identity

    def _process(self, kafka_rows: DataFrame, key: BatchKey) -> None:
        identity = self._identity or self._verify_topic(key)
        with self.postgres.transaction() as conn:
            state = batch_state(conn, key)
            marks = offset_marks(conn, key.query, identity)
            latest = max_event_time(conn, key.query)
            # Committed with this transaction, before the batch uses it: a replay reads the same clock.
            planned_at = batch_planned_at(conn, key, utc_now()) if state is None else None
        if state == LANDED:
            self.stats.skipped_batches += 1
            return
        user_metadata = self.user_metadata()  # one read for the whole batch: its totals and its lake rows agree
        not_applied = _not_below(marks.applied)
        parsed, summary_plan = self.cached_batch(
            kafka_rows, (lambda batch: micro_batch_summary(batch, not_applied, SPEED_TABLES, self.config.window)
                         if state is None else None))
        landing = _Landing(lambda: self._lake_frame(valid_events(parsed.where(_not_below(marks.landed))), key,
                                                    user_metadata.frame),
                           self._land, self.stats, key)
        behind: _LandingBehind | None = None
        try:
            # Totals first, lake files second: the totals are visible a Parquet write sooner. A crash
            # in between replays the batch as APPLIED, which lands it and adds nothing.
            if state is None:
                with self.stats.timing(SPARK_TOTALS):
                    summary, dead_letters = self._summary(parsed, summary_plan, not_applied, kafka_rows, key, identity)
                # Below a mark: a lost checkpoint read again (checked: the same topic), or another topic
                # now under the name; then the next attempt filters by the new topic's marks.
                if _has_records_below(summary, marks.applied) and self._verify_topic(key) != identity:
                    raise RuntimeError(f"topic {self.targets.topic!r} changed during {key}")
                # Spark's rule: the watermark a batch uses comes from the batches before it, so a replay sees the same.
                watermark = BatchWatermark(latest, planned_at, self.watermark_delay, self.max_watermark_advance)
                result = self._micro_batch_result(key, summary, dead_letters, watermark, identity, user_metadata.ids)
                self._settle_landing()  # the batch before lands first: the landed marks advance in order
                landing.start(math.ceil(result.good_messages / self.config.lake_rows_per_file))
                # The batch's one commit point: its sums, dead letters, ledger row and offsets together.
                with self.stats.timing(POSTGRES), self.postgres.transaction() as conn:
                    applied = apply_micro_batch(conn, result)
                self._count(result, applied)
                if applied and result.good_messages <= self.config.lake_write_behind_max_messages:
                    behind = _LandingBehind(landing, key, identity, parsed, kafka_rows)
                    landing.hand_off(lambda: self._record_landed(behind, self._landing_postgres))
                    self._behind = behind
                    return
            else:
                self.stats.skipped_batches += 1
                self._settle_landing()
                landing.start(None)  # the count is not known without a Spark job; as many files as the batch has tasks
            landing.wait()
        finally:
            if behind is None:
                landing.cancel()
                parsed.unpersist()
        with self.postgres.transaction() as conn:
            mark_landed(conn, key, identity)

    def _record_landed(self, behind: "_LandingBehind", postgres: KeptConnection) -> None:
        with postgres.transaction() as conn:
            mark_landed(conn, behind.key, behind.identity)
        behind.batch.unpersist()

    def _settle_landing(self) -> None:
        """The batch landing behind this one: wait for its files and its landed mark; if either failed, both
        again, here (LakeFilesFailed if that fails too: this batch's attempt fails, the next settles again)."""
        behind = self._behind
        if behind is None:
            return
        try:
            behind.landing.wait()
        except Exception as exc:  # noqa: BLE001 - done again below; that one raises
            written = behind.landing.written.is_set()
            logging.getLogger(__name__).warning("%s: %s (%s); %s", behind.key,
                                                "recording it landed failed" if written else "its lake files failed",
                                                _one_line(exc), "again" if written else "writing them again")
            try:
                if not written:
                    behind.landing.write_again()
                self._record_landed(behind, self.postgres)
            except Exception as again:  # noqa: BLE001 - named after the batch whose files they are
                raise LakeFilesFailed(behind.key, again) from again
            behind.landing.settled()
        self._behind = None

    def finish_landing(self) -> "MicroBatchFailed | None":
        """After the query: the last batch's lake files, if it landed behind, tried `batch_attempts` times in all
        (at least twice). If they still fail: the batch's failure (recorded; the next start writes its files
        from Kafka)."""
        behind = self._behind
        try:
            if behind is None:
                return None
            again = max(1, self.config.batch_attempts - 1)
            try:
                tenacity.Retrying(stop=tenacity.stop_after_attempt(again), wait=tenacity.wait_exponential(max=30),
                                  reraise=True)(self._settle_landing)
                return None
            except LakeFilesFailed as exc:
                self._behind = None
                behind.batch.unpersist()
                return self._failed(behind.key, 1 + again, self._offsets_of(behind.kafka_rows),
                                    f"{_one_line(exc.cause)}; the next start writes its lake files from Kafka")
        finally:
            self._landing_postgres.close()

    def wait_for_lake(self) -> None:
        """Returns once the last batch's lake files are written (it may land behind the next batch)."""
        behind = self._behind
        if behind is not None:
            behind.landing.join_files()

    def land_unlanded(self) -> None:
        """Write the lake files of the applied batches that earlier runs left without them (their files were
        being written behind the next batch when the run stopped), read again from Kafka between the landed
        mark and the batch's end, oldest first, each into its own batch partition, and record them landed.
        A batch the checkpoint replays is landed here too, and then skipped. Kafka is asked only when there
        is one. `start` calls it; called before, it leaves `start` one ledger query to find none."""
        with self.postgres.transaction() as conn:
            pending = unlanded_batches(conn, self.config.query_name)
        if not pending:
            return
        identity = describe_topic(self.targets.admin_config, self.targets.topic).identity
        with self.postgres.transaction() as conn:
            marks = offset_marks(conn, self.config.query_name, identity)
        landed = dict(marks.landed)
        for key, end_offsets in pending:
            ranges = {tp: (landed.get(tp, 0), end) for tp, end in end_offsets.items() if end > landed.get(tp, 0)}
            shown = describe_offsets({tp: (first, end - 1) for tp, (first, end) in ranges.items()})
            if any(tp[0] != self.targets.topic or end > marks.applied.get(tp, -1) for tp, (_, end) in ranges.items()):
                # Offsets of another topic (or of this name before it was recreated): not this stream's to land.
                logging.getLogger(__name__).warning("%s is not landed, but its offsets %s are not of topic %r as "
                                                    "the ledger's marks know it: left as it is", key, shown,
                                                    self.targets.topic)
                continue
            if ranges:
                events = valid_events(parse_device_messages(self._kafka_range(ranges), self.config.message_rules()))
                with self.stats.timing(LAKE):
                    self._land(self._lake_frame(events, key, self.user_metadata().frame), None)
            with self.postgres.transaction() as conn:
                mark_landed(conn, key, identity)
            landed.update({tp: end for tp, (_, end) in ranges.items()})
            self.stats.recovered_batches += 1
            logging.getLogger(__name__).warning("%s was applied but not landed: its lake files written from Kafka "
                                                "(%s)", key, shown)

    def _kafka_range(self, ranges: dict[tuple[str, int], tuple[int, int]]) -> DataFrame:
        """The topic's records in [start, end) of each partition, as the stream reads them. A partition's
        first mark is 0: records Kafka deleted before the stream read them were never the stream's."""
        topic = self.targets.topic
        partitions = {str(p): bounds for (_, p), bounds in ranges.items()}
        return (self._kafka(self.spark.read)
                .option("assign", json.dumps({topic: [int(p) for p in partitions]}))
                .option("startingOffsets", json.dumps({topic: {p: start for p, (start, _) in partitions.items()}}))
                .option("endingOffsets", json.dumps({topic: {p: end for p, (_, end) in partitions.items()}}))
                .option("failOnDataLoss", "false")
                .load())

    def batch_settings(self, kafka_rows: DataFrame) -> DataFrame:
        """`kafka_rows` with the micro-batch's Spark settings applied to its session. Shared with
        bench_speed_layer's floors, whose batches must run as the speed layer's do."""
        # The batch's own session (Spark's copy for the query): its few thousand partial sums need no more
        # partitions than cores, and every partition more was a task in each of its two shuffles.
        shuffle_partitions = self.config.shuffle_partitions or self.spark.sparkContext.defaultParallelism
        kafka_rows.sparkSession.conf.set("spark.sql.shuffle.partitions", str(shuffle_partitions))
        kafka_rows.sparkSession.conf.set("spark.sql.adaptive.enabled", str(self.config.adaptive_execution).lower())
        return kafka_rows

    def cached_batch(self, kafka_rows: DataFrame, plan: Callable[[DataFrame], Planned] = lambda batch: None
                     ) -> tuple[DataFrame, Planned]:
        """The micro-batch parsed once and cached for its steps (the caller unpersists it), with the batch's
        Spark settings, and `plan(batch)`: built while Spark registers the cache, which plans the batch's
        whole parse. A plan needs no cache to be built (its job, run later, reads it): a 10,000-record batch's
        plans took 213 ms instead of 263, and freshness p99 at 20,000 events/s went 1.47 -> 1.23 s with the
        cache's one step (BENCHMARKS.md, Performance round 3). Shared with bench_speed_layer's floor, which
        lands the batch and does nothing else."""
        batch = as_cached(parse_device_messages(self.batch_settings(kafka_rows), self.config.message_rules()),
                          self.config.dead_letter_inline_bytes)
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-batch") as pool:
                # Deserialized and (spark_session) uncompressed: it lives for one batch; see BENCHMARKS.md.
                persisting = pool.submit(batch.persist, StorageLevel.MEMORY_AND_DISK_DESER)
                planned = plan(batch)
            persisting.result()
        except BaseException:
            batch.unpersist()  # the pool waited for persist: no failed attempt leaves its batch cached
            raise
        return batch, planned

    def _lake_frame(self, events: DataFrame, key: BatchKey, user_metadata: DataFrame) -> DataFrame:
        """The batch's lake rows: enriched, with their hour and batch partition columns."""
        # Joined here, not before caching the batch: measured 1.4 s per million messages cheaper.
        enriched = events.join(F.broadcast(user_metadata), "id", "left")
        # Unique per checkpoint and batch: a replay overwrites its own files, another query or a new
        # checkpoint never overwrites another batch's.
        return with_lake_partitions(enriched).withColumn(BATCH_PARTITION, F.lit(f"{key.checkpoint_id}-{key.batch_id}"))

    def _land(self, lake_rows: DataFrame, files: int | None) -> None:
        if files is not None:
            # A second's batch in one task: four tasks and four files cost it ~75 ms more (BENCHMARKS.md).
            # Never more tasks: coalesce only merges the batch's partitions.
            lake_rows = lake_rows.coalesce(max(1, files))
        (lake_rows.write.mode("overwrite")
         .option("partitionOverwriteMode", "dynamic")
         .partitionBy(*LAKE_PARTITION_COLUMNS, BATCH_PARTITION)
         .parquet(self.targets.landing_path))

    def _summary(self, parsed: DataFrame, summary_plan: DataFrame, not_applied: Column, kafka_rows: DataFrame,
                 key: BatchKey, identity: TopicIdentity) -> tuple[pa.Table, BatchDeadLetters | None]:
        """What the batch adds to PostgreSQL: its `micro_batch_summary` (`summary_plan`: one Spark job,
        collected through Arrow) and, only if the summary counts some, its dead letters, read from the cache
        as the batch's transaction inserts them (speed/dead_letters.py).

        Sums and dead letters come from the records not applied yet (`not_applied`); offsets from all."""
        summary = summary_plan.toArrow()
        if overflowed(summary):  # rare: summed again exactly, as the batch layer does
            summary = micro_batch_summary(parsed, not_applied, SPEED_TABLES, self.config.window, exact=True).toArrow()
        rejected = rejected_count(summary)
        if not rejected:
            return summary, None
        return summary, BatchDeadLetters(parsed.where(not_applied), kafka_rows, rejected, rejected_bytes(summary),
                                         self.targets.dead_letters_root, f"{key.checkpoint_id}-{key.batch_id}",
                                         self.config.dead_letter_inline_bytes, self.config.dead_letter_page_bytes,
                                         identity)

    def _micro_batch_result(self, key: BatchKey, summary: pa.Table, dead_letters: BatchDeadLetters | None,
                            watermark: BatchWatermark, identity: TopicIdentity,
                            known_ids: pa.Array) -> MicroBatchResult:
        kind = summary.column("table")
        partitions = summary.filter(pc.equal(kind, PER_PARTITION)).select(
            ["topic", KAFKA_PARTITION, KAFKA_OFFSET, WATERMARK_TIME]).to_pylist()
        end_offsets: Offsets = {(row["topic"], row[KAFKA_PARTITION]): row[KAFKA_OFFSET] + 1 for row in partitions}
        newest = max((row[WATERMARK_TIME] for row in partitions if row[WATERMARK_TIME] is not None), default=None)
        # Arrow from here to PostgreSQL's COPY: a backfill batch has ~400k partial sums per million
        # messages, and making a Python row of each cost half as much again as PostgreSQL's upsert.
        sums = summary.filter(pc.not_equal(kind, PER_PARTITION))
        window_start = sums.column("date")
        # No watermark yet: no window is closed.
        cutoff = epoch_seconds(watermark.watermark) if watermark.watermark is not None else float("-inf")
        closed = pc.less_equal(pc.add(window_start, int(self.window.total_seconds())), cutoff)
        open_sums = sums.filter(pc.invert(closed))
        increments = {table: open_sums.filter(pc.equal(open_sums.column("table"), table.name))
                      .select(["key", "date", "bytes"]) for table in SPEED_TABLES}
        is_app = pc.equal(sums.column("table"), BYTES_AGG_APP.name)  # every valid event is in exactly one app row
        apps = sums.filter(is_app)
        hours = np.unique(apps.column("date").to_numpy() // 3600 * 3600).tolist()
        # Here, not in Spark: the batch's per-user rows already count each id's messages.
        users = sums.filter(pc.equal(sums.column("table"), BYTES_AGG_USER.name))
        unknown = pc.sum(users.filter(pc.invert(pc.is_in(users.column("key"), value_set=known_ids)))
                         .column(MESSAGES)).as_py() or 0
        return MicroBatchResult(key=key, increments=increments, dead_letters=dead_letters or (),
                                good_messages=pc.sum(apps.column(MESSAGES)).as_py() or 0,
                                bad_messages=dead_letters.records if dead_letters else 0,
                                late_messages=pc.sum(sums.filter(pc.and_(is_app, closed)).column(MESSAGES)).as_py() or 0,
                                max_event_time=watermark.contribution(utc_from_epoch_seconds(newest)),
                                end_offsets=end_offsets, identity=identity,
                                landed_hours=[utc_from_epoch_seconds(h) for h in hours],
                                unknown_user_messages=unknown)

    def _count(self, result: MicroBatchResult, applied: bool) -> None:
        if not applied:
            self.stats.skipped_batches += 1
            return
        self.stats.batches += 1
        self.stats.good_messages += result.good_messages
        self.stats.bad_messages += result.bad_messages
        self.stats.late_messages += result.late_messages
        self.stats.unknown_user_messages += result.unknown_user_messages
        if result.max_event_time is not None:
            self.stats.max_event_time = max(filter(None, (self.stats.max_event_time, result.max_event_time)))


class _Landing:
    """A batch's lake write in a thread of its own: its Spark plan is built while the sums' Spark job
    runs, and its job starts as soon as the batch's result is made from that job's sums, while the driver
    commits them to PostgreSQL (BENCHMARKS.md, Speed layer). Not earlier: two jobs at once share two cores,
    and the sums, which the freshness waits for, were a third slower. Then either the batch waits for it
    (`wait`), or it goes on behind the next batch and records the batch landed itself (`hand_off`).

    Behind the next batch, a step that fails (the files, the landed mark) is tried again in the thread (waits
    of 1, 2, 4 ... up to 30 s) until it succeeds or the next batch, or the query's end, takes it over (`wait`):
    a stream whose topic stays quiet runs no next batch, and one failed try (the first transaction on a
    connection PostgreSQL dropped while restarting, a storage outage) had left the batch unlanded for as long.
    A batch that waits for its files fails with them, and its attempt is tried again."""

    def __init__(self, lake_frame: Callable[[], DataFrame], land: Callable[[DataFrame, int | None], None],
                 stats: SpeedLayerStats, key: BatchKey):
        self._lake_frame, self._land, self._stats, self._key = lake_frame, land, stats, key
        self._frame: DataFrame | None = None
        self._files: queue.Queue = queue.Queue(maxsize=1)
        self._then: queue.Queue = queue.Queue(maxsize=1)  # after the files: a callable, or None
        self._requested: int | None = None
        self._started = self._told = False
        self._error: BaseException | None = None
        self.written = threading.Event()
        self.taken_over = threading.Event()  # the batch's thread waits for this one: what still fails is its to do
        # Inheritable: the batch's Spark properties (its streaming query and batch) follow it into the thread.
        self._thread = InheritableThread(target=self._run, name="lake-write")
        self._thread.start()

    def _run(self) -> None:
        try:
            self._frame = self._lake_frame()  # overlaps the sums' Spark job, so not counted in LAKE
            files = self._files.get()
            if files is _CANCELLED:
                return
            try:
                self._write(files)
                self.written.set()
            except Exception as exc:  # noqa: BLE001 - the batch decides below whose it is to try again
                failed: Exception | None = exc
            else:
                failed = None
            then = self._then.get()  # the batch waits for the files (None), or goes on behind the next
            if failed is not None:
                if then is None:
                    raise failed  # the batch's own failure: its attempt fails and is tried again
                logging.getLogger(__name__).warning("%s: writing its lake files failed (%s); trying again", self._key,
                                                    _one_line(failed))
                self._until_taken_over("writing its lake files", self._write, files)
                self.written.set()
            if then is not None:
                self._until_taken_over("recording it landed", then)
        except BaseException as exc:  # noqa: BLE001 - raised in the batch's own thread by wait()
            self._error = exc

    def _until_taken_over(self, step: str, work: Callable, *args) -> None:
        def log_failure(state: tenacity.RetryCallState) -> None:
            logging.getLogger(__name__).warning("%s: %s failed (%s); trying again in %.0f s", self._key, step,
                                                _one_line(state.outcome.exception()), state.upcoming_sleep)

        tenacity.Retrying(stop=tenacity.stop_when_event_set(self.taken_over), wait=tenacity.wait_exponential(max=30),
                          sleep=self.taken_over.wait, before_sleep=log_failure, reraise=True)(work, *args)

    def _write(self, files: int | None) -> None:
        with self._stats.timing(LAKE):
            self._land(self._frame, files)

    def start(self, files: int | None) -> None:
        """Write the lake files now, in about `files` files (None: one per task)."""
        self._requested, self._started = files, True
        self._files.put(files)

    def hand_off(self, landed: Callable[[], None]) -> None:
        """Let the write go on after this batch: `landed` is called in the thread once the files are written."""
        self._told = True
        self._then.put(landed)

    def join_files(self) -> None:
        """Returns once the files are written, or the thread has ended without them."""
        while not self.written.wait(0.1) and self._thread.is_alive():
            pass

    def wait(self) -> None:
        if not self._told:
            self._told = True
            self._then.put(None)
        self.taken_over.set()
        self._thread.join()
        if self._error is not None:
            raise self._error

    def write_again(self) -> None:
        """After a failed `wait`: the same files, written in the caller's thread. `wait` raises until `settled`."""
        self._thread.join()
        try:
            if self._frame is None:
                self._frame = self._lake_frame()
            self._write(self._requested)
        except BaseException as exc:
            self._error = exc
            raise
        self.written.set()

    def settled(self) -> None:
        """The files written again and the batch recorded landed by the caller."""
        self._error = None

    def cancel(self) -> None:
        """Nothing is written if `start` was not called; returns once the thread has ended."""
        if not self._started:
            self._started = True
            self._files.put(_CANCELLED)
        if not self._told:
            self._told = True
            self._then.put(None)
        self.taken_over.set()
        self._thread.join()


@dataclass(frozen=True)
class _LandingBehind:
    """An applied batch whose lake files are being written while the next batch runs; its cache is kept
    until they are."""

    landing: _Landing
    key: BatchKey
    identity: TopicIdentity
    batch: DataFrame
    kafka_rows: DataFrame  # for its offsets, should its files fail for good


_CANCELLED = object()


class MicroBatchFailed(RuntimeError):
    """A micro-batch failed every attempt; the message names it, its offsets and the last error."""


class LakeFilesFailed(RuntimeError):
    """The lake files of a batch that landed behind the next could not be written again."""

    def __init__(self, key: BatchKey, cause: BaseException):
        super().__init__(f"the lake files of {key}: {_one_line(cause)}")
        self.cause = cause


class StreamFailed(RuntimeError):
    """The query stopped with an error outside the micro-batches (e.g. Kafka refused the credentials);
    the message is Spark's first line."""


def _not_below(marks: Offsets) -> Column:
    """Records at or past their partition's mark (all records of a partition without one)."""
    if not marks:
        return F.lit(True)
    # The marks go in as one map literal: Spark's generated code inlines numbers but refers to maps, so a
    # batch's new offsets compile no new code (as numbers, 8 classes a batch, ~125 ms, BENCHMARKS.md).
    # One SQL expression, one call into the JVM. A Kafka partition number holds no ':', so keys are unique.
    entries = ", ".join(f"{_sql_string(f'{topic}:{int(partition)}')}, {int(until)}L"
                        for (topic, partition), until in marks.items())
    return F.expr(f"`offset` >= coalesce(map({entries})[concat(`topic`, ':', `partition`)], 0L)")


def _has_records_below(summary: pa.Table, marks: Offsets) -> bool:
    """Whether a collected `micro_batch_summary` has records below their partition's mark."""
    partitions = summary.filter(pc.equal(summary.column("table"), PER_PARTITION))
    return any(row[KAFKA_FIRST_OFFSET] < marks.get((row["topic"], row[KAFKA_PARTITION]), 0)
               for row in partitions.select(["topic", KAFKA_PARTITION, KAFKA_FIRST_OFFSET]).to_pylist())


def _sql_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:2000]


def kafka_lag(query: StreamingQuery) -> int | None:
    """Messages in Kafka not yet processed, from the last progress report."""
    progress = query.lastProgress
    if not progress:
        return None
    lag = 0
    for source in progress.get("sources", []):
        end, latest = source.get("endOffset"), source.get("latestOffset")
        if not isinstance(end, dict) or not isinstance(latest, dict):
            return None
        for topic, partitions in latest.items():
            for partition, offset in partitions.items():
                lag += max(0, int(offset) - int(end.get(topic, {}).get(partition, 0)))
    return lag


def run_until_stopped(layer: SpeedLayer, on_progress: Callable[[StreamingQuery, SpeedLayer], None] | None = None,
                      should_stop: Callable[[], bool] | None = None, poll_seconds: float = 1.0,
                      heartbeat: Heartbeat | None = None) -> StreamingQuery:
    """Start the query and wait for it: until the topic is drained (available_now), `should_stop()`,
    an interrupt, or an error, which is raised. `on_progress` is called every
    `progress_interval_seconds` and once at the end; `heartbeat` beats from this loop, not from the
    micro-batches, so a long batch is not taken for a dead run (RunDeclaredDead stops the query)."""
    from pyspark.errors import StreamingQueryException

    if heartbeat is not None:
        with heartbeat.beating():  # after an outage, landing what earlier runs left can outlast the limit
            layer.land_unlanded()
        # A run declared dead since its last beat has a successor already, and must not start a query beside it.
        heartbeat.beat()
    query = layer.start()
    next_report = time.monotonic() + layer.config.progress_interval_seconds
    try:
        # Short waits keep a termination request (SIGTERM from Dagster, Ctrl-C) answered within a second.
        while not query.awaitTermination(poll_seconds):
            if heartbeat is not None:
                heartbeat.beat_if_due()
            if on_progress is not None and time.monotonic() >= next_report:
                next_report = time.monotonic() + layer.config.progress_interval_seconds
                on_progress(query, layer)
            if should_stop is not None and should_stop():
                break
    except StreamingQueryException as exc:
        if layer.failure is not None:  # Spark wraps it in pages of JVM trace; the one line is ours
            raise MicroBatchFailed(layer.failure) from None
        # Spark's message goes on with the query's state and plan; its first line says what failed.
        first_line = str(exc).partition("\n")[0]
        raise StreamFailed(f"speed layer query {layer.config.query_name!r} failed: {first_line}") from exc
    finally:
        _stop(query)
        landing_failed = layer.finish_landing()
        layer.postgres.close()
    if landing_failed is not None:
        raise landing_failed
    if on_progress is not None:
        on_progress(query, layer)
    return query


def _stop(query: StreamingQuery) -> None:
    """Stop the query if it still runs. Reached on an interrupt, whose exception must win: stopping
    a query mid-batch can itself fail (the batch is cut short), and the checkpoint replays that
    batch on the next start, adding nothing twice."""
    try:
        if query.isActive:
            query.stop()
    except Exception as exc:  # noqa: BLE001 - see docstring
        logging.getLogger(__name__).warning("stopping the speed layer query: %s", exc)
