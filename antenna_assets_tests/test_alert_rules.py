"""Alerts' rules half: which alerts exist (alerts/rules.py) and their evaluation against a real PostgreSQL
(alerts/evaluate.py, as the pipeline's writer role), through the Dagster sensors too; a property test over
sequences of speed totals, batch results and quota edits. End to end: test_alert_rules_e2e.py."""

from __future__ import annotations

import uuid
from contextlib import closing
from datetime import datetime, timedelta
from urllib.parse import urlparse

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from antenna_assets.alert_sensors import alert_rules_sensor, run_failure_alert_sensor
from antenna_assets.alerts import rules
from antenna_assets.alerts.evaluate import evaluate
from antenna_assets.batch.layer import write_hourly_tables
from antenna_assets.hours import HOUR, utc_now
from antenna_assets.postgres import connect, transaction
from antenna_assets.resources import PostgresResource
from antenna_assets.serving.roles import grant_writer
from antenna_assets.serving.views import mark_batch_hours
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets_tests.conftest import fresh_database

USERS = PROVISIONED_USERS[:3]
QUOTA = 1000  # every test user's quota at the start of an example
NOW = datetime(2026, 12, 6, 14, 20)


@pytest.fixture(scope="module")
def rules_db(settings):
    """(owner URL, writer URL) of one fresh serving database for the module; the rules run as the writer."""
    with fresh_database(settings) as url:
        with closing(connect(url)) as conn:
            grant_writer(conn)
        yield url, settings.postgres_url_for(urlparse(url).path.lstrip("/"))


def _reset(owner_url: str) -> None:
    with transaction(owner_url) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE alerts, alert_deliveries, alert_conditions, bytes_agg_user, users_over_quota_1h, "
                    "batch_hours, streaming_batches, landing_hours")
        cur.execute("UPDATE user_metadata SET quota = %s WHERE id = ANY(%s)", (QUOTA, [u.id for u in USERS]))


def _evaluate(writer_url: str, settings, now: datetime) -> set[tuple[str, str]]:
    with transaction(writer_url) as conn:
        evaluation = evaluate(conn, settings, now)
    return {(a.kind, a.dedup_key) for a in evaluation.enqueued}


def _alerts(url: str) -> list[tuple[str, str, dict]]:
    return _query(url, "SELECT kind, dedup_key, payload FROM alerts ORDER BY id")


def _alert_ids(url: str) -> dict[str, str]:
    """Each alert's id (as the channels name it) by its dedup key."""
    return {key: str(alert_id) for alert_id, key in _query(url, "SELECT id, dedup_key FROM alerts")}


def _query(url: str, sql: str) -> list[tuple]:
    with transaction(url) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchall()


def _add_speed(cur, user_id: str, hour: datetime, used: int) -> None:
    cur.execute("INSERT INTO bytes_agg_user VALUES (%s, %s, %s) ON CONFLICT (id, date) DO UPDATE "
                "SET sum_user_bytes = bytes_agg_user.sum_user_bytes + EXCLUDED.sum_user_bytes",
                (user_id, hour, used))


# -- the rules alone ------------------------------------------------------------------------


def test_a_rerun_that_changes_the_final_set_withdraws_and_finalizes_each_once():
    hour = NOW.replace(minute=0) - HOUR
    a, b = (rules.Usage(u.email, hour, 2000, 1000) for u in USERS[:2])
    keys = lambda alerts: {x.dedup_key for x in alerts}  # noqa: E731
    first = rules.quota_alerts([], {hour: [a]}, [(b.email, hour)])  # b had a provisional only
    assert keys(first) == {rules.quota_key(rules.FINAL, a.email, hour), rules.quota_key(rules.WITHDRAWN, b.email, hour)}
    # The re-run finds b over after all (late events) and a not any more (a raised quota).
    rerun = rules.quota_alerts([], {hour: [b]}, [(a.email, hour), (b.email, hour)])
    assert keys(rerun) == {rules.quota_key(rules.FINAL, b.email, hour), rules.quota_key(rules.WITHDRAWN, a.email, hour)}


