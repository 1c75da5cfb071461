"""The serving database's migration: the tables of serving/schema.py, the views of serving/views.py and the
operators' tables, in one transaction under an advisory lock, so it is idempotent and two processes
migrating at once cannot collide."""

from __future__ import annotations

import hashlib

import psycopg2

from antenna_assets.errors import StackError
from antenna_assets.serving.operators.schema import DDL as OPERATORS_DDL
from antenna_assets.serving.operators.schema import migrate_operators
from antenna_assets.serving.schema import DDL
from antenna_assets.serving.views import BATCH_HOURS_DDL, VIEW_DDL, create_views

MIGRATION_LOCK_ID = 7_286_001


def schema_digest() -> str:
    """Identifies this version's schema: the migration's statements, hashed."""
    return hashlib.sha256("\n".join((*DDL, *BATCH_HOURS_DDL, *VIEW_DDL, *OPERATORS_DDL)).encode()).hexdigest()


def migrate(conn) -> None:
    """Create every table that does not exist yet, and the serving views; running it again changes nothing.

    A database already at this version is left alone, so the pipeline's writer role (which may not
    run DDL) can call it; an older one needs the schema's owner (`antenna stack up` migrates it).
    It commits: the migration is a transaction of its own, so the advisory lock and the views'
    exclusive locks end with it, whatever the caller does next."""
    digest = schema_digest()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_ID,))
        cur.execute("SELECT to_regclass('schema_version') IS NOT NULL")
        if cur.fetchone()[0]:
            cur.execute("SELECT digest FROM schema_version")
            if cur.fetchone() == (digest,):
                conn.commit()
                return
        try:
            for statement in DDL:
                cur.execute(statement)
            create_views(cur)
            migrate_operators(cur)
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version (digest TEXT NOT NULL)")
            cur.execute("DELETE FROM schema_version")
            cur.execute("INSERT INTO schema_version (digest) VALUES (%s)", (digest,))
        except psycopg2.errors.InsufficientPrivilege:
            conn.rollback()
            raise StackError(f"the serving schema of database {conn.info.dbname!r} is not this version's and "
                             f"{conn.info.user!r} may not migrate it: run `antenna stack up` (or migrate as the "
                             "schema's owner)") from None
    conn.commit()
