"""Kafka with SASL: a local broker of its own whose only client listener is SASL_PLAINTEXT with
SCRAM-SHA-512 (ANTENNA_KAFKA_LOCAL_SASL), and every client of the product through it: the simulator
(library and CLI), the streaming sensor's topic check, and Spark's Kafka source in the speed layer.
Right credentials work; wrong ones fail in one line that names the SASL failure and no password."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from pydantic import SecretStr

from antenna_assets.kafka_client import KafkaUnavailable, librdkafka_config, sasl_password, spark_kafka_options, topic_names
from antenna_assets.sensors import speed_layer_decision
from antenna_assets.settings import Settings, SettingsError
from antenna_assets.sources.simulator import SimulationError, SimulatorConfig, run_simulation
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, StreamFailed, run_until_stopped
from antenna_assets.stack.kafka import KafkaBroker, ensure_topic
from antenna_assets_tests.test_simulator import antenna, consume
from antenna_assets_tests.truth import expected, read_table
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER

# The SASL broker's ports: the test stack's Kafka port plus this (and one more for its controller).
PORT_OFFSET = 100
START = datetime(2026, 3, 2, 8)
WRONG = "not-the-password-0123"
SASL_FAILURE = "SASL authentication failed for user 'antenna' (SCRAM-SHA-512)"


@pytest.fixture(scope="module")
def sasl(settings, tmp_path_factory) -> Settings:
    """The settings of a fresh SASL-only broker in a stack folder of its own; stopped afterwards."""
    port = settings.kafka_port + PORT_OFFSET
    stack = tmp_path_factory.mktemp("kafka-sasl")
    sasl = Settings.from_env(stack_dir=stack, kafka_port=port, kafka_controller_port=port + 1,
                             kafka_bootstrap=f"127.0.0.1:{port}", kafka_local_sasl=True, kafka_heap="256m")
    broker = KafkaBroker(sasl)
    try:
        broker.up()
        yield sasl
    finally:
        broker.down()


def _wrong(sasl: Settings) -> Settings:
    return sasl.replace(kafka_sasl_password=SecretStr(WRONG))


def _assert_one_line_sasl_failure(text: str, sasl: Settings) -> None:
    assert "\n" not in text.strip(), text
    assert SASL_FAILURE in text, text
    assert sasl_password(sasl) not in text and WRONG not in text


def test_one_set_of_settings_configures_librdkafka_and_spark_alike(tmp_path):
    ca = tmp_path / "ca.pem"
    password = 'with "quote" and \\ backslash'
    settings = Settings.from_env(kafka_bootstrap="b1:9096,b2:9096", kafka_security_protocol="sasl_ssl",
                                 kafka_sasl_mechanism="scram-sha-256", kafka_sasl_username="pipeline",
                                 kafka_sasl_password=password, kafka_ssl_ca_file=str(ca))
    assert password not in repr(settings)
    assert librdkafka_config(settings) == {
        "bootstrap.servers": "b1:9096,b2:9096", "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "pipeline", "sasl.password": password, "ssl.ca.location": str(ca)}
    assert spark_kafka_options(settings) == {
        "kafka.bootstrap.servers": "b1:9096,b2:9096", "kafka.security.protocol": "SASL_SSL",
        "kafka.sasl.mechanism": "SCRAM-SHA-256",
        "kafka.sasl.jaas.config": 'org.apache.kafka.common.security.scram.ScramLoginModule required '
                                  'username="pipeline" password="with \\"quote\\" and \\\\ backslash";',
        "kafka.ssl.truststore.type": "PEM", "kafka.ssl.truststore.location": str(ca)}
    with pytest.raises(SettingsError, match="ANTENNA_KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT needs "
                                            "ANTENNA_KAFKA_SASL_USERNAME"):
        Settings.from_env(kafka_security_protocol="SASL_PLAINTEXT")


def test_local_broker_keeps_the_password_in_0600_files_only(sasl):
    password = sasl_password(sasl)
    broker = KafkaBroker(sasl)
    secret = Path(sasl.kafka_sasl_password_file)
    assert secret.parent == sasl.stack_dir / "secrets" and len(password) >= 24
    for path in (secret, broker.home / "server.properties"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert password in (broker.home / "server.properties").read_text()
    assert not (broker.home / "format.args").exists()
    # Not on the broker's command line, nor in anything it logged.
    assert password not in Path(f"/proc/{broker.pid()}/cmdline").read_bytes().decode()
    for log in broker.home.glob("*.log"):
        assert password not in log.read_text(errors="replace"), log
    assert "devices" in topic_names(librdkafka_config(sasl))
    # A client without credentials is not let in.
    with pytest.raises(KafkaUnavailable):
        topic_names(librdkafka_config(sasl.replace(kafka_security_protocol="PLAINTEXT")), timeout=3)


def test_simulator_sends_with_the_right_credentials_and_stops_in_one_line_with_wrong_ones(sasl):
    topic = "devices-sasl-simulator"
    config = SimulatorConfig(sasl.kafka_bootstrap, topic, backfill_hours=0.25, start=START, seed=5, progress=False,
                             kafka_client=librdkafka_config(sasl))
    assert sasl_password(sasl) not in repr(config)
    truth = run_simulation(config)
    assert len(consume(sasl, topic, truth.messages + truth.malformed)) == truth.messages + truth.malformed == 300

    began = time.monotonic()
    with pytest.raises(SimulationError) as failure:
        run_simulation(SimulatorConfig(sasl.kafka_bootstrap, topic, count=20, progress=False,
                                       kafka_client=librdkafka_config(_wrong(sasl))))
    _assert_one_line_sasl_failure(str(failure.value), sasl)
    assert time.monotonic() - began < 10


def test_simulator_cli_reads_the_password_file_and_fails_in_one_line_with_a_wrong_password(sasl):
    env = {"ANTENNA_STACK_DIR": str(sasl.stack_dir), "ANTENNA_KAFKA_BOOTSTRAP": sasl.kafka_bootstrap,
           "ANTENNA_KAFKA_LOCAL_SASL": "1", "ANTENNA_TOPIC": "devices-sasl-cli"}
    sent = antenna("simulate", "--backfill-hours", "1", "--count", "40", "--no-progress", env=env)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.startswith("sent 40 messages to devices-sasl-cli")

    refused = antenna("simulate", "--backfill-hours", "1", "--count", "40", "--no-progress", env={**env, "ANTENNA_KAFKA_SASL_PASSWORD": WRONG})
    assert refused.returncode == 1
    assert refused.stderr.startswith("antenna simulate: error: Kafka at ")
    _assert_one_line_sasl_failure(refused.stderr, sasl)


def test_streaming_sensor_checks_the_topic_with_the_credentials(sasl, postgres):
    instance = dg.DagsterInstance.ephemeral()
    with postgres.connect() as conn:  # the sensor's heartbeat check reads it
        assert isinstance(speed_layer_decision(instance, conn, sasl, time.time()), dg.RunRequest)
        missing = speed_layer_decision(instance, conn, sasl.replace(topic="no-such-topic"), time.time())
        refused = speed_layer_decision(instance, conn, _wrong(sasl), time.time())
    assert isinstance(missing, dg.SkipReason) and "'no-such-topic' not found" in missing.skip_message
    assert isinstance(refused, dg.SkipReason)
    _assert_one_line_sasl_failure(refused.skip_message, sasl)


def test_speed_layer_reads_through_sasl_and_fails_in_one_line_with_a_wrong_password(sasl, spark, serving_db,
                                                                                       tmp_path):
    topic = "devices-sasl-stream"
    ensure_topic(sasl.replace(topic=topic))
    truth = run_simulation(SimulatorConfig(sasl.kafka_bootstrap, topic, backfill_hours=0.25, start=START, seed=8,
                                           progress=False, kafka_client=librdkafka_config(sasl)))

    def layer(settings: Settings, name: str) -> SpeedLayer:
        config = SpeedLayerConfig(trigger="available_now", watermark="3650 days", query_name=name)
        targets = SpeedLayerTargets(settings.kafka_bootstrap, topic, str(tmp_path / "landing"),
                                    str(tmp_path / "checkpoints" / name), serving_db,
                                    kafka_options=spark_kafka_options(settings),
                                    kafka_client=librdkafka_config(settings))
        assert sasl_password(sasl) not in repr(targets)
        return SpeedLayer(spark, config, targets)

    began = time.monotonic()
    with pytest.raises(StreamFailed) as failure:
        run_until_stopped(layer(_wrong(sasl), "sasl_wrong"))
    refused_after = time.monotonic() - began
    message = str(failure.value)
    assert "\n" not in message.strip() and "SaslAuthenticationException" in message, message
    assert sasl_password(sasl) not in message and WRONG not in message
    assert refused_after < 60

    streamed = layer(sasl, "sasl_right")
    run_until_stopped(streamed)
    assert streamed.stats.good_messages == truth.messages
    for table, per in ((BYTES_AGG_ANTENNA, "antenna"), (BYTES_AGG_USER, "user"), (BYTES_AGG_APP, "app")):
        assert read_table(serving_db, table) == expected(truth, per), table.name
