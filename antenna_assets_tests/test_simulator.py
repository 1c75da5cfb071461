"""The simulator against the real broker: messages honour the contract and match the ground truth."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from antenna_assets.sources.simulator.producer import STALL_SECONDS, AcknowledgementWatch
from antenna_assets.sources.simulator import (MALFORMED_KINDS, GroundTruth, SimulationError, SimulatorConfig,
                                      SimulatorConfigError, Totals, run_simulation)
from antenna_assets.stack.kafka import ensure_topic
from antenna_assets.sources.users import APPS, PROVISIONED_USERS, antenna_id

FIELDS = {"timestamp", "id", "antenna_id", "bytes", "app"}
START = datetime(2026, 11, 27, 10, 0)
START_EPOCH = int(START.replace(tzinfo=timezone.utc).timestamp())


def consume(settings, topic: str, expected: int, timeout: float = 30.0) -> list[bytes]:
    """Every message of the topic: waits for `expected`, then briefly for any surplus."""
    from confluent_kafka import Consumer

    from antenna_assets.kafka_client import librdkafka_config

    consumer = Consumer({**librdkafka_config(settings), "group.id": f"test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            values += [m.value() for m in consumer.consume(10_000, timeout=1.0) if m.error() is None]
        values += [m.value() for m in consumer.consume(10_000, timeout=1.0) if m.error() is None]
    finally:
        consumer.close()
    return values


def classify(raw: bytes) -> str | None:
    """This test's own reading of the contract: None for a valid message, else the malformed kind."""
    try:
        message = json.loads(raw)
    except ValueError:
        return "broken_json"
    if not isinstance(message, dict):
        return "broken_json"
    if not FIELDS <= message.keys():
        return "missing_field"
    if any(type(message[f]) is not int for f in ("timestamp", "bytes")) or \
            any(type(message[f]) is not str for f in ("id", "antenna_id", "app")):
        return "wrong_type"
    if message["bytes"] < 0:
        return "negative_bytes"
    return None


