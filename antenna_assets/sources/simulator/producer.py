"""The Kafka side of the simulator: broker check, topic, a tuned producer, delivery accounting."""

from __future__ import annotations

from antenna_assets.settings import Settings
from antenna_assets.errors import StackError

BROKER_CHECK_TIMEOUT_SECONDS = 10.0
FLUSH_TIMEOUT_SECONDS = 120.0

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


class DeliveringProducer:
    """A producer that counts undelivered messages; `close()` flushes and returns that count."""

    def __init__(self, bootstrap: str, topic: str, options: dict):
        from confluent_kafka import Producer

        self.topic = topic
        self.failed = 0
        self.last_error: str | None = None
        self._producer = Producer({**PRODUCER_TUNING, **DELIVERY_GUARANTEES, **options, "bootstrap.servers": bootstrap,
                                   "on_delivery": self._on_failure})

    def _on_failure(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            self.last_error = err.str()

    def send(self, values: list[str]) -> None:
        produce, poll, topic = self._producer.produce, self._producer.poll, self.topic
        for value in values:
            while True:
                try:
                    produce(topic, value)
                    break
                except BufferError:  # local queue full: let the I/O threads drain it
                    poll(0.05)
        poll(0)

    def close(self) -> int:
        """Wait for every message; return how many were not delivered."""
        remaining = self._producer.flush(FLUSH_TIMEOUT_SECONDS)
        if remaining and self.last_error is None:
            self.last_error = f"{remaining} messages still queued after {FLUSH_TIMEOUT_SECONDS:.0f} s"
        return self.failed + remaining
