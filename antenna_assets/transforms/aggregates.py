"""The byte totals of the contract's section 4, one definition per aggregate.

The speed layer calls them with a 5-minute window on each micro-batch, the batch layer with a
1-hour window on one hour of the lake; `date` is always the window start in UTC. What the batch
layer derives from its two hourly aggregates on the driver is in `transforms.hourly`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER, AggregateTable

HOURLY_WINDOW = "1 hour"
MESSAGES = "messages"
MAX_EVENT_TIME = "max_event_time"
ANTENNA_APP = (BYTES_AGG_ANTENNA.key, BYTES_AGG_APP.key)


def bytes_per_window(events: DataFrame, keys: str | Sequence[str], value: str, window: str) -> DataFrame:
    """Sum of `bytes` per key (one column or several) and event-time window: columns the keys, date,
    value, messages, max_event_time."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    return events.groupBy(*keys, _window_start(window)).agg(*_window_totals(value))


def bytes_per_window_of_each(events: DataFrame, tables: Sequence[AggregateTable], window: str) -> DataFrame:
    """`bytes_per_window` of every table in `tables` from one aggregation (grouping sets): one shuffle
    instead of one per table, which a micro-batch of a second pays in time, whatever its size.
    Columns: table (its name), key (the value of its key column), date, bytes, messages, max_event_time."""
    keys = [table.key for table in tables]
    columns = _grouping_set_columns(tuple((table.name, table.key) for table in tables), window,
                                    events.sparkSession.sparkContext)
    return (events.select(*keys, "bytes", "event_time", columns.date)
            .groupingSets([[key, "date"] for key in keys], *keys, "date")
            .agg(*columns.totals)
            .drop(*keys))


class _GroupingSetColumns(NamedTuple):
    date: Column
    totals: tuple[Column, ...]


@lru_cache(maxsize=8)
def _grouping_set_columns(tables: tuple[tuple[str, str], ...], window: str, spark_context) -> _GroupingSetColumns:
    """The columns of `bytes_per_window_of_each`, built once per tables, window and Spark context: the
    speed layer aggregates every micro-batch, and building them cost it ~60 ms of calls into the JVM."""
    grouped = [F.grouping(key) == 0 for _, key in tables]
    (first_name, first_key), *others = tables
    table_name = F.when(grouped[0], F.lit(first_name))
    key_value = F.when(grouped[0], F.col(first_key))
    for (name, key), is_grouped in zip(others, grouped[1:]):
        table_name, key_value = table_name.when(is_grouped, F.lit(name)), key_value.when(is_grouped, F.col(key))
    return _GroupingSetColumns(_window_start(window),
                               (table_name.alias("table"), key_value.alias("key"), *_window_totals("bytes")))


def _window_start(window: str) -> Column:
    return F.window("event_time", window).start.alias("date")


def _window_totals(value: str) -> list[Column]:
    return [F.sum("bytes").alias(value), F.count(F.lit(1)).alias(MESSAGES), F.max("event_time").alias(MAX_EVENT_TIME)]


def hourly_partials(events: DataFrame) -> dict[str, DataFrame]:
    """The two Spark aggregates the batch layer's four tables derive from, on the driver
    (`transforms.hourly`): bytes per user id and hour (20,000 rows an hour at the contract's scale)
    and bytes per (antenna, app) and hour (2,500 rows). Every event is read by these two scans only;
    the rest is work on a few thousand rows, which costs less in Python than in more Spark jobs
    (BENCHMARKS.md, Batch layer)."""
    return {
        "per_user": bytes_per_window(events.select("id", "event_time", "bytes"), "id", BYTES_AGG_USER.value,
                                     HOURLY_WINDOW),
        "per_antenna_app": bytes_per_window(events.select(*ANTENNA_APP, "event_time", "bytes"), ANTENNA_APP,
                                            "bytes", HOURLY_WINDOW),
    }
