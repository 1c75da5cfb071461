"""Alerts' delivery half: the outbox (alerts/outbox.py), the email and webhook channels and the sender, against a
real PostgreSQL, a real SMTP server (aiosmtpd) and a real HTTP receiver that checks the signature."""

from __future__ import annotations

from urllib.parse import urlparse

import psycopg2
import pytest

from antenna_assets.alerts.outbox import enqueue_alert
from antenna_assets.postgres import connect, transaction
from antenna_assets.serving.roles import grant_writer


@pytest.fixture
def alerts_db(settings, serving_db) -> str:
    """A fresh serving database, as the pipeline's writer role sees it (what the rules and the sender log in as)."""
    conn = connect(serving_db)
    try:
        grant_writer(conn)
    finally:
        conn.close()
    return settings.postgres_url_for(urlparse(serving_db).path.lstrip("/"))


def test_enqueue_is_once_per_dedup_key_and_in_the_callers_transaction(alerts_db):
    with transaction(alerts_db) as conn, conn.cursor() as cur:
        assert enqueue_alert(cur, kind="quota.provisional", subject="u1 over quota", dedup_key="quota.provisional:u1:h",
                             payload={"user_email": "u1@example.com", "bytes": 12})
        assert not enqueue_alert(cur, kind="quota.provisional", subject="again", dedup_key="quota.provisional:u1:h",
                                 payload={})
    # The caller's rollback takes the alert with it.
    with pytest.raises(RuntimeError), transaction(alerts_db) as conn, conn.cursor() as cur:
        assert enqueue_alert(cur, kind="quota.final", subject="u2", dedup_key="quota.final:u2:h", payload={})
        raise RuntimeError("the rule's transaction fails after deciding")
    with transaction(alerts_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT kind, subject, payload, state, attempts FROM alerts ORDER BY id")
        assert cur.fetchall() == [("quota.provisional", "u1 over quota", {"user_email": "u1@example.com", "bytes": 12},
                                   "pending", 0)]
        with pytest.raises(ValueError):
            enqueue_alert(cur, kind="Quota Final", subject="s", dedup_key="k", payload={})
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute("UPDATE alerts SET state = 'delivered'")
