"""The alert rules against the serving database: read what the rules need, decide (alerts/rules.py), write the
health conditions' state and enqueue the alerts (alerts/outbox.py), all in the caller's transaction, under an
advisory lock so two evaluations never decide from the same state. A crash before the commit leaves neither
the alerts nor the state: the next evaluation decides again, and the outbox's dedup keys keep each alert once."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from psycopg2.extras import Json, execute_values

from antenna_assets.alerts import rules
from antenna_assets.alerts.outbox import enqueue_alert
from antenna_assets.serving.schema import ALERT_CONDITIONS, USERS_OVER_QUOTA_1H
from antenna_assets.serving.views import SERVING_STREAM_FRESHNESS, SERVING_USERS_OVER_QUOTA_1H
from antenna_assets.settings import Settings

EVALUATION_LOCK_ID = 7_286_031


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation enqueued (new alerts only) and the conditions open after it."""

    enqueued: tuple[rules.Alert, ...]
    open_conditions: tuple[str, ...]

    def summary(self) -> str:
        counts = Counter(alert.kind for alert in self.enqueued)
        new = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items())) or "nothing new"
        return f"alerts enqueued: {new}; open conditions: {', '.join(self.open_conditions) or 'none'}"


def evaluate(conn, settings: Settings, now: datetime) -> Evaluation:
    """Decide and enqueue every alert due at `now` (naive UTC) in `conn`'s transaction; the caller commits."""
    since = now - timedelta(hours=settings.alerts_lookback_hours)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (EVALUATION_LOCK_ID,))
        # Final hours before the speed layer's: an hour a batch finalizes between the two reads gets no
        # provisional decided from a state older than its final (its finals come at the next evaluation).
        alerted = _alerted(cur, since)
        final_hours = _final_hours(cur, since)
        quota = rules.quota_alerts(_over_so_far(cur, since), final_hours, alerted)
        health, state = rules.health_transitions(
            _observations(cur, settings, now, since), _conditions(cur), now,
            {rules.STREAM_LAG: timedelta(seconds=settings.alerts_stream_lag_hold_seconds)})
        _write_conditions(cur, state.values())
        enqueued = tuple(alert for alert in (*quota, *health) if _enqueue(cur, alert))
    open_now = sorted(f"{c.name} {c.subject}".strip() for c in state.values() if c.opened_at is not None)
    return Evaluation(enqueued, tuple(open_now))


def record_run_failure(conn, run_id: str, job_name: str, message: str, partition: str | None) -> bool:
    """Enqueue the alert of a failed run (once per run id) in `conn`'s transaction; True when new."""
    alert = rules.run_failure(run_id, job_name, message, partition)
    with conn.cursor() as cur:
        return _enqueue(cur, alert)


def _enqueue(cur, alert: rules.Alert) -> bool:
    return enqueue_alert(cur, kind=alert.kind, subject=alert.subject, dedup_key=alert.dedup_key,
                         payload=alert.payload)


def _alerted(cur, since: datetime) -> list[tuple[str, datetime]]:
    """(email, hour) with a provisional or final alert for an hour since `since`."""
    cur.execute("SELECT payload->>'email', payload->>'hour' FROM alerts WHERE kind IN (%s, %s) "
                "AND payload ? 'email' AND payload ? 'hour' AND created >= %s::timestamp AT TIME ZONE 'UTC'",
                (rules.PROVISIONAL, rules.FINAL, since))
    hours = [(email, datetime.strptime(hour, rules.ISO_FORMAT)) for email, hour in cur.fetchall()]
    return [(email, hour) for email, hour in hours if hour >= since]


def _final_hours(cur, since: datetime) -> dict[datetime, list[rules.Usage]]:
    """Each batch-final hour since `since` with its users over quota (none: an empty list)."""
    cur.execute(f"SELECT h.date, q.email, q.sum_user_bytes, q.quota FROM batch_hours h "
                f"LEFT JOIN {USERS_OVER_QUOTA_1H.name} q ON q.date = h.date "
                "WHERE h.table_name = %s AND h.date >= %s", (USERS_OVER_QUOTA_1H.name, since))
    hours: dict[datetime, list[rules.Usage]] = {}
    for hour, email, used, quota in cur.fetchall():
        rows = hours.setdefault(hour, [])  # an hour with nobody over quota is final too
        if email is not None:
            rows.append(rules.Usage(email, hour, used, quota))
    return hours


def _over_so_far(cur, since: datetime) -> list[rules.Usage]:
    cur.execute(f"SELECT email, date, sum_user_bytes, quota FROM {SERVING_USERS_OVER_QUOTA_1H} "
                "WHERE source = 'speed' AND date >= %s", (since,))
    return [rules.Usage(email, hour, used, quota) for email, hour, used, quota in cur.fetchall()]


def _observations(cur, settings: Settings, now: datetime, since: datetime) -> list[rules.Observation]:
    cur.execute(f"SELECT latest_event_time FROM {SERVING_STREAM_FRESHNESS}")
    observed = [rules.stream_lag(cur.fetchone()[0], now, settings.alerts_stream_lag_seconds)]
    window = timedelta(minutes=settings.alerts_dead_letter_window_minutes)
    # The micro-batches' own counts: bad_messages are the dead letters each wrote in its transaction.
    cur.execute("SELECT coalesce(sum(bad_messages), 0), coalesce(sum(good_messages + bad_messages), 0) "
                "FROM streaming_batches WHERE applied_at > %s", (now - window,))
    bad, total = cur.fetchone()
    observed.append(rules.dead_letters(bad, total, window, settings.alerts_dead_letter_ratio,
                                       settings.alerts_dead_letter_min))
    cur.execute("SELECT hour FROM landing_hours WHERE hour >= %s", (since,))
    landed = [hour for (hour,) in cur.fetchall()]
    cur.execute("SELECT date FROM batch_hours WHERE table_name = %s AND date >= %s", (USERS_OVER_QUOTA_1H.name, since))
    final = [hour for (hour,) in cur.fetchall()]
    observed.extend(rules.overdue_hours(landed, final, now, settings.hour_close_grace, settings.batch_run_minutes))
    return [o for o in observed if o is not None]


def _conditions(cur) -> list[rules.Condition]:
    cur.execute(f"SELECT {', '.join(ALERT_CONDITIONS.names)} FROM {ALERT_CONDITIONS.name}")
    return [rules.Condition(*row) for row in cur.fetchall()]


def _write_conditions(cur, conditions) -> None:
    """The state table becomes exactly `conditions` (a handful of rows; the lock is held)."""
    cur.execute(f"DELETE FROM {ALERT_CONDITIONS.name}")
    execute_values(cur, f"{ALERT_CONDITIONS.insert_into()} VALUES %s",
                   [(c.name, c.subject, c.first_seen, c.opened_at, c.summary, Json(c.detail)) for c in conditions])