def totals_of(messages: list[dict], seconds: int) -> dict[datetime, Totals]:
    totals: dict[datetime, Totals] = defaultdict(Totals)
    for m in messages:
        start = datetime.fromtimestamp(m["timestamp"] // seconds * seconds, tz=timezone.utc).replace(tzinfo=None)
        t = totals[start]
        t.messages += 1
        for sums, key in ((t.antenna, m["antenna_id"]), (t.user, m["id"]), (t.app, m["app"])):
            sums[key] = sums.get(key, 0) + m["bytes"]
    return dict(totals)


def assert_matches_ground_truth(values: list[bytes], truth: GroundTruth) -> list[dict]:
    kinds = Counter(classify(v) for v in values)
    valid = [json.loads(v) for v in values if classify(v) is None]
    assert len(valid) == truth.messages
    assert sum(n for k, n in kinds.items() if k) == truth.malformed
    assert {k: kinds.get(k, 0) for k in MALFORMED_KINDS} == truth.malformed_by_kind
    assert sum(1 for m in valid if m.keys() != FIELDS) == truth.with_extra_fields
    assert totals_of(valid, 3600) == truth.hours
    assert totals_of(valid, 300) == truth.windows
    return valid


def new_topic(settings) -> str:
    name = f"devices-test-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=name))
    return name


def test_live_messages_follow_the_contract_and_the_ground_truth(settings, topic):
    began = int(time.time())
    # 100 ticks of the 20 contract users, 10 ms apart instead of a minute.
    truth = run_simulation(SimulatorConfig(settings.kafka_bootstrap, topic, rate=2000, count=2000, seed=7, progress=False))
    ended = int(time.time())
    values = consume(settings, topic, 2000)
    assert len(values) == 2000
    messages = assert_matches_ground_truth(values, truth)
    assert len(messages) == 2000 and truth.malformed == 0 and truth.with_extra_fields == 0
    for m in messages:
        assert m.keys() == FIELDS
        assert type(m["timestamp"]) is int and began <= m["timestamp"] <= ended
        assert type(m["bytes"]) is int and 0 <= m["bytes"] <= 9999
    assert {m["app"] for m in messages} == set(APPS)
    assert {m["id"] for m in messages} == {u.id for u in PROVISIONED_USERS}
    assert {m["antenna_id"] for m in messages} == {antenna_id(i) for i in range(5)}
    assert set(Counter(m["id"] for m in messages).values()) == {100}
    antennas_by_user = defaultdict(set)
    for m in messages:
        antennas_by_user[m["id"]].add(m["antenna_id"])
    assert all(len(a) > 1 for a in antennas_by_user.values())


def test_backfill_with_malformed_messages_matches_ground_truth(settings, topic, tmp_path):
    path = tmp_path / "truth.json"
    config = SimulatorConfig(settings.kafka_bootstrap, topic, backfill_hours=2, start=START, seed=11,
                             malformed_fraction=0.1, ground_truth_path=str(path), progress=False)
    truth = run_simulation(config)
    values = consume(settings, topic, 2400)
    assert len(values) == 2400 == truth.messages + truth.malformed
    messages = assert_matches_ground_truth(values, truth)
    assert all(truth.malformed_by_kind[k] > 0 for k in MALFORMED_KINDS)
    assert truth.with_extra_fields > 0
    assert {key for m in messages for key in m} == FIELDS | {"signal"}
    assert sorted(truth.hours) == [START, START + timedelta(hours=1)]
    assert sorted(truth.windows) == [START + timedelta(minutes=5 * i) for i in range(24)]
    assert all(START_EPOCH <= m["timestamp"] < START_EPOCH + 2 * 3600 for m in messages)
    assert GroundTruth.from_json(path) == truth


def test_same_seed_same_messages_whatever_the_process_count(settings, topic):
    def run(topic_name: str, processes: int) -> tuple[GroundTruth, list[bytes]]:
        config = SimulatorConfig(settings.kafka_bootstrap, topic_name, users=50, antennas=7, backfill_hours=3,
                                 start=START, seed=5, malformed_fraction=0.02, processes=processes, progress=False)
        truth = run_simulation(config)
        return truth, sorted(consume(settings, topic_name, 9000))

    single, single_values = run(topic, 1)
    again, again_values = run(new_topic(settings), 1)
    double, double_values = run(new_topic(settings), 2)
    assert len(single_values) == 9000
    assert single == again == double
    assert single_values == again_values == double_values
    assert_matches_ground_truth(double_values, double)


def test_count_cuts_the_last_tick(settings, topic):
    truth = run_simulation(SimulatorConfig(settings.kafka_bootstrap, topic, backfill_hours=1, start=START, count=50,
                                           seed=1, progress=False))
    values = consume(settings, topic, 50)
    assert len(values) == 50 == truth.messages
    ticks = Counter(json.loads(v)["timestamp"] for v in values)
    assert ticks == {START_EPOCH: 20, START_EPOCH + 60: 20, START_EPOCH + 120: 10}


def test_undelivered_messages_raise(settings):
    from confluent_kafka.admin import AdminClient, NewTopic

    name = f"devices-test-tiny-{uuid.uuid4().hex[:10]}"
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    # The broker rejects every batch: a record batch alone is larger than 64 bytes.
    admin.create_topics([NewTopic(name, 1, 1, config={"max.message.bytes": "64"})])[name].result(30)
    with pytest.raises(SimulationError, match="were not delivered"):
        run_simulation(SimulatorConfig(settings.kafka_bootstrap, name, backfill_hours=1, count=40, progress=False))


# The out-queue librdkafka counts also holds its events (a failed reconnect to a dead broker is one),
# so at each report it may count that many more than the unacknowledged messages.
QUEUED_EVENTS = st.lists(st.integers(min_value=0, max_value=50), max_size=90)


@hypothesis_settings(max_examples=300, deadline=None)
@given(healthy_events=QUEUED_EVENTS, outage_events=QUEUED_EVENTS, after=st.integers(min_value=1, max_value=5))
def test_an_outage_is_said_once_and_only_the_brokers_return_ends_it(healthy_events, outage_events, after):
    """Two of three brokers answer, then one (min.insync.replicas 2), then two again: one waiting line
    however the out-queue's events move the estimate meanwhile, then one line when acknowledgements
    come back. A statistics report a second, 300 messages a second."""
    watch = AcknowledgementWatch("devices", 2, now=0.0)
    lines, produced, acknowledged, now = [], 0, 0, 0.0

    def report(up: int, events: int = 0) -> None:
        nonlocal now, produced
        now, produced = now + 1, produced + 300
        outstanding = produced - acknowledged + events
        lines.append(watch.observe(now, produced - outstanding, outstanding, up, 3 if up >= 2 else 2))

    for events in [0] + healthy_events:
        acknowledged = produced + 300 - 30  # all but the last batch of this second
        report(up=2, events=events)
    # The outage, long enough after its last event for acknowledgements to count as stopped.
    for events in outage_events + [0] * (int(STALL_SECONDS) + 2):
        report(up=1, events=events)
    for _ in range(after):
        acknowledged = produced + 300 - 30
        report(up=2)
    said = [line for line in lines if line]
    assert len(said) == 2, said
    assert said[0].startswith("simulator: waiting, NOT_ENOUGH_REPLICAS: 1 of 2 Kafka brokers answer")
    assert said[1].startswith("simulator: Kafka acknowledges again after")


def test_no_waiting_line_while_enough_brokers_answer_or_without_min_insync():
    """Acknowledgements that stop with every broker up (a slow broker, a full disk) are not this
    condition; nor is a cluster that would not say its min.insync.replicas."""
    for watch, up in ((AcknowledgementWatch("devices", 2, now=0.0), 2), (AcknowledgementWatch("devices", None, now=0.0), 1)):
        assert [watch.observe(float(t), 0, 500, up, 3) for t in range(1, 30)] == [None] * 29


@pytest.mark.parametrize("field, value", [("malformed_fraction", 1.5), ("count", 0), ("users", -1), ("rate", 0.0),
                                          ("processes", 0), ("interval_seconds", -5.0)])
def test_config_rejects_bad_values(field, value):
    with pytest.raises(SimulatorConfigError, match=field.split("_")[0]):
        replace(SimulatorConfig("127.0.0.1:9092"), **{field: value}).validate()


def antenna(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "antenna_assets.cli", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("args, message", [
    (["--rate", "fast"], "argument --rate: expected a number, got 'fast'"),
    (["--count", "-3"], "argument --count: must be >= 1, got -3"),
    (["--malformed-fraction", "1.2"], "argument --malformed-fraction: must be >= 0 and <= 1, got 1.2"),
    (["--frobnicate"], "unrecognized arguments: --frobnicate"),
])
def test_cli_rejects_bad_input_in_one_line(args, message):
    result = antenna("simulate", *args)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0]


def test_cli_unreachable_broker_fails_fast_in_one_line():
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    began = time.monotonic()
    result = antenna("simulate", "--bootstrap", f"127.0.0.1:{port}", "--count", "10")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(f"antenna simulate: error: Kafka at 127.0.0.1:{port} does not answer")
    assert time.monotonic() - began < 20


def test_cli_ground_truth_equals_what_the_topic_holds(settings, topic, tmp_path):
    path = tmp_path / "cli.json"
    result = antenna("simulate", "--topic", topic, "--backfill-hours", "1", "--start", START.isoformat(),
                     "--seed", "9", "--users", "30", "--apps", "SKYPE,WHATSAPP", "--ground-truth", str(path),
                     "--no-progress", env={"ANTENNA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"sent 1,800 messages to {topic}") and len(result.stdout.splitlines()) == 1
    # Counted independently: the messages read back from the topic, summed here.
    truth = GroundTruth.from_json(path)
    assert_matches_ground_truth(consume(settings, topic, 1800), truth)
    assert set(truth.hours[START].app) == {"SKYPE", "WHATSAPP"}
