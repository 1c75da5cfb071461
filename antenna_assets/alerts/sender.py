"""The sender: delivers the outbox's pending alerts to the configured channels (docs/alerts.md: Delivery).

A pass first gives each new alert its deliveries, one per channel and recipient the settings name now, then
delivers the due ones one at a time: a transaction claims a delivery (`FOR UPDATE SKIP LOCKED`, so senders
running at once never take the same one), sends it, records the outcome and commits. A delivery is marked
sent only after the server accepted it, in the claiming transaction: a sender that dies (or loses the
database) between the server's acceptance and that commit leaves the delivery pending, and it is sent again
— at most one duplicate per such crash, the one delivery in flight, with the same alert id (the webhook's
`Antenna-Alert-Id` header, the email's Message-ID) so a receiver can drop it. Nothing is ever sent twice
otherwise, and nothing accepted is lost.
"""

from __future__ import annotations

import select
import time
from dataclasses import dataclass, field
from typing import Callable

from antenna_assets.alerts.channels import DELIVERED, DOWN, REFUSED, RETRY, AlertMessage, Channel, Outcome
from antenna_assets.alerts.outbox import NOTIFY_CHANNEL
from antenna_assets.postgres import UTC_SESSION, KeptConnection, connect
from antenna_assets.settings import Settings

_FAN_OUT_BATCH = 500  # new alerts given their deliveries per transaction


@dataclass(frozen=True)
class RetryPolicy:
    first_seconds: float
    max_seconds: float
    max_attempts: int

    @classmethod
    def of(cls, settings: Settings) -> "RetryPolicy":
        return cls(settings.alerts_retry_seconds, settings.alerts_retry_max_seconds, settings.alerts_max_attempts)

    def delay(self, attempts: int) -> float:
        """Seconds to wait after the `attempts`-th failed try: doubling from the first delay, capped."""
        return min(self.first_seconds * 2.0 ** min(attempts - 1, 64), self.max_seconds)


@dataclass(frozen=True)
class Step:
    """A delivery's state after one try: `retry_in` seconds until the next, for a pending one."""

    state: str  # pending, sent or failed
    attempts: int
    last_error: str | None
    retry_in: float | None = None


def after_try(policy: RetryPolicy, attempts_before: int, outcome: Outcome) -> Step:
    """The delivery state machine: sent once accepted, failed at once when refused, else pending with back-off
    until its `max_attempts`-th try, then failed."""
    attempts = attempts_before + 1
    if outcome.kind == DELIVERED:
        return Step("sent", attempts, None)
    if outcome.kind == REFUSED:
        return Step("failed", attempts, outcome.detail)
    if attempts >= policy.max_attempts:
        return Step("failed", attempts, f"{outcome.detail} (gave up after {attempts} tries)")
    return Step("pending", attempts, outcome.detail, policy.delay(attempts))


@dataclass
class PassReport:
    delivered: int = 0
    failed: int = 0
    retrying: int = 0
    channels_down: dict[str, str] = field(default_factory=dict)
    next_due_seconds: float | None = None  # until the earliest pending delivery of a configured channel is due

    def line(self) -> str:
        down = "".join(f"; {name} down: {why}" for name, why in self.channels_down.items())
        return f"delivered {self.delivered}, failed {self.failed}, to retry {self.retrying}{down}"


_CLAIM = """
    SELECT d.alert_id, d.channel, d.recipient, d.attempts, a.kind, a.subject, a.dedup_key, a.payload, a.created
    FROM alert_deliveries d JOIN alerts a ON a.id = d.alert_id
    WHERE d.state = 'pending' AND d.next_attempt <= now() AND d.channel = ANY(%s) {only_alert}
    ORDER BY d.next_attempt, d.alert_id LIMIT 1
    FOR UPDATE OF d SKIP LOCKED"""

