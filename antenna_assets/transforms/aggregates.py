"""The byte totals of the contract's section 4, one definition per aggregate.

The speed layer sums with a 5-minute window on each micro-batch (`transforms.micro_batch`, all its
tables in one aggregation of these totals), the batch layer with a 1-hour window on one hour of the
lake; `date` is always the window start in UTC. What the batch layer derives from its two hourly
aggregates on the driver is in `transforms.hourly`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from antenna_assets.hours import epoch_seconds
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.speed.config import parse_duration

HOURLY_WINDOW = "1 hour"
# An exact sum of any number of BIGINT byte counts: 10^38 is more bytes than 10^19 reports of the largest BIGINT.
EXACT_SUM_TYPE = "decimal(38,0)"
MESSAGES = "messages"
MAX_EVENT_TIME = "max_event_time"
ANTENNA_APP = (BYTES_AGG_ANTENNA.key, BYTES_AGG_APP.key)


def bytes_per_window(events: DataFrame, keys: str | Sequence[str], value: str, date: Column,
                     exact: bool = False) -> DataFrame:
    """Sum of `bytes` per key (one column or several) and window: columns the keys, date, value, messages,
    max_event_time (`byte_sum` for `exact`). `date` is the window's start: `window_start(window)` of each
    event, or one window's start as a literal (`hour_start`) when every event is in it."""
    keys = [keys] if isinstance(keys, str) else list(keys)
    return events.groupBy(*keys, date).agg(*window_totals(value, exact))


def window_start(window: str, time: Column | str = "event_time") -> Column:
    """`date`: the start of the event-time window of `time` (null for a null time), as Spark's `window()`
    gives it, by integer arithmetic on microseconds: `window()` builds a struct of start and end for every
    row, which made the batch layer's job ~6% slower (BENCHMARKS.md, Batch layer)."""
    micros = F.unix_micros(F.col(time) if isinstance(time, str) else time)
    return F.timestamp_micros(micros - F.pmod(micros, F.lit(_micros(window)))).alias("date")


def hour_start(hour: datetime) -> Column:
    """`date` of one hour's events (naive UTC `hour`), as a literal: Spark drops a literal from the grouping
    keys, and a plan that selects no event time reads none."""
    return F.timestamp_seconds(F.lit(int(epoch_seconds(hour)))).alias("date")


def _micros(window: str) -> int:
    return parse_duration(window) // timedelta(microseconds=1)


def window_totals(value: str, exact: bool = False) -> list[Column]:
    """A window's totals: bytes summed as `value` (`byte_sum`), messages, max_event_time."""
    return [byte_sum(exact).alias(value), F.count(F.lit(1)).alias(MESSAGES), F.max("event_time").alias(MAX_EVENT_TIME)]


def byte_sum(exact: bool = False) -> Column:
    """The sum of `bytes`: a BIGINT that is null where it would overflow (`try_sum`; a plain sum raises in
    ANSI mode and fails the job on every re-run), or `exact`, a DECIMAL(38,0) that cannot overflow. The
    BIGINT sum is the fast path (DECIMAL sums measured ~3.7x slower, BENCHMARKS.md); callers sum exactly
    only the rare time a BIGINT sum came back null (the batch layer, and the speed layer's micro-batches:
    transforms/micro_batch.py `overflowed`)."""
    return F.sum(F.col("bytes").cast(EXACT_SUM_TYPE)) if exact else F.try_sum("bytes")


def hourly_partials(events: DataFrame, exact: bool = False, hour: datetime | None = None) -> dict[str, DataFrame]:
    """The two Spark aggregates the batch layer's four tables derive from, on the driver
    (`transforms.hourly`): bytes per user id and hour (20,000 rows an hour at the contract's scale)
    and bytes per (antenna, app) and hour (2,500 rows). Every event is read by these two scans only;
    the rest is work on a few thousand rows, which costs less in Python than in more Spark jobs
    (BENCHMARKS.md, Batch layer).

    `hour`: every event is in this hour (one hour of the lake, which is partitioned by it), so each is
    grouped by its key alone, with no event time read or windowed (BENCHMARKS.md, Batch layer)."""
    date = window_start(HOURLY_WINDOW) if hour is None else hour_start(hour)
    return {
        "per_user": bytes_per_window(events.select("id", "event_time", "bytes"), "id", BYTES_AGG_USER.value,
                                     date, exact),
        "per_antenna_app": bytes_per_window(events.select(*ANTENNA_APP, "event_time", "bytes"), ANTENNA_APP,
                                            "bytes", date, exact),
    }
