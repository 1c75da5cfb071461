"""The byte totals of the contract's section 4, one definition per aggregate.

The speed layer calls them with a 5-minute window on each micro-batch, the batch layer with a
1-hour window on one hour of the lake; `date` is always the window start in UTC.
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from antenna_assets.db.schema import (BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER, BYTES_AGG_USER_1H,
                                      AggregateTable)

MESSAGES = "messages"
MAX_EVENT_TIME = "max_event_time"


def bytes_per_window(events: DataFrame, key: str, value: str, window: str) -> DataFrame:
    """Sum of `bytes` per `key` and event-time window: columns key, date, value, messages, max_event_time."""
    return (events
            .groupBy(F.col(key), F.window("event_time", window).start.alias("date"))
            .agg(F.sum("bytes").alias(value), F.count(F.lit(1)).alias(MESSAGES),
                 F.max("event_time").alias(MAX_EVENT_TIME)))


def _per(table: AggregateTable):
    def aggregate(events: DataFrame, window: str) -> DataFrame:
        return bytes_per_window(events, table.key, table.value, window)

    aggregate.__name__ = f"bytes_per_{table.key}"
    aggregate.__doc__ = f"Bytes per `{table.key}` and window: {', '.join(table.columns)}, messages, max_event_time."
    return aggregate


bytes_per_antenna = _per(BYTES_AGG_ANTENNA)
bytes_per_user = _per(BYTES_AGG_USER)
bytes_per_app = _per(BYTES_AGG_APP)


def bytes_per_email(user_totals: DataFrame, user_metadata: DataFrame) -> DataFrame:
    """Per-user totals (id, date, sum_user_bytes) -> per-email totals, through user_metadata (id, email).

    Users missing from user_metadata have no email and are left out here; they still count in
    the antenna and app totals, and `unknown_users` reports them.
    """
    return (user_totals.join(user_metadata.select("id", "email"), "id")
            .groupBy("email", "date")
            .agg(F.sum(BYTES_AGG_USER.value).alias(BYTES_AGG_USER_1H.value)))


def unknown_users(user_totals: DataFrame, user_metadata: DataFrame) -> DataFrame:
    """Per-user totals whose id is not in user_metadata."""
    return user_totals.join(user_metadata.select("id"), "id", "left_anti")


def users_over_quota(email_totals: DataFrame, user_metadata: DataFrame) -> DataFrame:
    """Emails whose bytes in the window are strictly greater than their quota: email, date, quota, sum_user_bytes.

    If operators gave one email to several ids, the email's quota is the largest of theirs.
    """
    quotas = user_metadata.groupBy("email").agg(F.max("quota").alias("quota"))
    return (email_totals.join(quotas, "email")
            .where(F.col(BYTES_AGG_USER_1H.value) > F.col("quota"))
            .select("email", "date", "quota", BYTES_AGG_USER_1H.value))