# The alert's row is locked first, so the summary reads every delivery's committed state, even when two
# senders finish deliveries of one alert at once.
_SUMMARISE = """
    UPDATE alerts a SET state = s.state, attempts = s.attempts, last_error = s.last_error,
                        next_attempt = COALESCE(s.next_attempt, a.next_attempt), sent_at = s.sent_at
    FROM (SELECT CASE WHEN bool_or(state = 'pending') THEN 'pending'
                      WHEN bool_or(state = 'failed') THEN 'failed' ELSE 'sent' END AS state,
                 max(attempts) AS attempts,
                 string_agg(channel || ' ' || recipient || ': ' || last_error, '; ' ORDER BY channel, recipient)
                     FILTER (WHERE state <> 'sent' AND last_error IS NOT NULL) AS last_error,
                 min(next_attempt) FILTER (WHERE state = 'pending') AS next_attempt,
                 max(delivered_at) AS sent_at
          FROM alert_deliveries WHERE alert_id = %(id)s) s
    WHERE a.id = %(id)s"""


class Sender:
    """Delivers the outbox of the database at `url` through `channels`."""

    def __init__(self, url: str, channels: list[Channel], policy: RetryPolicy, log: Callable[[str], None] = print):
        self.url, self.channels, self.policy, self.log = url, {c.name: c for c in channels}, policy, log
        self.db = KeptConnection(url)

    def fan_out(self, only_alert: int | None = None) -> None:
        """Give new alerts (or just `only_alert`) their deliveries; one with no recipient at all fails."""
        from psycopg2.extras import execute_values

        while True:
            with self.db.transaction() as conn, conn.cursor() as cur:
                cur.execute(f"""SELECT id, payload FROM alerts a WHERE state = 'pending'
                                  AND NOT EXISTS (SELECT 1 FROM alert_deliveries d WHERE d.alert_id = a.id)
                                  {'AND id = %(only)s' if only_alert is not None else ''}
                                ORDER BY id LIMIT {_FAN_OUT_BATCH} FOR UPDATE SKIP LOCKED""", {"only": only_alert})
                alerts = cur.fetchall()
                rows = [(alert_id, channel.name, recipient) for alert_id, payload in alerts
                        for channel in self.channels.values() for recipient in channel.recipients(payload)]
                # Another sender may have given an alert its deliveries since this statement's snapshot.
                execute_values(cur, "INSERT INTO alert_deliveries (alert_id, channel, recipient) VALUES %s "
                                    "ON CONFLICT DO NOTHING", rows)
                lonely = sorted({alert_id for alert_id, _ in alerts} - {row[0] for row in rows})
                cur.execute("UPDATE alerts SET state = 'failed', last_error = %s WHERE id = ANY(%s)",
                            (f"no recipient: no configured channel ({', '.join(self.channels)}) has one for it",
                             lonely))
            if len(alerts) < _FAN_OUT_BATCH:
                return

    def deliver_due(self, only_alert: int | None = None, stop: Callable[[], bool] = lambda: False) -> PassReport:
        """One pass: new alerts' deliveries created, then every due delivery tried once (until `stop()`)."""
        report = PassReport()
        if not self.channels:
            return report
        self.fan_out(only_alert)
        try:
            while not stop() and self._deliver_one(report, only_alert):
                pass
        finally:
            for channel in self.channels.values():
                channel.close()
        with self.db.transaction() as conn, conn.cursor() as cur:
            cur.execute("""SELECT extract(epoch FROM min(next_attempt) - now()) FROM alert_deliveries
                           WHERE state = 'pending' AND channel = ANY(%s)""", (list(self.channels),))
            due = cur.fetchone()[0]
        report.next_due_seconds = None if due is None else max(float(due), 0.0)
        return report

    def _deliver_one(self, report: PassReport, only_alert: int | None) -> bool:
        """Claim, send and record one due delivery; False when none is left for this pass. A channel found down
        counts a try for each of its due deliveries, which then wait out their back-off together: the sender
        probes a channel that is down once per back-off step, not once per alert."""
        with self.db.transaction() as conn, conn.cursor() as cur:
            cur.execute(_CLAIM.format(only_alert="AND d.alert_id = %s" if only_alert is not None else ""),
                        (list(self.channels), *(() if only_alert is None else (only_alert,))))
            claimed = cur.fetchone()
            if claimed is None:
                return False
            alert_id, channel_name, recipient, attempts, *alert = claimed
            message = AlertMessage(alert_id, *alert)
            try:
                outcome = self.channels[channel_name].send(message, recipient)
            except Exception as exc:  # a bug on one alert's path must not stop the others: it is retried, then fails
                outcome = Outcome(RETRY, f"internal error: {type(exc).__name__}: {exc}")
            tried = [(alert_id, channel_name, recipient, attempts)]
            if outcome.kind == DOWN:
                cur.execute("""SELECT alert_id, channel, recipient, attempts FROM alert_deliveries
                               WHERE channel = %s AND state = 'pending' AND next_attempt <= now()
                                 AND NOT (alert_id = %s AND recipient = %s)
                               FOR UPDATE SKIP LOCKED""", (channel_name, alert_id, recipient))
                tried += cur.fetchall()
            steps = [after_try(self.policy, attempts_before, outcome) for *_, attempts_before in tried]
            for (delivery_alert, channel, delivery_recipient, _), step in zip(tried, steps):
                # The clock now, not the transaction's start: a send may have taken its whole timeout.
                cur.execute("""UPDATE alert_deliveries SET state = %s, attempts = %s, last_error = %s,
                                   next_attempt = clock_timestamp() + make_interval(secs => %s),
                                   delivered_at = CASE WHEN %s = 'sent' THEN clock_timestamp() END
                               WHERE alert_id = %s AND channel = %s AND recipient = %s""",
                            (step.state, step.attempts, step.last_error, step.retry_in or 0, step.state,
                             delivery_alert, channel, delivery_recipient))
            # Alerts locked in id order, by every sender: two senders never wait for each other in a cycle.
            for summarised in sorted({row[0] for row in tried}):
                cur.execute("SELECT 1 FROM alerts WHERE id = %s FOR UPDATE", (summarised,))
                cur.execute(_SUMMARISE, {"id": summarised})
        step = steps[0]
        if outcome.kind == DOWN:
            report.channels_down[channel_name] = outcome.detail
        if step.state == "sent":
            report.delivered += 1
            if attempts:
                self._channel_back(channel_name)
        report.failed += sum(s.state == "failed" for s in steps)
        report.retrying += sum(s.state == "pending" for s in steps)
        waiting = f" (and {len(tried) - 1} more of its deliveries)" if len(tried) > 1 else ""
        self.log(f"alert {alert_id} ({message.kind}) {channel_name}: {outcome.kind}{waiting}"
                 f"{'' if step.state != 'pending' else f', try {step.attempts + 1} in {step.retry_in:g} s'}"
                 f"{': ' + step.last_error if step.last_error else ''}")
        return True

    def _channel_back(self, channel_name: str) -> None:
        """A delivery that had failed went through: the channel's other waiting deliveries are due now, not at
        the end of their back-off. Rows another sender holds are left to it."""
        with self.db.transaction() as conn, conn.cursor() as cur:
            cur.execute("""UPDATE alert_deliveries SET next_attempt = now()
                           WHERE (alert_id, channel, recipient) IN (
                               SELECT alert_id, channel, recipient FROM alert_deliveries
                               WHERE channel = %s AND state = 'pending' AND next_attempt > now()
                               FOR UPDATE SKIP LOCKED)""", (channel_name,))

    def run(self, poll_seconds: float, stop: Callable[[], bool]) -> None:
        """Deliver until `stop()`: a pass whenever an alert is committed (LISTEN), a delivery falls due, or
        `poll_seconds` passed. A database that does not answer is waited for, a pass at a time."""
        from psycopg2 import Error as DatabaseError

        from antenna_assets.errors import StackError

        listener = None
        while not stop():
            wait = poll_seconds
            try:
                if listener is None:
                    listener = connect(self.url, options=UTC_SESSION)
                    listener.autocommit = True
                    listener.cursor().execute(f"LISTEN {NOTIFY_CHANNEL}")
                report = self.deliver_due(stop=stop)
                if report.delivered or report.failed or report.retrying:
                    self.log(report.line())
                if report.next_due_seconds is not None:
                    wait = min(wait, report.next_due_seconds)
                if select.select([listener], [], [], wait)[0]:
                    listener.poll()
                    listener.notifies.clear()
            except (StackError, DatabaseError) as exc:
                self.log(f"alerts: database: {str(exc).strip().splitlines()[0]}; trying again in {poll_seconds:g} s")
                if listener is not None:
                    listener.close()
                    listener = None
                self.db.close()
                time.sleep(poll_seconds)

    def close(self) -> None:
        self.db.close()
