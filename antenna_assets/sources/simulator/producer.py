"""The Kafka side of the simulator: broker check, topic, a tuned producer, delivery accounting."""

from __future__ import annotations

import json
import sys
import time

from antenna_assets.settings import Settings
from antenna_assets.errors import StackError

BROKER_CHECK_TIMEOUT_SECONDS = 10.0
FLUSH_TIMEOUT_SECONDS = 120.0
# librdkafka's statistics (each broker's connection state) every second, and how long acknowledgements
# may stop before the producer looks for the reason: a paced run acknowledges several times a second.
STATISTICS_INTERVAL_MS = 1000
STALL_SECONDS = 5.0

# Throughput over latency: big, compressed batches and a deep local queue. The simulator's JSON
# repeats ids and field names, so lz4 shrinks what the broker writes several times over.
PRODUCER_TUNING = {
    "linger.ms": 50,
    "batch.size": 1_000_000,
    "batch.num.messages": 20_000,
    "compression.type": "lz4",
    "queue.buffering.max.messages": 1_000_000,
    "queue.buffering.max.kbytes": 1_048_576,
    # Failures only: a Python callback per delivered message would cost as much as producing it.
    "delivery.report.only.error": True,
}

# Nothing lost, nothing doubled when a broker dies mid-run: acks=all waits for every in-sync replica,
# and idempotence makes librdkafka's retries of an unacknowledged batch impossible to write twice
# (without it, a batch the broker stored just before dying is stored again by the retry).
DELIVERY_GUARANTEES = {"acks": "all", "enable.idempotence": True}


class SimulationError(RuntimeError):
    """The simulation could not deliver its messages; the message says what failed."""


def prepare_topic(bootstrap: str, topic: str, kafka_client: dict) -> None:
    """Fail fast when the broker does not answer or refuses the credentials (`kafka_client`: its
    librdkafka security), then create the topic if it is missing."""
    from confluent_kafka import KafkaException

    from antenna_assets.kafka_client import KafkaUnavailable, redact, topic_names
    from antenna_assets.stack.kafka import create_topic

    config = {**kafka_client, "bootstrap.servers": bootstrap}
    try:
        topic_names(config, timeout=BROKER_CHECK_TIMEOUT_SECONDS)
    except KafkaUnavailable as exc:
        raise SimulationError(str(exc)) from None
    try:
        create_topic(config, topic, Settings.from_env().topic_partitions)
    except (StackError, KafkaException) as exc:
        raise SimulationError(redact(f"could not create topic {topic!r} on {bootstrap}: {exc}", config)) from None


def _min_insync_replicas(config: dict, topic: str) -> int | None:
    """The topic's min.insync.replicas; None if the cluster does not say (a user without DescribeConfigs)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource

    from antenna_assets.kafka_client import admin_client

    admin = admin_client(config)  # held until the answer: a client that is gone cancels its requests
    [future] = admin.describe_configs([ConfigResource("topic", topic)],
                                      request_timeout=BROKER_CHECK_TIMEOUT_SECONDS).values()
    try:
        return int(future.result(BROKER_CHECK_TIMEOUT_SECONDS)["min.insync.replicas"].value)
    except (KafkaException, TimeoutError, KeyError):
        return None


class DeliveringProducer:
    """A producer that counts undelivered messages; `close()` flushes and returns that count. When Kafka
    stops acknowledging because fewer of its brokers answer than the topic's min.insync.replicas, it
    says so once, in one line on stderr, and waits: librdkafka keeps every unacknowledged message and
    retries it (idempotently) until the brokers are back, and a message only counts once acknowledged."""

    def __init__(self, bootstrap: str, topic: str, options: dict, kafka_client: dict | None = None):
        from confluent_kafka import Producer

        self.topic = topic
        self.failed = 0
        self.last_error: str | None = None
        self._produced = 0
        self._acknowledged = 0
        self._acknowledged_at = time.monotonic()
        # Asked while the cluster answers: when it stops, a broker that could be asked may be gone.
        self._min_insync = _min_insync_replicas({**(kafka_client or {}), "bootstrap.servers": bootstrap}, topic)
        self._waiting_since: float | None = None
        self._producer = Producer({**PRODUCER_TUNING, **DELIVERY_GUARANTEES, **options, "bootstrap.servers": bootstrap,
                                   "on_delivery": self._on_failure, "statistics.interval.ms": STATISTICS_INTERVAL_MS,
                                   "stats_cb": self._on_statistics})

    def _on_failure(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            self.last_error = err.str()

    def _on_statistics(self, report: str) -> None:
        """Called from poll/flush every STATISTICS_INTERVAL_MS: notices acknowledgements stopping for lack
        of brokers, and their return."""
        now = time.monotonic()
        outstanding = len(self._producer)
        acknowledged = self._produced - outstanding - self.failed
        if acknowledged > self._acknowledged or outstanding == 0:
            self._acknowledged, self._acknowledged_at = acknowledged, now
            if self._waiting_since is not None:
                print(f"simulator: Kafka acknowledges again after {now - self._waiting_since:.0f} s; the waiting "
                      "messages are delivered", file=sys.stderr, flush=True)
                self._waiting_since = None
            return
        if self._waiting_since is not None or self._min_insync is None or now - self._acknowledged_at < STALL_SECONDS:
            return
        brokers = [b for b in json.loads(report)["brokers"].values() if b["nodeid"] >= 0]  # not the bootstrap entries
        up = sum(b["state"] == "UP" for b in brokers)
        if up < self._min_insync:
            self._waiting_since = self._acknowledged_at
            # Kafka's name for the condition: a write with acks=all needs min.insync.replicas replicas in sync.
            print(f"simulator: waiting, NOT_ENOUGH_REPLICAS: {up} of {len(brokers)} Kafka brokers answer, {self.topic} "
                  f"needs {self._min_insync} in sync (min.insync.replicas) to acknowledge a write; {outstanding:,} "
                  "messages wait unacknowledged and are counted only once acknowledged", file=sys.stderr, flush=True)

    def send(self, values: list[str]) -> None:
        produce, poll, topic = self._producer.produce, self._producer.poll, self.topic
        for value in values:
            while True:
                try:
                    produce(topic, value)
                    break
                except BufferError:  # local queue full: let the I/O threads drain it
                    poll(0.05)
        self._produced += len(values)
        poll(0)

    def close(self) -> int:
        """Wait for every message; return how many were not delivered."""
        remaining = self._producer.flush(FLUSH_TIMEOUT_SECONDS)
        if remaining and self.last_error is None:
            self.last_error = f"{remaining} messages still queued after {FLUSH_TIMEOUT_SECONDS:.0f} s"
        return self.failed + remaining
