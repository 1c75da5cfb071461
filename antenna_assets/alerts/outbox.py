"""The alerts outbox: the one way an alert is raised.

A rule calls `enqueue_alert` with its own cursor, inside the transaction that decided the alert, so the
decision and the alert commit together or not at all. The alert's `dedup_key` says what it is about (e.g.
'quota.provisional:<user>:<hour>'): a second enqueue of the same key, after a restart, a sensor's next tick,
a re-run or a backfill, adds nothing. The sender (alerts/sender.py) delivers what is pending.
"""

from __future__ import annotations

import json
import re
from datetime import date, datetime
from decimal import Decimal
from typing import Any

# The channel the sender listens on: an alert wakes it when its transaction commits, not at its next poll.
NOTIFY_CHANNEL = "antenna_alerts"
_KIND = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)*")


def _json_value(value: Any) -> Any:
    """The payload's values JSON has no type for: timestamps as ISO 8601, whole NUMERIC totals as numbers."""
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    raise TypeError(f"alert payload value {value!r} ({type(value).__name__}) is not JSON")


def payload_json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, default=_json_value, sort_keys=True)


def enqueue_alert(cur, *, kind: str, subject: str, dedup_key: str, payload: dict[str, Any]) -> bool:
    """Insert one pending alert in the caller's transaction (the caller commits); True when it is new,
    False when an alert with this `dedup_key` exists already (it is left as it is)."""
    if not _KIND.fullmatch(kind):
        raise ValueError(f"alert kind {kind!r}: expected dotted lower-case words, e.g. 'quota.final'")
    if not subject.strip() or not dedup_key:
        raise ValueError("an alert needs a subject and a dedup_key")
    cur.execute("""INSERT INTO alerts (kind, subject, dedup_key, payload) VALUES (%s, %s, %s, %s::jsonb)
                   ON CONFLICT (dedup_key) DO NOTHING RETURNING id""",
                (kind, subject, dedup_key, payload_json(payload)))
    if cur.fetchone() is None:
        return False
    cur.execute(f"NOTIFY {NOTIFY_CHANNEL}")
    return True
