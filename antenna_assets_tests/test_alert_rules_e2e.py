"""Alerts end to end on the real stack: Kafka -> the speed layer -> the alert rules -> the outbox -> the delivery
half's sender -> a local SMTP server and webhook receiver; then an operator's quota edit and the hour's batch."""

from __future__ import annotations

import json
from contextlib import closing
from datetime import datetime, timedelta
from urllib.parse import urlparse

import dagster as dg
from confluent_kafka import Producer

from antenna_assets.alert_sensors import alert_rules_sensor
from antenna_assets.alerts import rules
from antenna_assets.assets.batch import hourly_tables, raw_devices
from antenna_assets.assets.sources import user_metadata
from antenna_assets.hours import HOUR, partition_key, utc_now
from antenna_assets.postgres import connect, transaction
from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
from antenna_assets.serving.operators import store
from antenna_assets.serving.operators.validation import UserInput
from antenna_assets.serving.roles import grant_writer
from antenna_assets.settings import Settings
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, SpeedLayerTargets, run_until_stopped
from antenna_assets_tests.conftest import fresh_database
from antenna_assets_tests.test_alert_rules import _alert_ids, _alerts, _evaluate
from antenna_assets_tests.alert_servers import make_sender



def _produce(bootstrap: str, topic: str, hour: datetime, used: dict[str, int]) -> None:
    """Each user's bytes as three messages in `hour`."""
    producer = Producer({"bootstrap.servers": bootstrap})
    for user_id, total in used.items():
        for n, part in enumerate((total // 3, total // 3, total - 2 * (total // 3))):
            at = int((hour + timedelta(minutes=10 + 15 * n) - datetime(1970, 1, 1)).total_seconds())
            producer.produce(topic, json.dumps({"timestamp": at, "id": user_id, "antenna_id": "antenna-1",
                                                "bytes": part, "app": "SKYPE"}).encode())
    assert producer.flush(10) == 0


def test_end_to_end_provisional_final_and_withdrawn_once_each(settings, spark, topic, tmp_path, monkeypatch,
                                                              alert_settings, smtp, receiver):
    """Kafka -> the speed layer -> provisional, mailed and posted once; an operator raises a quota; the hour's batch
    -> final and withdrawn; evaluated again (the sensor's next ticks) -> nothing new, nothing sent twice."""
    over, raised, under = PROVISIONED_USERS[0], PROVISIONED_USERS[1], PROVISIONED_USERS[2]  # quotas 200, 300, 100 kB
    hour = utc_now().replace(minute=0, second=0, microsecond=0) - 2 * HOUR  # closed: its batch may run
    # The stream's lag (its events are two hours old) is not what this test is about.
    monkeypatch.setenv("ANTENNA_ALERTS_STREAM_LAG_SECONDS", str(10 * 3600))
    tuned = Settings.from_env()
    lake = LakeResource(root=str(tmp_path / "lake"), checkpoints=str(tmp_path / "lake" / "_checkpoints"))
    with fresh_database(settings) as owner:
        with closing(connect(owner)) as conn:
            grant_writer(conn)
        writer = settings.postgres_url_for(urlparse(owner).path.lstrip("/"))
        layer = lambda: SpeedLayer(spark, SpeedLayerConfig(trigger="available_now", watermark="3650 days",  # noqa: E731
                                                            query_name=topic),
                                   SpeedLayerTargets(settings.kafka_bootstrap, topic, lake.landing_path,
                                                     lake.checkpoint_path(topic), owner))
        key = lambda kind, user: (kind, rules.quota_key(kind, user.email, hour))  # noqa: E731

        _produce(settings.kafka_bootstrap, topic, hour, {over.id: 150_000, under.id: 50_000})
        run_until_stopped(layer())
        # Nobody over quota yet; the hour has landed data and no batch long after it closed: overdue.
        [(kind, dedup)] = _evaluate(writer, tuned, utc_now())
        assert kind == "health.hour_overdue" and dedup.startswith(f"{kind}:{partition_key(hour)}:")
        _produce(settings.kafka_bootstrap, topic, hour, {over.id: 100_000, raised.id: 400_000})
        run_until_stopped(layer())
        assert _evaluate(writer, tuned, utc_now()) == {key(rules.PROVISIONAL, over), key(rules.PROVISIONAL, raised)}
        assert _evaluate(writer, tuned, utc_now()) == set()
        # Delivered to the operators (and to a quota alert's user) by email, and to the webhook, once.
        users = {rules.quota_key(kind, user.email, hour): user.email for kind in rules.QUOTA_KINDS
                 for user in (over, raised)}

        def sent_once() -> bool:
            ids = _alert_ids(owner)
            mail = [(i, "ops@antenna.example") for i in ids.values()] + [(ids[k], users[k]) for k in ids if k in users]
            return smtp.mailbox.received() == sorted(mail) and receiver.delivered() == sorted(ids.values())

        sender = make_sender(alert_settings, writer)
        sender.deliver_due()
        assert sent_once() and all(r["valid"] for r in receiver.requests)
        assert {" ".join(m["Subject"].split()) for _, m in smtp.mailbox.messages} >= {  # unfolded
            f"[antenna] Over quota (provisional): {over.email} used 250 KB of 200 KB in "
            f"{hour:%Y-%m-%d %H}:00-{hour + HOUR:%H}:00 UTC so far"}

        with transaction(owner) as conn:  # the operator raises paco's quota, as the page does
            store.update_user(conn, "alice", UserInput(raised.id, raised.name, raised.email, 1_000_000_000))
        result = dg.materialize([user_metadata, raw_devices, hourly_tables], partition_key=partition_key(hour),
                                resources={"postgres": PostgresResource(url=owner), "lake": lake,
                                           "spark": SparkResource.for_lake(lake)},
                                instance=dg.DagsterInstance.ephemeral())
        assert result.success

        context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(),
                                          resources={"postgres": PostgresResource(url=writer)})
        assert alert_rules_sensor.evaluate_tick(context).skip_message == (
            "alerts enqueued: 1 health.hour_overdue.resolved, 1 quota.final, 1 quota.withdrawn; open conditions: none")
        for _ in range(2):
            assert alert_rules_sensor.evaluate_tick(context).skip_message.startswith("alerts enqueued: nothing new")
        alerts = _alerts(owner)
        assert {(kind, dedup) for kind, dedup, _ in alerts if kind.startswith("quota.")} == {
            key(rules.PROVISIONAL, over), key(rules.PROVISIONAL, raised), key(rules.FINAL, over),
            key(rules.WITHDRAWN, raised)}
        assert len(alerts) == 6  # and the overdue hour's two
        for _ in range(2):
            sender.deliver_due()
        sender.close()
        assert sent_once()
        final = next(p for kind, _, p in alerts if kind == rules.FINAL)
        assert (final["bytes"], final["quota"]) == (250_000, over.quota)