def test_a_condition_opens_after_its_hold_stays_open_without_repeat_and_resolves_once():
    hold = {rules.STREAM_LAG: timedelta(seconds=120)}
    behind = rules.Observation(rules.STREAM_LAG, "", "Stream behind")
    alerts, state = rules.health_transitions([behind], [], NOW, hold)
    assert alerts == [] and state[(rules.STREAM_LAG, "")].opened_at is None
    alerts, state = rules.health_transitions([behind], state.values(), NOW + timedelta(seconds=120), hold)
    [opened] = alerts
    assert opened.kind == "health.stream_lag" and opened.payload["since"] == "2026-12-06T14:20:00Z"
    alerts, state = rules.health_transitions([behind], state.values(), NOW + timedelta(seconds=500), hold)
    assert alerts == []
    alerts, state = rules.health_transitions([], state.values(), NOW + timedelta(seconds=600), hold)
    [resolved] = alerts
    assert resolved.kind == "health.stream_lag.resolved" and resolved.subject == "Resolved: Stream behind" and not state
    # Bad again: a new episode, with keys of its own.
    alerts, _ = rules.health_transitions([behind], [], NOW + timedelta(seconds=700), {})
    assert alerts[0].dedup_key not in (opened.dedup_key, resolved.dedup_key)


# -- evaluation against PostgreSQL ----------------------------------------------------------------


# A step: ("speed", user, hour, bytes) | ("batch", hour, {user: bytes}) | ("quota", user, quota) | ("evaluate",)
_user = st.integers(0, len(USERS) - 1)
_hour = st.integers(0, 2)
STEPS = st.lists(st.one_of(
    st.tuples(st.just("speed"), _user, _hour, st.integers(0, 900)),
    st.tuples(st.just("batch"), _hour, st.dictionaries(_user, st.integers(1001, 5000), max_size=len(USERS))),
    st.tuples(st.just("quota"), _user, st.sampled_from([500, 1000, 1500, 3000])),
    st.tuples(st.just("evaluate")),
), max_size=14)


class Oracle:
    """The rules restated over plain sets: what each evaluation must enqueue."""

    def __init__(self):
        self.speed, self.quota, self.final, self.sent = {}, {i: QUOTA for i in range(len(USERS))}, {}, set()

    def evaluate(self) -> set[tuple[str, int, int]]:
        due = {(rules.PROVISIONAL, i, k) for (i, k), used in self.speed.items()
               if k not in self.final and used > self.quota[i]}
        due |= {(rules.FINAL, i, k) for k, over in self.final.items() for i in over}
        alerted = {(i, k) for kind, i, k in self.sent if kind in (rules.PROVISIONAL, rules.FINAL)}
        due |= {(rules.WITHDRAWN, i, k) for i, k in alerted if k in self.final and i not in self.final[k]}
        new = due - self.sent
        self.sent |= new
        return new


@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=STEPS)
def test_the_alerts_enqueued_are_exactly_the_rules_each_once(rules_db, settings, steps):
    owner, writer = rules_db
    _reset(owner)
    now = utc_now()
    hours = [now.replace(minute=0, second=0, microsecond=0) - k * HOUR for k in (2, 1, 0)]
    oracle = Oracle()
    for step in [*steps, ("evaluate",), ("evaluate",)]:
        if step[0] == "speed":
            _, i, k, used = step
            with transaction(owner) as conn, conn.cursor() as cur:
                _add_speed(cur, USERS[i].id, hours[k], used)
            oracle.speed[(i, k)] = oracle.speed.get((i, k), 0) + used
        elif step[0] == "batch":  # a run (or re-run) of the hour, whatever its result
            _, k, over = step
            with transaction(owner) as conn:
                write_hourly_tables(conn, {"users_over_quota_1h": [(USERS[i].email, hours[k], oracle.quota[i], used)
                                                                   for i, used in over.items()]},
                                    hours[k], hours[k] + HOUR)
            oracle.final[k] = set(over)
        elif step[0] == "quota":
            _, i, quota = step
            with transaction(owner) as conn, conn.cursor() as cur:
                cur.execute("UPDATE user_metadata SET quota = %s WHERE id = %s", (quota, USERS[i].id))
            oracle.quota[i] = quota
        else:
            expected = {(kind, rules.quota_key(kind, USERS[i].email, hours[k])) for kind, i, k in oracle.evaluate()}
            assert _evaluate(writer, settings, now) == expected, steps
    assert sorted((kind, key) for kind, key, _ in _alerts(owner)) == sorted(
        (kind, rules.quota_key(kind, USERS[i].email, hours[k])) for kind, i, k in oracle.sent)


