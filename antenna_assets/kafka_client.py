"""The one way to configure a Kafka client: the simulator's producer, the stack's and the sensor's
admin client (librdkafka) and the speed layer's Spark source (the Java client, `kafka.` options)
all get their bootstrap servers and security from the same settings, so they cannot drift.

The SASL password is read from the settings (or its file) when a client is built and handed to the
client in memory only; it is never put on a command line, in a log line or in an error message
(`redact`), and Spark keeps it in the driver's query options.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tenacity

from antenna_assets.errors import StackError
from antenna_assets.settings import Settings, SettingsError, env_name

# The Java clients' login module per SASL mechanism (sasl.jaas.config).
_LOGIN_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}
REDACTED = "***"
DESCRIBE_ATTEMPTS = 5  # describe_topic's tries while a partition has no known leader: 0.25 + 0.5 + 1 + 2 s of waits


class KafkaUnavailable(StackError):
    """The cluster cannot be used: unreachable, or it refused our credentials; one line saying which."""


def uses_sasl(settings: Settings) -> bool:
    return settings.kafka_security_protocol.startswith("SASL")


def sasl_password(settings: Settings) -> str:
    """The SASL password: ANTENNA_KAFKA_SASL_PASSWORD, else the first line of its file."""
    password = settings.kafka_sasl_password.get_secret_value()
    if password or not settings.kafka_sasl_password_file:
        return password
    path = Path(settings.kafka_sasl_password_file)
    try:
        return path.read_text().splitlines()[0].strip() if path.stat().st_size else ""
    except OSError as exc:
        hint = " (the local broker writes it at `antenna stack up`)" if settings.kafka_local_sasl else ""
        raise SettingsError(f"{env_name('kafka_sasl_password_file')}={path}: cannot read it "
                            f"({exc.strerror}){hint}") from None


def librdkafka_config(settings: Settings) -> dict[str, str]:
    """librdkafka properties (confluent_kafka Producer, Consumer, AdminClient): bootstrap servers and security."""
    config = {"bootstrap.servers": settings.kafka_bootstrap, "security.protocol": settings.kafka_security_protocol}
    if uses_sasl(settings):
        config.update({"sasl.mechanism": settings.kafka_sasl_mechanism, "sasl.username": settings.kafka_sasl_username,
                       "sasl.password": sasl_password(settings)})
    if settings.kafka_ssl_ca_file:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_file
    return config


def jaas_config(mechanism: str, username: str, password: str) -> str:
    """The Java clients' `sasl.jaas.config` for a user (values quoted as JAAS reads them)."""
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return f"{_LOGIN_MODULES[mechanism]} required username={quoted(username)} password={quoted(password)};"


def spark_kafka_options(settings: Settings) -> dict[str, str]:
    """Spark's Kafka source options (`kafka.` + the Java client's property): bootstrap servers and security.
    A CA file is a PEM truststore, which the Java client reads as is."""
    options = {"kafka.bootstrap.servers": settings.kafka_bootstrap,
               "kafka.security.protocol": settings.kafka_security_protocol}
    if uses_sasl(settings):
        options.update({"kafka.sasl.mechanism": settings.kafka_sasl_mechanism,
                        "kafka.sasl.jaas.config": jaas_config(settings.kafka_sasl_mechanism,
                                                              settings.kafka_sasl_username, sasl_password(settings))})
    if settings.kafka_ssl_ca_file:
        options.update({"kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.location": settings.kafka_ssl_ca_file})
    return options


def redact(text: str, config: dict) -> str:
    """`text` with the SASL password of a librdkafka `config` replaced by ***, wherever it appears."""
    password = config.get("sasl.password")
    return text.replace(password, REDACTED) if password else text


def admin_client(config: dict, errors: list | None = None):
    """A librdkafka AdminClient for `config` (librdkafka_config). Its errors (an authentication failure
    among them) are appended to `errors` instead of being logged to stderr by librdkafka."""
    from confluent_kafka.admin import AdminClient

    sink = errors if errors is not None else []
    return AdminClient({**config, "log_level": 0, "error_cb": sink.append})


def _authentication_errors(errors: list) -> list:
    from confluent_kafka import KafkaError

    return [e for e in errors if e.code() == KafkaError._AUTHENTICATION]


