"""The byte totals of the contract's section 4, one definition per aggregate.

The speed layer calls them with a 5-minute window on each micro-batch, the batch layer with a
1-hour window on one hour of the lake; `date` is always the window start in UTC.
"""

from __future__ import annotations

from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from antenna_assets.serving.schema import (BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER, BYTES_AGG_USER_1H,
                                      AggregateTable)

HOURLY_WINDOW = "1 hour"
MESSAGES = "messages"
MAX_EVENT_TIME = "max_event_time"


def bytes_per_window(events: DataFrame, key: str, value: str, window: str) -> DataFrame:
    """Sum of `bytes` per `key` and event-time window: columns key, date, value, messages, max_event_time."""
    return events.groupBy(F.col(key), _window_start(window)).agg(*_window_totals(value))


def bytes_per_window_of_each(events: DataFrame, tables: Sequence[AggregateTable], window: str) -> DataFrame:
    """`bytes_per_window` of every table in `tables` from one aggregation (grouping sets): one shuffle
    instead of one per table, which a micro-batch of a second pays in time, whatever its size.
    Columns: table (its name), key (the value of its key column), date, bytes, messages, max_event_time."""
    keys = [table.key for table in tables]
    grouped = [F.grouping(key) == 0 for key in keys]
    table_name = F.when(grouped[0], F.lit(tables[0].name))
    key_value = F.when(grouped[0], F.col(keys[0]))
    for table, is_grouped in zip(tables[1:], grouped[1:]):
        table_name, key_value = table_name.when(is_grouped, F.lit(table.name)), key_value.when(is_grouped, F.col(table.key))
    return (events.select(*keys, "bytes", "event_time", _window_start(window))
            .groupingSets([[key, "date"] for key in keys], *keys, "date")
            .agg(table_name.alias("table"), key_value.alias("key"), *_window_totals("bytes"))
            .drop(*keys))


def _window_start(window: str) -> Column:
    return F.window("event_time", window).start.alias("date")


def _window_totals(value: str) -> list[Column]:
    return [F.sum("bytes").alias(value), F.count(F.lit(1)).alias(MESSAGES), F.max("event_time").alias(MAX_EVENT_TIME)]


def _per(table: AggregateTable):
    def aggregate(events: DataFrame, window: str) -> DataFrame:
        return bytes_per_window(events, table.key, table.value, window)

    aggregate.__name__ = f"bytes_per_{table.key}"
    aggregate.__doc__ = f"Bytes per `{table.key}` and window: {', '.join(table.names)}, messages, max_event_time."
    return aggregate


bytes_per_antenna = _per(BYTES_AGG_ANTENNA)
bytes_per_user = _per(BYTES_AGG_USER)
bytes_per_app = _per(BYTES_AGG_APP)


def bytes_per_email(user_totals: DataFrame, user_metadata: DataFrame) -> DataFrame:
    """Per-user totals (id, date, sum_user_bytes) -> per-email totals, through the user_metadata
    snapshot of the same hour (id, email, date).

    Users missing from user_metadata have no email and are left out here; they still count in
    the antenna and app totals, and `unknown_users` reports them.
    """
    return (user_totals.join(user_metadata.select("id", "email", "date"), ["id", "date"])
            .groupBy("email", "date")
            .agg(F.sum(BYTES_AGG_USER.value).alias(BYTES_AGG_USER_1H.value)))


def unknown_users(user_totals: DataFrame, user_metadata: DataFrame) -> DataFrame:
    """Per-user totals whose id is not in the user_metadata snapshot of their hour."""
    return user_totals.join(user_metadata.select("id", "date"), ["id", "date"], "left_anti")


def users_over_quota(email_totals: DataFrame, user_metadata: DataFrame) -> DataFrame:
    """Emails whose bytes in the hour are strictly greater than their quota (user_metadata snapshot:
    email, quota, date): email, date, quota, sum_user_bytes.

    If operators gave one email to several ids, the email's quota is the largest of theirs.
    """
    quotas = user_metadata.groupBy("email", "date").agg(F.max("quota").alias("quota"))
    return (email_totals.join(quotas, ["email", "date"])
            .where(F.col(BYTES_AGG_USER_1H.value) > F.col("quota"))
            .select("email", "date", "quota", BYTES_AGG_USER_1H.value))


def hourly_totals(events: DataFrame, user_metadata: DataFrame) -> dict[str, DataFrame]:
    """The batch layer's four tables from events of whole UTC hours and the user_metadata snapshot
    of each hour (id, email, quota, date = hour start).

    The same per-window aggregates as the speed layer's, each on the columns it needs only. Users
    are summed once per id (`bytes_per_user`, worth caching: three results derive from it) before
    the small join with their metadata. (Deriving antenna and app totals from one (antenna, app)
    aggregate was measured within noise of this: BENCHMARKS.md.)
    """
    per_user = bytes_per_user(events.select("id", "event_time", "bytes"), HOURLY_WINDOW).select(
        "id", "date", BYTES_AGG_USER.value)
    per_email = bytes_per_email(per_user, user_metadata)
    return {
        "bytes_agg_antenna_1h": bytes_per_antenna(events.select("antenna_id", "event_time", "bytes"), HOURLY_WINDOW),
        "bytes_agg_user_1h": per_email,
        "bytes_agg_app_1h": bytes_per_app(events.select("app", "event_time", "bytes"), HOURLY_WINDOW),
        "users_over_quota_1h": users_over_quota(per_email, user_metadata),
        "unknown_users": unknown_users(per_user, user_metadata),
        "bytes_per_user": per_user,
    }
