"""Which alerts exist: pure decisions from what the serving database shows (no SQL, no clock, no Dagster).

Quota alerts, per (user, UTC hour), each kind at most once ever (its dedup key names user, hour and kind):
- `quota.provisional`: the hour is not batch-final yet and the speed layer's sum (serving_user_1h, as
  serving_users_over_quota_1h compares it with the live quota) is over the user's quota.
- `quota.final`: the hour is batch-final and the user is a row of users_over_quota_1h.
- `quota.withdrawn`: the hour is batch-final, the user was alerted for it (provisional or final) and is
  not a row of the hour's current batch result (late events, a raised quota, a re-run).
A re-run of an hour that changes its final set is judged like the first run: a user new to the set gets
their final (if they had none), a user dropped from it their withdrawn (if they had none). A kind already
sent for (user, hour) is never sent again, so the alerts of an hour are at most P, F, W in the order the
batch results made them due; the page and the dashboard show the current numbers.

Health alerts: a condition (name, subject) observed bad opens once it has been bad for its hold time
(`health.<name>`), stays open without repeat while it lasts, and resolves (`health.<name>.resolved`) the
first time it is not observed bad; both keyed by the episode's first observation, so each is sent once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Iterable, Mapping

from antenna_assets.hours import HOUR, hour_closes_at, partition_key
from antenna_assets.serving.operators.quota import format_bytes

PROVISIONAL, FINAL, WITHDRAWN = "quota.provisional", "quota.final", "quota.withdrawn"
QUOTA_KINDS = (PROVISIONAL, FINAL, WITHDRAWN)
RUN_FAILURE = "run.failure"
STREAM_LAG, DEAD_LETTERS, HOUR_OVERDUE = "stream_lag", "dead_letters", "hour_overdue"


@dataclass(frozen=True)
class Alert:
    """One alert to enqueue (alerts/outbox.py `enqueue_alert`); `dedup_key` makes it once."""

    kind: str
    subject: str
    dedup_key: str
    payload: dict


@dataclass(frozen=True)
class Usage:
    """A user's bytes in one UTC hour against their quota."""

    email: str
    hour: datetime
    bytes: int
    quota: int


def _hour_text(hour: datetime) -> str:
    return f"{hour:%Y-%m-%d %H:00}-{hour + HOUR:%H:00} UTC"


# Times in payloads and dedup keys: UTC, to the second (evaluate.py parses the quota alerts' hours back).
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def _iso(moment: datetime) -> str:
    return moment.strftime(ISO_FORMAT)


def quota_key(kind: str, email: str, hour: datetime) -> str:
    return f"{kind}:{email}:{partition_key(hour)}"


def _quota_alert(kind: str, email: str, hour: datetime, subject: str, usage: Usage | None) -> Alert:
    payload = {"email": email, "user_email": email, "hour": _iso(hour)}
    if usage is not None:
        payload.update(bytes=usage.bytes, quota=usage.quota)
    return Alert(kind, subject, quota_key(kind, email, hour), payload)


def provisional(usage: Usage) -> Alert:
    return _quota_alert(PROVISIONAL, usage.email, usage.hour,
                        f"Over quota (provisional): {usage.email} used {format_bytes(usage.bytes)} of "
                        f"{format_bytes(usage.quota)} in {_hour_text(usage.hour)} so far", usage)


def final(usage: Usage) -> Alert:
    return _quota_alert(FINAL, usage.email, usage.hour,
                        f"Over quota (final): {usage.email} used {format_bytes(usage.bytes)} of "
                        f"{format_bytes(usage.quota)} in {_hour_text(usage.hour)}", usage)


def withdrawn(email: str, hour: datetime) -> Alert:
    return _quota_alert(WITHDRAWN, email, hour,
                        f"Over quota withdrawn: {email} is not over quota in {_hour_text(hour)} "
                        "by the batch layer's final numbers", None)


def quota_alerts(over_so_far: Iterable[Usage], final_hours: Mapping[datetime, Iterable[Usage]],
                 alerted: Iterable[tuple[str, datetime]]) -> list[Alert]:
    """Every quota alert due now (those already sent included: the outbox's dedup key drops them).

    `over_so_far`: users over quota by the speed layer in hours that are not batch-final;
    `final_hours`: each batch-final hour with its rows of users_over_quota_1h (possibly none);
    `alerted`: (email, hour) that had a provisional or final alert."""
    due = [provisional(usage) for usage in over_so_far]
    finals = {hour: {usage.email: usage for usage in rows} for hour, rows in final_hours.items()}
    for hour, rows in finals.items():
        due.extend(final(usage) for usage in rows.values())
    due.extend(withdrawn(email, hour) for email, hour in sorted(set(alerted))
               if hour in finals and email not in finals[hour])
    return due


