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


class AcknowledgementWatch:
    """Says in one line when acknowledgements stop because fewer brokers answer than the topic's
    min.insync.replicas, and in one line when they come back.

    `acknowledged` is an estimate: produced minus the producer's out-queue, and that queue also holds
    librdkafka's events (each failed reconnect to a dead broker is one), so it moves without any
    acknowledgement. Only brokers answering again can end the wait; the estimate alone never does.
    """

    def __init__(self, topic: str, min_insync: int | None, now: float):
        self.topic, self.min_insync = topic, min_insync
        self._acknowledged, self._acknowledged_at = 0, now
        self._waiting_since: float | None = None

    def observe(self, now: float, acknowledged: int, outstanding: int, brokers_up: int,
                brokers_known: int) -> str | None:
        """One statistics report's figures; returns the line to say, if any."""
        moved = acknowledged > self._acknowledged or outstanding == 0
        if moved:
            self._acknowledged, self._acknowledged_at = max(acknowledged, self._acknowledged), now
        if self._waiting_since is not None:
            if not moved or brokers_up < self.min_insync:
                return None
            since, self._waiting_since = self._waiting_since, None
            return f"simulator: Kafka acknowledges again after {now - since:.0f} s; the waiting messages are delivered"
        if (moved or self.min_insync is None or brokers_up >= self.min_insync
                or now - self._acknowledged_at < STALL_SECONDS):
            return None
        self._waiting_since = self._acknowledged_at
        # Kafka's name for the condition: a write with acks=all needs min.insync.replicas replicas in sync.
        return (f"simulator: waiting, NOT_ENOUGH_REPLICAS: {brokers_up} of {brokers_known} Kafka brokers answer, "
                f"{self.topic} needs {self.min_insync} in sync (min.insync.replicas) to acknowledge a write; "
                f"{outstanding:,} messages wait unacknowledged and are counted only once acknowledged")


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
        # Asked while the cluster answers: when it stops, a broker that could be asked may be gone.
        min_insync = _min_insync_replicas({**(kafka_client or {}), "bootstrap.servers": bootstrap}, topic)
        self._watch = AcknowledgementWatch(topic, min_insync, time.monotonic())
        self._producer = Producer({**PRODUCER_TUNING, **DELIVERY_GUARANTEES, **options, "bootstrap.servers": bootstrap,
                                   "on_delivery": self._on_failure, "statistics.interval.ms": STATISTICS_INTERVAL_MS,
                                   "stats_cb": self._on_statistics})

    def _on_failure(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            self.last_error = err.str()

    def _on_statistics(self, report: str) -> None:
        """Called from poll/flush every STATISTICS_INTERVAL_MS."""
        outstanding = len(self._producer)
        brokers = [b for b in json.loads(report)["brokers"].values() if b["nodeid"] >= 0]  # not the bootstrap entries
        line = self._watch.observe(time.monotonic(), self._produced - outstanding - self.failed, outstanding,
                                   sum(b["state"] == "UP" for b in brokers), len(brokers))
        if line:
            print(line, file=sys.stderr, flush=True)

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