def describe_failure(config: dict, exc: Exception, errors: list) -> str:
    """One line saying why the cluster of a librdkafka `config` could not be used; an authentication
    failure first, since librdkafka reports it on the side and then times out like an unreachable broker."""
    auth = _authentication_errors(errors)
    if auth:
        why = (f"refused the credentials: SASL authentication failed for user {config.get('sasl.username')!r} ({config.get('sasl.mechanism')}): "
               f"{auth[-1].str()}; check {env_name('kafka_sasl_username')} and {env_name('kafka_sasl_password')} "
               f"(or {env_name('kafka_sasl_password_file')})"
               if "sasl.username" in config else f"refused the connection: {auth[-1].str()}")
    else:
        last = errors[-1].str() if errors else (exc.args[0].str() if exc.args and hasattr(exc.args[0], "str") else str(exc))
        why = f"does not answer ({last}); start it with `antenna stack up` or set {env_name('kafka_bootstrap')}"
    return redact(" ".join(f"Kafka at {config['bootstrap.servers']} {why}".split()), config)


def topic_names(config: dict, timeout: float = 10.0) -> set[str]:
    """The topics of the cluster of a librdkafka `config`; KafkaUnavailable (one line) when it is
    unreachable, or as soon as it refuses the credentials."""
    import time

    from confluent_kafka import KafkaException

    errors: list = []
    admin = admin_client(config, errors)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return set(admin.list_topics(timeout=max(0.1, min(1.0, deadline - time.monotonic()))).topics)
        except KafkaException as exc:
            admin.poll(0)  # serves error_cb: an authentication failure is only reported there
            if time.monotonic() >= deadline or _authentication_errors(errors):
                raise KafkaUnavailable(describe_failure(config, exc, errors)) from None


@dataclass(frozen=True)
class TopicIdentity:
    """A topic as Kafka identifies it, not by its name: a topic deleted and created again under the
    same name has a new topic id, and another cluster's topic of that name another cluster id."""

    cluster_id: str
    topic_id: str

    def __str__(self) -> str:
        return f"topic id {self.topic_id} on cluster {self.cluster_id}"


@dataclass(frozen=True)
class TopicState:
    identity: TopicIdentity
    end_offsets: dict[int, int]  # per partition, the offset its next record will get


def describe_topic(config: dict, topic: str, timeout: float = 30.0) -> TopicState:
    """The identity of `topic` on the cluster of a librdkafka `config` and its partitions' end offsets
    (three admin requests); KafkaUnavailable (one line) when the cluster cannot be used or has no such topic."""
    from confluent_kafka import KafkaError, KafkaException, TopicCollection, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    errors: list = []
    admin = admin_client(config, errors)

    def requests() -> TopicState:
        cluster = admin.describe_cluster(request_timeout=timeout).result()
        described = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout)[topic].result()
        ends = admin.list_offsets({TopicPartition(topic, p.id): OffsetSpec.latest() for p in described.partitions},
                                  request_timeout=timeout)
        end_offsets = {partition.partition: future.result().offset for partition, future in ends.items()}
        return TopicState(TopicIdentity(cluster.cluster_id, str(described.topic_id)), end_offsets)

    def leaderless(exc: BaseException) -> bool:
        # A topic just (re)created has no known leaders for a moment (seen in CI: "Not leader for partition").
        return _kafka_error_code(exc) in (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)

    try:
        return tenacity.Retrying(retry=tenacity.retry_if_exception(leaderless),
                                 stop=tenacity.stop_after_attempt(DESCRIBE_ATTEMPTS),
                                 wait=tenacity.wait_exponential(multiplier=0.25), reraise=True)(requests)
    except KafkaException as exc:
        if _kafka_error_code(exc) == KafkaError.UNKNOWN_TOPIC_OR_PART:
            raise KafkaUnavailable(f"Kafka at {config['bootstrap.servers']} has no topic {topic!r}") from None
        admin.poll(0)  # serves error_cb: an authentication failure is only reported there
        raise KafkaUnavailable(describe_failure(config, exc, errors)) from None


def _kafka_error_code(exc: BaseException) -> int | None:
    from confluent_kafka import KafkaError

    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return error.code() if error is not None else None
