"""Settings of the speed layer, as Dagster config (also built directly by `antenna stream`)."""

import re
from datetime import timedelta
from typing import Literal

from dagster import Config
from pydantic import Field, field_validator, model_validator

from antenna_assets.sources.contract import BIGINT_MAX, MessageRules

_DURATION = re.compile(r"^\s*(\d+)\s*(millisecond|second|minute|hour|day)s?\s*$")
_UNIT_SECONDS = {"millisecond": 0.001, "second": 1, "minute": 60, "hour": 3600, "day": 86400}


def parse_duration(text: str) -> timedelta:
    """'5 minutes' -> timedelta(minutes=5), '500 milliseconds' -> timedelta(seconds=0.5); the same
    spelling Spark accepts for windows and triggers."""
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like '500 milliseconds', '30 seconds', '5 minutes' or '1 hour'")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class SpeedLayerConfig(Config):
    window: str = Field(default="5 minutes", description="event-time window of the speed tables")
    watermark: str = Field(default="1 minute", description="how late an event may be and still count in its window")
    # Not more than `watermark`: then no event at or after the watermark time already reached can be made
    # late by one batch, whatever its records' clocks say. A watermark held back only counts more events
    # in the speed tables; it catches up by this much per batch (a batch every 500 ms when live).
    max_watermark_advance: str = Field(
        default="1 minute", description="most one micro-batch may move the watermark forward (its first batch "
                                        "ever: up to the stream's clock)")
    trigger: Literal["processing_time", "available_now"] = Field(
        default="processing_time", description="processing_time: run forever; available_now: drain the topic, then stop")
    # Not 1 second: a micro-batch at 20,000 events/s now takes ~0.6-0.7 s, and the next starts as soon as it
    # ends instead of at the next whole second (freshness p99 ~1.3-1.7 s instead of ~2.1, BENCHMARKS.md).
    trigger_interval: str = Field(default="500 milliseconds",
                                  description="micro-batch interval of the processing_time trigger")
    max_offsets_per_trigger: int = Field(default=1_000_000, ge=1, description="messages per micro-batch at most")
    kafka_min_partitions: int = Field(
        default=0, ge=0, description="Spark tasks reading Kafka per micro-batch, at least; 0: twice Spark's default parallelism")
    # Kafka's consumer keeps a fetch in flight after each poll, and the broker holds it while the partition
    # has nothing new, up to this long; Spark's next task on that (pooled) consumer waits for it before its
    # own fetch. At Kafka's default, 500 ms: ~130 ms of every batch at 500 events/s, and a 1-1.3 s batch
    # whenever traffic pauses (BENCHMARKS.md, Performance round 3).
    kafka_fetch_max_wait_ms: int = Field(
        default=10, ge=0, description="longest the broker holds a fetch of the stream's Kafka consumers waiting for "
                                      "new records (Kafka's fetch.max.wait.ms)")
    # The driver's Kafka admin client asks the partitions' leaders for the latest offsets. After a broker
    # died, a call waited for a node the whole of Kafka's default 60 s before Spark tried again with a new
    # client: ~70 s without a batch on a three-node cluster, ~28 s at 15 s (BENCHMARKS.md, Faults on the
    # clusters). More attempts keep the patience of Kafka's defaults (3 x 60 s) for a broker that is down:
    # the query fails only after about attempts x timeout.
    kafka_api_timeout_ms: int = Field(
        default=15_000, ge=1_000, description="longest a Kafka call of the stream waits for its answer (Kafka's "
                                              "default.api.timeout.ms and request.timeout.ms)")
    kafka_offset_fetch_attempts: int = Field(
        default=12, ge=1, description="tries of the driver's request for the latest offsets, each with a new Kafka "
                                      "client, before the query fails (Spark's fetchOffset.numRetries)")
    shuffle_partitions: int = Field(
        default=0, ge=0, description="partitions of a micro-batch's shuffles (its sums); 0: Spark's default parallelism")
    adaptive_execution: bool = Field(
        default=False, description="Spark's adaptive query execution in the micro-batches; off, a batch's sums are one "
                                   "Spark job instead of one per stage (~0.1 s less per batch, BENCHMARKS.md)")
    lake_rows_per_file: int = Field(
        default=250_000, ge=1, description="valid messages per lake file a micro-batch writes, about: a small batch "
                                           "writes one file in one task")
    # A live batch's lake write (~0.1-0.2 s at 20,000 events/s) was a fifth of the time between batches, and
    # an event waits for the next batch: freshness p99 1.7-2.5 s with it, 1.2-1.5 s without it in alternated
    # runs (BENCHMARKS.md, Performance round 3). A catch-up batch of a million lands before the next, so two
    # are never cached at once.
    lake_write_behind_max_messages: int = Field(
        default=100_000, ge=0, description="a micro-batch of at most this many valid messages writes its lake files "
                                           "while the next batch runs (its totals are committed first; files a "
                                           "stopped run did not finish are written from Kafka at the next start); "
                                           "0: every batch lands before the next starts")
    # 64 KiB: a device's message is ~150 bytes, so every rejected record of an ordinary kind stays in
    # PostgreSQL, readable with SQL; a record larger than that is not a message gone wrong but a wrong
    # producer, and its bytes are cheaper in the lake. Also what the batch's cache holds at most of a record.
    dead_letter_inline_bytes: int = Field(
        default=64 * 1024, ge=0, description="a rejected record's key and value together up to this size are kept "
                                             "in dead_letter; a larger one's in the lake (its row names where)")
    dead_letter_page_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1, description="most INSERT text of dead letters in one statement, about "
                                                    "(bytes as hex), and what the driver holds of them at a time")
    starting_offsets: str = Field(default="earliest", description="where a query without checkpoint starts: earliest or latest")
    fail_on_data_loss: bool = Field(default=True, description="fail if Kafka deleted messages the query had not read")
    metadata_refresh_seconds: float = Field(default=30.0, ge=0, description="re-read user_metadata at most this often; 0: every batch")
    progress_interval_seconds: float = Field(default=60.0, gt=0, description="how often progress is reported")
    query_name: str = Field(default="speed_layer", description="names the checkpoint folder and the ledger rows")
    batch_attempts: int = Field(default=3, ge=1, description="tries of a failing micro-batch before the run fails")
    # The contract rules (README): a message outside them is a dead letter with its own reason.
    max_bytes: int = Field(default=MessageRules.max_bytes, ge=0, le=BIGINT_MAX,
                           description="largest `bytes` of one message (bytes_too_large above)")
    min_timestamp: int = Field(default=MessageRules.min_timestamp,
                               description="earliest `timestamp`, epoch seconds (timestamp_too_old below)")
    future_tolerance_seconds: int = Field(
        default=MessageRules.future_tolerance_seconds, ge=0,
        description="how far `timestamp` may be after the Kafka record's own timestamp (timestamp_in_future beyond)")
    max_text_length: int = Field(default=MessageRules.max_text_length, ge=1,
                                 description="longest id, antenna_id or app, in characters (text_too_long above)")

    def message_rules(self) -> MessageRules:
        return MessageRules(max_bytes=self.max_bytes, min_timestamp=self.min_timestamp,
                            future_tolerance_seconds=self.future_tolerance_seconds,
                            max_text_length=self.max_text_length)

    @model_validator(mode="after")
    def _sums_fit_a_bigint(self):
        # A batch's partial sum of one key is at most max_offsets_per_trigger x max_bytes (MessageRules).
        if self.max_offsets_per_trigger == 0 or self.max_offsets_per_trigger * self.max_bytes > BIGINT_MAX:
            raise ValueError(f"max_offsets_per_trigger ({self.max_offsets_per_trigger}) x max_bytes ({self.max_bytes}) "
                             f"must be between 1 and {BIGINT_MAX}: a micro-batch's sums must fit a BIGINT")
        return self

    @model_validator(mode="after")
    def _a_dead_letter_fits_a_page(self):
        if 2 * self.dead_letter_inline_bytes > self.dead_letter_page_bytes:
            raise ValueError(f"dead_letter_page_bytes ({self.dead_letter_page_bytes}) must hold one inline dead letter "
                             f"as hex: at least 2 x dead_letter_inline_bytes ({self.dead_letter_inline_bytes})")
        return self

    @field_validator("window", "watermark", "max_watermark_advance", "trigger_interval")
    @classmethod
    def _is_duration(cls, value: str) -> str:
        parse_duration(value)
        return value

    @field_validator("window")
    @classmethod
    def _is_whole_seconds(cls, value: str) -> str:
        # The speed tables key a window by its start in whole seconds.
        seconds = parse_duration(value).total_seconds()
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(f"window {value!r} must be a whole number of seconds, at least one")
        return value

    @field_validator("starting_offsets")
    @classmethod
    def _is_offsets(cls, value: str) -> str:
        if value not in ("earliest", "latest") and not value.lstrip().startswith("{"):
            raise ValueError("starting_offsets must be earliest, latest or Spark's JSON offsets")
        return value
