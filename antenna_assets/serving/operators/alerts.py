"""The alerts outbox (antenna_assets/alerts) as the page shows it: the latest alerts, all or one user's.

Read only: the page's role may SELECT the outbox (schema.py SERVING_RELATIONS), never change it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from antenna_assets.serving.operators.store import like_pattern

ALERTS_LIMIT = 200


@dataclass(frozen=True)
class AlertRow:
    id: int
    created: datetime  # UTC
    kind: str
    subject: str
    state: str  # pending, sent or failed (the sender's)
    attempts: int
    last_error: str | None
    sent_at: datetime | None  # UTC
    user_email: str | None  # the user a quota alert is about; None for the pipeline's own alerts


def alerts_available(conn) -> bool:
    """Whether the outbox exists in this database (the product's migration creates it)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('alerts') IS NOT NULL")
        return cur.fetchone()[0]


def recent_alerts(conn, user: str = "", exact: bool = False, limit: int = ALERTS_LIMIT) -> list[AlertRow]:
    """The latest alerts, newest first; with `user`, only those about users whose email contains it (or is
    it, with `exact`, case-insensitive)."""
    where, params = "", []
    if user and exact:
        where, params = "WHERE lower(payload->>'user_email') = lower(%s)", [user]
    elif user:
        where, params = "WHERE payload->>'user_email' ILIKE %s", [like_pattern(user)]
    with conn.cursor() as cur:
        cur.execute("SELECT id, created AT TIME ZONE 'UTC', kind, subject, state, attempts, last_error, "
                    f"sent_at AT TIME ZONE 'UTC', payload->>'user_email' FROM alerts {where} ORDER BY id DESC LIMIT %s",
                    [*params, limit])
        return [AlertRow(*row) for row in cur.fetchall()]