# -- health --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observation:
    """A health condition observed bad now: `subject` tells episodes of one name apart ('' or an hour)."""

    name: str
    subject: str
    summary: str  # one line, for the alert's subject
    detail: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Condition:
    """A condition's episode as the state table keeps it: bad since `first_seen`, open since `opened_at`."""

    name: str
    subject: str
    first_seen: datetime
    opened_at: datetime | None
    summary: str
    detail: dict


def _episode_key(kind: str, condition: Condition) -> str:
    return f"{kind}:{condition.subject}:{_iso(condition.first_seen)}"


def _health_payload(condition: Condition) -> dict:
    return {"condition": condition.name, "subject": condition.subject, "since": _iso(condition.first_seen),
            "detail": condition.detail}


def health_transitions(observed: Iterable[Observation], state: Iterable[Condition], now: datetime,
                       hold: Mapping[str, timedelta]) -> tuple[list[Alert], dict[tuple[str, str], Condition]]:
    """The alerts due and the new state (every condition still bad, open or waiting out its hold)."""
    before = {(c.name, c.subject): c for c in state}
    alerts, after = [], {}
    for seen in observed:
        key = (seen.name, seen.subject)
        known = before.get(key)
        first_seen = known.first_seen if known else now
        opened_at = known.opened_at if known else None
        if opened_at is None and now - first_seen >= hold.get(seen.name, timedelta(0)):
            opened_at = now
            condition = Condition(seen.name, seen.subject, first_seen, opened_at, seen.summary, seen.detail)
            kind = f"health.{seen.name}"
            alerts.append(Alert(kind, seen.summary, _episode_key(kind, condition), _health_payload(condition)))
        # An open condition keeps the summary and detail it was announced with: its resolution names them.
        after[key] = (known if known and known.opened_at else
                      Condition(seen.name, seen.subject, first_seen, opened_at, seen.summary, seen.detail))
    for key, condition in before.items():
        if key not in after and condition.opened_at is not None:
            kind = f"health.{condition.name}.resolved"
            alerts.append(Alert(kind, f"Resolved: {condition.summary}", _episode_key(kind, condition),
                                {**_health_payload(condition), "resolved": _iso(now)}))
    return alerts, after


def stream_lag(latest_event: datetime | None, now: datetime, limit_seconds: float) -> Observation | None:
    """The stream is behind when its latest applied event is older than the limit; a stream that never
    applied anything is not (there is nothing to be behind)."""
    if latest_event is None:
        return None
    lag = (now - latest_event).total_seconds()
    if lag <= limit_seconds:
        return None
    return Observation(STREAM_LAG, "", f"Stream behind: its latest applied event is {lag / 60:.1f} min old "
                                       f"(limit {limit_seconds / 60:g} min)",
                       {"latest_event_time": _iso(latest_event), "limit_seconds": limit_seconds})


def dead_letters(bad: int, total: int, window: timedelta, ratio: float, minimum: int) -> Observation | None:
    """Too many dead letters: over `ratio` of the records the stream applied in the window, and at least `minimum`."""
    if bad < minimum or total == 0 or bad / total <= ratio:
        return None
    minutes = window.total_seconds() / 60
    return Observation(DEAD_LETTERS, "", f"Dead letters: {bad} of {total} records ({bad / total:.1%}) in the last "
                                         f"{minutes:g} min (limit {ratio:.1%})",
                       {"dead_letters": bad, "records": total, "window_minutes": minutes, "limit_ratio": ratio})


def overdue_hours(landed: Iterable[datetime], final: Iterable[datetime], now: datetime, grace: timedelta,
                  run_minutes: int) -> list[Observation]:
    """Hours with landed data whose batch is not final `run_minutes` after they closed: the hourly tables'
    freshness policy (freshness.py), one condition per hour."""
    done, due = set(final), timedelta(minutes=run_minutes)
    return [Observation(HOUR_OVERDUE, partition_key(hour),
                        f"Hour {_hour_text(hour)} overdue: not materialized {run_minutes} min after it closed",
                        {"hour": _iso(hour), "deadline": _iso(hour_closes_at(hour, grace) + due)})
            for hour in sorted(set(landed)) if hour not in done and hour_closes_at(hour, grace) + due <= now]


def run_failure(run_id: str, job_name: str, message: str, partition: str | None) -> Alert:
    where = f" (partition {partition})" if partition else ""
    lines = (message or "").strip().splitlines()
    first_line = lines[0][:300] if lines else "no message"
    return Alert(RUN_FAILURE, f"Run failed: {job_name} run {run_id}{where}: {first_line}", f"{RUN_FAILURE}:{run_id}",
                 {"run_id": run_id, "job": job_name, "partition": partition, "message": first_line})