def test_health_conditions_open_once_and_resolve(rules_db, settings):
    owner, writer = rules_db
    _reset(owner)
    now = utc_now().replace(microsecond=0)
    overdue = now.replace(minute=0, second=0) - 3 * HOUR
    tuned = settings.replace(alerts_stream_lag_seconds=300, alerts_stream_lag_hold_seconds=120,
                             alerts_dead_letter_ratio=0.1, alerts_dead_letter_min=5, alerts_dead_letter_window_minutes=5)
    later = lambda seconds: now + timedelta(seconds=seconds)  # noqa: E731
    with transaction(owner) as conn, conn.cursor() as cur:
        cur.execute("INSERT INTO streaming_batches (query, batch_id, good_messages, bad_messages, late_messages, "
                    "max_event_time, applied_at) VALUES ('speed_layer', 0, 100, 1, 0, %s, %s)",
                    (later(-600), later(-600)))
        cur.execute("INSERT INTO landing_hours (hour) VALUES (%s)", (overdue,))
    kinds = lambda new: sorted(kind for kind, _ in new)  # noqa: E731
    assert kinds(_evaluate(writer, tuned, now)) == ["health.hour_overdue"]  # the stream's lag waits out its hold
    assert kinds(_evaluate(writer, tuned, later(60))) == []
    assert kinds(_evaluate(writer, tuned, later(120))) == ["health.stream_lag"]
    assert kinds(_evaluate(writer, tuned, later(130))) == []
    with transaction(owner) as conn, conn.cursor() as cur:  # the stream catches up, with many dead letters
        cur.execute("INSERT INTO streaming_batches (query, batch_id, good_messages, bad_messages, late_messages, "
                    "max_event_time, applied_at) VALUES ('speed_layer', 1, 10, 40, 0, %s, %s)", (later(130), later(130)))
    assert kinds(_evaluate(writer, tuned, later(131))) == ["health.dead_letters", "health.stream_lag.resolved"]
    with transaction(owner) as conn, conn.cursor() as cur:
        mark_batch_hours(cur, ["users_over_quota_1h"], [overdue])
    assert kinds(_evaluate(writer, tuned, later(140))) == ["health.hour_overdue.resolved"]
    assert kinds(_evaluate(writer, tuned, later(131 + 301))) == ["health.dead_letters.resolved"]
    assert kinds(_evaluate(writer, tuned, later(500))) == []
    alerts = _alerts(owner)
    assert len(alerts) == 6 and len({key for _, key, _ in alerts}) == 6
    overdue_alert = next(p for kind, _, p in alerts if kind == "health.hour_overdue")
    assert overdue_alert["subject"] == f"{overdue:%Y-%m-%d-%H}:00"


def test_the_sensor_evaluates_and_says_what_it_enqueued(rules_db):
    owner, writer = rules_db
    _reset(owner)
    hour = utc_now().replace(minute=0, second=0, microsecond=0)
    with transaction(owner) as conn, conn.cursor() as cur:
        _add_speed(cur, USERS[0].id, hour, QUOTA + 1)
    context = dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral(),
                                      resources={"postgres": PostgresResource(url=writer)})
    first = alert_rules_sensor.evaluate_tick(context)
    assert first.skip_message == "alerts enqueued: 1 quota.provisional; open conditions: none"
    again = alert_rules_sensor.evaluate_tick(context)
    assert again.skip_message == "alerts enqueued: nothing new; open conditions: none"
    [(kind, key, payload)] = _alerts(owner)
    assert payload == {"email": USERS[0].email, "user_email": USERS[0].email, "hour": f"{hour:%Y-%m-%dT%H:%M:%S}Z",
                       "bytes": QUOTA + 1, "quota": QUOTA}


def test_a_failed_run_is_alerted_once(rules_db):
    owner, writer = rules_db
    _reset(owner)
    instance = dg.DagsterInstance.ephemeral()
    run = instance.add_run(dg.DagsterRun(job_name="hourly_batch_job", run_id=str(uuid.uuid4()),
                                         status=dg.DagsterRunStatus.STARTED,
                                         tags={"dagster/partition": "2026-12-06-10:00"}))
    instance.report_run_failed(run, "Spark ran out of memory\nat line 2 of the trace")
    [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    for _ in range(2):  # a sensor that sees the failure again (a restart before its cursor moved) adds nothing
        context = dg.build_run_status_sensor_context(
            sensor_name=run_failure_alert_sensor.name, dagster_instance=instance,
            dagster_run=instance.get_run_by_id(run.run_id), dagster_event=failure.dagster_event,
            resources={"postgres": PostgresResource(url=writer)}).for_run_failure()
        run_failure_alert_sensor(context)
    [(kind, key, payload)] = _alerts(owner)
    assert (kind, key) == ("run.failure", f"run.failure:{run.run_id}")
    assert {k: v for k, v in payload.items() if k != "message"} == {
        "run_id": run.run_id, "job": "hourly_batch_job", "partition": "2026-12-06-10:00"}
    assert payload["message"].startswith("Spark ran out of memory") and "\n" not in payload["message"]

