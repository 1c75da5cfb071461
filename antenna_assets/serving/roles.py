"""The serving database's login roles besides the operators' page's (serving/operators/schema.py).

The pipeline's writer (`antenna_writer`): the DML each table's writer needs, reading the views, nothing
else: it owns nothing, so it cannot run DDL, drop a table or create a role.

The dashboards' read-only role (`antenna_reader`): SELECT on the serving tables and views, nothing else.
Superset's chart queries run as this role, so no chart (nor anyone with a dashboard login and SQL Lab)
can write, read the dead letters' raw values, or reach Dagster's database. The views it reads run
with their owner's rights, which is how it sees dead letters per reason without the raw table.
"""

from __future__ import annotations

from urllib.parse import urlparse

from antenna_assets.postgres import ensure_login_role, grant_database_use, role_url, transaction
from antenna_assets.serving.schema import BATCH_TABLES, STREAMING_TABLES, USERS_OVER_QUOTA_1H
from antenna_assets.serving.views import SERVING_VIEWS
from antenna_assets.settings import RETENTION_ROLE, WRITER_ROLE, Settings
from antenna_assets.stack.secrets import stack_secret

READER_ROLE = "antenna_reader"
READABLE = (*(t.name for t in (*STREAMING_TABLES, *BATCH_TABLES, USERS_OVER_QUOTA_1H)), *SERVING_VIEWS)

# What the pipeline writes, table by table: provisioning (sources/user_metadata.py), the speed layer's
# upserts, ledger and heartbeats (serving/writes.py, speed/ledger.py, speed/heartbeat.py), the batch
# layer's delete-then-insert of its hours (serving/writes.py, views.py mark_batch_hours, batch/bookkeeping.py).
WRITER_PRIVILEGES = {
    "user_metadata": "SELECT, INSERT",
    "provisionings": "SELECT, INSERT",
    "user_metadata_hourly": "SELECT, INSERT, DELETE",
    **{t.name: "SELECT, INSERT, UPDATE" for t in STREAMING_TABLES},
    **{t.name: "SELECT, INSERT, DELETE" for t in (*BATCH_TABLES, USERS_OVER_QUOTA_1H)},
    "batch_hours": "SELECT, INSERT, UPDATE",
    "streaming_batches": "SELECT, INSERT, UPDATE",
    "streaming_offsets": "SELECT, INSERT, UPDATE",
    "streaming_batch_clocks": "SELECT, INSERT",
    "streaming_failures": "SELECT, INSERT",
    "streaming_heartbeats": "SELECT, INSERT, UPDATE",  # the streaming run's beats, the sensor's declarations
    "landing_hours": "SELECT, INSERT, UPDATE",
    "compacted_hours": "SELECT, INSERT, UPDATE",
    "pruned_landing_hours": "SELECT, UPDATE",  # raw_devices copies a pruned hour back before compacting it again
    "dead_letter": "SELECT, INSERT",
    # The alert rules' outbox inserts and the sender's deliveries (antenna_assets/alerts).
    "alerts": "SELECT, INSERT, UPDATE",
    "alerts_id_seq": "USAGE",
    "alert_deliveries": "SELECT, INSERT, UPDATE",
    "alert_conditions": "SELECT, INSERT, DELETE",  # the alert rules' open health conditions (alerts/evaluate.py)
    "schema_version": "SELECT",
    **{view: "SELECT" for view in SERVING_VIEWS},
}


# What the retention job (antenna_assets/retention) removes, and what it reads to decide. Its own role: the
# writer may not delete dead letters nor the ledger, and this role may write nothing else.
RETENTION_PRIVILEGES = {
    **{t.name: "SELECT, DELETE" for t in STREAMING_TABLES},
    **{name: "SELECT, DELETE" for name in ("dead_letter", "streaming_batches", "streaming_batch_clocks",
                                           "streaming_failures", "streaming_heartbeats")},
    **{name: "SELECT" for name in ("batch_hours", "landing_hours", "compacted_hours", "streaming_offsets",
                                   "schema_version")},
    "pruned_landing_hours": "SELECT, INSERT, UPDATE",
    "pruned_speed_hours": "SELECT, INSERT, UPDATE",
}


def grant_writer(conn, role: str = WRITER_ROLE) -> None:
    """Exactly the writer's privileges on this (migrated) database; run by the schema's owner."""
    with conn.cursor() as cur:
        ident = grant_database_use(cur, role, "CONNECT, TEMPORARY")
        cur.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ident}")
        for relation, privileges in WRITER_PRIVILEGES.items():
            cur.execute(f"GRANT {privileges} ON {relation} TO {ident}")
    conn.commit()


def grant_retention(conn) -> None:
    """Exactly the retention role's privileges on this (migrated) database; run by the schema's owner."""
    with conn.cursor() as cur:
        ident = grant_database_use(cur, RETENTION_ROLE)
        cur.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {ident}")
        for relation, privileges in RETENTION_PRIVILEGES.items():
            cur.execute(f"GRANT {privileges} ON {relation} TO {ident}")
    conn.commit()


def ensure_reader_role(settings: Settings, private_databases: tuple[str, ...] = ()) -> str:
    """Create (or reset) the reader and its grants on the serving database; returns its URL.

    `private_databases` (Dagster's, Superset's metadata) stop accepting connections from roles that
    were not given them explicitly, the reader included.
    """
    password, _ = stack_secret(settings, f"{READER_ROLE}.password")
    with transaction(settings.postgres_admin_url) as conn:
        ensure_login_role(conn, READER_ROLE, password)
        with conn.cursor() as cur:
            cur.execute(f"ALTER ROLE {READER_ROLE} SET default_transaction_read_only = on")
            cur.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {READER_ROLE}")
            cur.execute(f"GRANT USAGE ON SCHEMA public TO {READER_ROLE}")
            cur.execute(f"GRANT SELECT ON {', '.join(READABLE)} TO {READER_ROLE}")
            database = urlparse(settings.postgres_url).path.lstrip("/")
            cur.execute(f"GRANT CONNECT ON DATABASE {database} TO {READER_ROLE}")
            for name in private_databases:
                cur.execute("SELECT quote_ident(%s)", (name,))
                cur.execute(f"REVOKE CONNECT ON DATABASE {cur.fetchone()[0]} FROM PUBLIC")
    return role_url(settings.postgres_url, READER_ROLE, password)
