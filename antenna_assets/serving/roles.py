"""The dashboards' read-only PostgreSQL role: SELECT on the serving tables and views, nothing else.

Superset's chart queries run as this role, so no chart (nor anyone with a dashboard login and SQL Lab)
can write, read the dead letters' raw values, or reach Dagster's database. The views it reads run
with their owner's rights, which is how it sees dead letters per reason without the raw table.
"""

from __future__ import annotations

from urllib.parse import urlparse

from antenna_assets.postgres import ensure_login_role, role_url, transaction
from antenna_assets.serving.schema import BATCH_TABLES, STREAMING_TABLES, USERS_OVER_QUOTA_1H
from antenna_assets.serving.views import SERVING_VIEWS
from antenna_assets.settings import Settings
from antenna_assets.stack.secrets import stack_secret

READER_ROLE = "antenna_reader"
READABLE = (*(t.name for t in (*STREAMING_TABLES, *BATCH_TABLES, USERS_OVER_QUOTA_1H)), *SERVING_VIEWS)


def ensure_reader_role(settings: Settings, private_databases: tuple[str, ...] = ()) -> str:
    """Create (or reset) the reader and its grants on the serving database; returns its URL.

    `private_databases` (Dagster's, Superset's metadata) stop accepting connections from roles that
    were not given them explicitly, the reader included.
    """
    password, _ = stack_secret(settings, f"{READER_ROLE}.password")
    with transaction(settings.postgres_url) as conn:
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
