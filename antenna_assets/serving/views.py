"""The serving layer's lambda views: one answer per (key, UTC hour), from the batch layer where the
hour is batch-final and from the speed layer's 5-minute totals where it is not yet.

An hour is batch-final for a table when `batch_hours` holds (table, hour): the batch layer writes that
row in the same transaction as the table's delete-then-insert of the hour, so an hour whose batch
result has no row at all (nobody over quota) is still known to be final. Every view is
`CREATE OR REPLACE`, run by the migration in its transaction, so it is idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg2.extras import execute_values

from antenna_assets.serving.schema import (BATCH_HOURS, BATCH_TABLES, BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H,
                                           BYTES_AGG_APP, BYTES_AGG_APP_1H, BYTES_AGG_USER, BYTES_AGG_USER_1H,
                                           STREAMING_TABLES, TOTAL_BYTES, USERS_OVER_QUOTA_1H, AggregateTable)

_MARKED = ("table_name", "date")
_FINAL_TABLES = (*BATCH_TABLES, USERS_OVER_QUOTA_1H)
BATCH_HOURS_DDL = [
    f"""DO $$ BEGIN
        IF to_regclass('{BATCH_HOURS.name}') IS NULL THEN
            {BATCH_HOURS.ddl()};
            -- Hours a batch run wrote before this table existed: they are final too.
            {BATCH_HOURS.insert_into(_MARKED)}
                {" UNION ".join(f"SELECT '{t.name}', date FROM {t.name}" for t in _FINAL_TABLES)};
        END IF;
    END $$""",
]

# The speed layer's progress: the latest event time of any applied micro-batch.
_LATEST_EVENT_TIME = "(SELECT max(max_event_time) FROM streaming_batches)"


def _batch_final(table: str, date: str) -> str:
    return f"EXISTS (SELECT 1 FROM batch_hours h WHERE h.table_name = '{table}' AND h.date = {date})"


@dataclass(frozen=True)
class ServingView:
    """A lambda view over one batch table and its speed twin."""

    name: str
    batch: AggregateTable
    speed: AggregateTable

    def ddl(self) -> str:
        key, value = self.batch.key, self.batch.value
        hour = "date_trunc('hour', s.date)"
        if self.speed is BYTES_AGG_USER:  # the speed table is per id: map it to email through the live table
            speed_key, speed_from = "u.email", f"{self.speed.name} s JOIN user_metadata u ON u.id = s.id"
        else:
            speed_key, speed_from = f"s.{self.speed.key}", f"{self.speed.name} s"
        return f"""CREATE OR REPLACE VIEW {self.name} AS
            SELECT b.{key}, b.date, b.{value}, 'batch'::text AS source, NULL::timestamp AS latest_event_time
            FROM {self.batch.name} b WHERE {_batch_final(self.batch.name, 'b.date')}
            UNION ALL
            SELECT {speed_key}, {hour}, sum(s.{self.speed.value}), 'speed'::text, {_LATEST_EVENT_TIME}
            FROM {speed_from} WHERE NOT {_batch_final(self.batch.name, hour)}
            GROUP BY {speed_key}, {hour}"""


SERVING_ANTENNA_1H = ServingView("serving_antenna_1h", BYTES_AGG_ANTENNA_1H, BYTES_AGG_ANTENNA)
SERVING_USER_1H = ServingView("serving_user_1h", BYTES_AGG_USER_1H, BYTES_AGG_USER)
SERVING_APP_1H = ServingView("serving_app_1h", BYTES_AGG_APP_1H, BYTES_AGG_APP)
LAMBDA_VIEWS = (SERVING_ANTENNA_1H, SERVING_USER_1H, SERVING_APP_1H)

SERVING_USERS_OVER_QUOTA_1H = "serving_users_over_quota_1h"
SERVING_SPEED_VS_BATCH_1H = "serving_speed_vs_batch_1h"
SERVING_DEAD_LETTERS_5M = "serving_dead_letters_5m"
SERVING_STREAM_FRESHNESS = "serving_stream_freshness"
SERVING_ALERTS_1H = "serving_alerts_1h"

VIEW_DDL = [
    *(view.ddl() for view in LAMBDA_VIEWS),
    # Final where the batch did the hour; otherwise provisional: the speed sums of serving_user_1h
    # against the live quota (an email's largest, as the batch layer does).
    f"""CREATE OR REPLACE VIEW {SERVING_USERS_OVER_QUOTA_1H} AS
        SELECT q.email, q.date, q.quota, q.sum_user_bytes, 'batch'::text AS source
        FROM {USERS_OVER_QUOTA_1H.name} q WHERE {_batch_final(USERS_OVER_QUOTA_1H.name, 'q.date')}
        UNION ALL
        SELECT s.email, s.date, m.quota, s.sum_user_bytes, 'speed'::text
        FROM {SERVING_USER_1H.name} s
        JOIN (SELECT email, max(quota) AS quota FROM user_metadata GROUP BY email) m ON m.email = s.email
        WHERE s.sum_user_bytes > m.quota AND NOT {_batch_final(USERS_OVER_QUOTA_1H.name, 's.date')}""",
    # The lambda check per closed hour: the batch total of every antenna vs the speed layer's
    # 5-minute totals of the same hour (late events make them differ legitimately).
    f"""CREATE OR REPLACE VIEW {SERVING_SPEED_VS_BATCH_1H} AS
        SELECT h.date,
               coalesce((SELECT sum(b.sum_antenna_bytes) FROM bytes_agg_antenna_1h b WHERE b.date = h.date), 0)
                   AS batch_bytes,
               coalesce((SELECT sum(s.sum_antenna_bytes) FROM bytes_agg_antenna s
                         WHERE s.date >= h.date AND s.date < h.date + interval '1 hour'), 0)
               -- the hour's 5-minute rows that retention removed, as their total
               + coalesce((SELECT p.total_bytes FROM pruned_speed_hours p
                           WHERE p.table_name = 'bytes_agg_antenna' AND p.date = h.date), 0) AS speed_bytes
        FROM batch_hours h WHERE h.table_name = 'bytes_agg_antenna_1h'""",
    # Dead letters counted per reason and 5-minute window of their ingest time: never the raw value.
    f"""CREATE OR REPLACE VIEW {SERVING_DEAD_LETTERS_5M} AS
        SELECT reason, date_bin('5 minutes', ingest_time, TIMESTAMP '2000-01-01') AS date, count(*)::bigint AS messages
        FROM dead_letter GROUP BY 1, 2""",
    # One row: the speed layer's latest applied event time and how far behind now (UTC) it is.
    f"""CREATE OR REPLACE VIEW {SERVING_STREAM_FRESHNESS} AS
        SELECT max(max_event_time) AS latest_event_time, max(applied_at) AS last_applied_at,
               extract(epoch FROM (now() AT TIME ZONE 'UTC') - max(max_event_time))::double precision AS lag_seconds
        FROM streaming_batches""",
    # Alerts per UTC hour of their creation, kind and delivery state: counts only, no subject or payload
    # (they name users), so the dashboards' role reads this and never the outbox.
    f"""CREATE OR REPLACE VIEW {SERVING_ALERTS_1H} AS
        SELECT date_trunc('hour', created AT TIME ZONE 'UTC') AS date, kind, state, count(*)::bigint AS alerts
        FROM alerts GROUP BY 1, 2, 3""",
]

SERVING_VIEWS = (*(v.name for v in LAMBDA_VIEWS), SERVING_USERS_OVER_QUOTA_1H, SERVING_SPEED_VS_BATCH_1H,
                 SERVING_DEAD_LETTERS_5M, SERVING_STREAM_FRESHNESS, SERVING_ALERTS_1H)


# Totals from before TOTAL_BYTES were BIGINT. A view's column cannot change its type, so the serving views
# are dropped first and made again by VIEW_DDL, in the same transaction.
_TOTALS = (*((t.name, t.value) for t in (*STREAMING_TABLES, *BATCH_TABLES)), (USERS_OVER_QUOTA_1H.name, "sum_user_bytes"))
WIDEN_TOTALS_DDL = f"""DO $$ BEGIN
    IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() AND data_type = 'bigint'
               AND (table_name, column_name) IN ({", ".join(f"('{t}', '{c}')" for t, c in _TOTALS)})) THEN
        DROP VIEW IF EXISTS {", ".join(SERVING_VIEWS)};
        {" ".join(f"ALTER TABLE {t} ALTER COLUMN {c} TYPE {TOTAL_BYTES};" for t, c in _TOTALS)}
    END IF;
END $$"""


def create_views(cur) -> None:
    """`batch_hours` and every serving view, in the caller's (migration's) transaction."""
    for statement in (*BATCH_HOURS_DDL, WIDEN_TOTALS_DDL, *VIEW_DDL):
        cur.execute(statement)


def mark_batch_hours(cur, tables, hours) -> None:
    """Record that the batch layer's `tables` are final for `hours`; call it in the transaction that
    replaces those hours."""
    execute_values(cur, f"{BATCH_HOURS.insert_into(_MARKED)} VALUES %s ON CONFLICT (table_name, date) "
                        "DO UPDATE SET materialized_at = now() AT TIME ZONE 'UTC'",
                   [(table, hour) for table in tables for hour in hours])
