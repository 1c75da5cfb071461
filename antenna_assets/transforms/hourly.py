"""The batch layer's four hourly tables from its two small Spark aggregates (`hourly_partials`), on the driver.

Rows in, rows out, with `date` as naive UTC. Sums are Python integers, so a rollup never wraps;
PostgreSQL keeps them as NUMERIC(38, 0).

Snapshot rows are the user_metadata snapshot of each hour: (id, email, quota, date = hour start).
Users missing from the snapshot of their hour have no email: they are left out of the per-email
totals and reported by `unknown_users`, but still count per antenna and per app.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Iterable, Sequence

Snapshot = Sequence[tuple[str, str, int, datetime]]


def rollup(rows: Iterable[tuple], key_index: int, date_index: int, value_index: int) -> list[tuple]:
    """(key, date, sum of value) over rows with several keys, e.g. per antenna from per (antenna, app)."""
    totals: dict[tuple, int] = defaultdict(int)
    for row in rows:
        totals[row[key_index], row[date_index]] += row[value_index]
    return [(key, date, total) for (key, date), total in totals.items()]


def bytes_per_email(user_totals: Iterable[tuple[str, datetime, int]], snapshot: Snapshot) -> list[tuple]:
    """Per-user totals (id, date, bytes) -> (email, date, bytes) through the snapshot of the same hour."""
    email_of = {(user_id, date): email for user_id, email, _, date in snapshot}
    totals: dict[tuple, int] = defaultdict(int)
    for user_id, date, total in user_totals:
        email = email_of.get((user_id, date))
        if email is not None:
            totals[email, date] += total
    return [(email, date, total) for (email, date), total in totals.items()]


def unknown_users(user_totals: Iterable[tuple[str, datetime, int]], snapshot: Snapshot) -> list[tuple]:
    """Per-user totals whose id is not in the snapshot of their hour."""
    known = {(user_id, date) for user_id, _, _, date in snapshot}
    return [row for row in user_totals if (row[0], row[1]) not in known]


def users_over_quota(email_totals: Iterable[tuple[str, datetime, int]], snapshot: Snapshot) -> list[tuple]:
    """Emails whose bytes in the hour are strictly greater than their quota: (email, date, quota, bytes).

    If operators gave one email to several ids, the email's quota is the largest of theirs."""
    quotas: dict[tuple, int] = {}
    for _, email, quota, date in snapshot:
        quotas[email, date] = max(quota, quotas.get((email, date), quota))
    return [(email, date, quotas[email, date], total) for email, date, total in email_totals
            if (email, date) in quotas and total > quotas[email, date]]
