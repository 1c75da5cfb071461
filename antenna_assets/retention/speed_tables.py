"""The speed layer's 5-minute rows: removed once they are older than `retention_speed_days` and their hour is
batch-final, so the serving views, which answer a batch-final hour from the batch tables, show the same rows.

Each removed hour's total goes to `pruned_speed_hours` in the same statement, and serving_speed_vs_batch_1h
adds it to what the table still holds of the hour: the lambda check's view shows the same numbers too.
A plain DELETE of the eligible rows, one statement per table (BENCHMARKS.md, Retention, against dropping
daily partitions).
"""

from __future__ import annotations

from datetime import datetime

from antenna_assets.retention.landing import Removed
from antenna_assets.serving.schema import (BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP, BYTES_AGG_APP_1H,
                                           BYTES_AGG_USER, BYTES_AGG_USER_1H, USERS_OVER_QUOTA_1H, AggregateTable)

# The batch tables whose final hours replace each speed table's rows in the serving views: bytes_agg_user
# feeds serving_user_1h and, where an hour is not final for it, serving_users_over_quota_1h.
FINAL_FOR = {
    BYTES_AGG_ANTENNA: (BYTES_AGG_ANTENNA_1H.name,),
    BYTES_AGG_USER: (BYTES_AGG_USER_1H.name, USERS_OVER_QUOTA_1H.name),
    BYTES_AGG_APP: (BYTES_AGG_APP_1H.name,),
}


def prune_speed_table(conn, table: AggregateTable, before: datetime) -> Removed:
    """Delete `table`'s rows of batch-final hours that start before `before` (an hour boundary), adding each
    hour's count and total to pruned_speed_hours; in `conn`'s transaction."""
    finals = FINAL_FOR[table]
    with conn.cursor() as cur:
        cur.execute(f"""
            WITH final AS (
                SELECT date FROM batch_hours WHERE table_name = ANY(%(finals)s) AND date < %(before)s
                GROUP BY date HAVING count(*) = %(count)s),
            gone AS (
                DELETE FROM {table.name} s USING final f
                WHERE s.date < %(before)s AND date_trunc('hour', s.date) = f.date
                RETURNING f.date, s.{table.value}),
            totals AS (
                INSERT INTO pruned_speed_hours AS p (table_name, date, rows_removed, total_bytes)
                SELECT %(table)s, date, count(*), sum({table.value}) FROM gone GROUP BY date
                ON CONFLICT (table_name, date) DO UPDATE SET rows_removed = p.rows_removed + EXCLUDED.rows_removed,
                    total_bytes = p.total_bytes + EXCLUDED.total_bytes, pruned_at = now() AT TIME ZONE 'UTC')
            SELECT count(*) FROM gone""",
                    {"finals": list(finals), "before": before, "count": len(finals), "table": table.name})
        return Removed(rows=cur.fetchone()[0])
