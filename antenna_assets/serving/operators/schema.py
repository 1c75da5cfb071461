"""The operators' page's tables, created by the product's migration, and its PostgreSQL role.

`user_metadata_audit` is append-only: the page's role may only INSERT and SELECT it, and a trigger
refuses UPDATE, DELETE and TRUNCATE from anyone (the owner included).
"""

from __future__ import annotations

from antenna_assets.postgres import grant_database_use
from antenna_assets.serving.schema import Column, Table

OPERATORS_ROLE = "antenna_operators"
# Serializes the page's writes to user_metadata: the email uniqueness check and the write are atomic.
WRITE_LOCK_ID = 7_286_015

OPERATORS = Table("operators", (
    Column("name", "TEXT NOT NULL"),
    Column("password_hash", "TEXT NOT NULL"),
    Column("created_at", "TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')"),
), ("name",))
USER_METADATA_AUDIT = Table("user_metadata_audit", (
    Column("id", "BIGSERIAL"),
    Column("changed_at", "TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')"),
    Column("operator", "TEXT NOT NULL"),
    Column("user_id", "TEXT NOT NULL"),
    Column("field", "TEXT NOT NULL"),
    Column("old_value", "TEXT"),
    Column("new_value", "TEXT"),
), ("id",))

DDL = [
    OPERATORS.ddl(),
    USER_METADATA_AUDIT.ddl(),
    "CREATE INDEX IF NOT EXISTS user_metadata_audit_by_user ON user_metadata_audit (user_id, id)",
    """CREATE OR REPLACE FUNCTION user_metadata_audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'user_metadata_audit is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER user_metadata_audit_append_only BEFORE UPDATE OR DELETE ON user_metadata_audit
        FOR EACH ROW EXECUTE FUNCTION user_metadata_audit_is_append_only()""",
    """CREATE OR REPLACE TRIGGER user_metadata_audit_no_truncate BEFORE TRUNCATE ON user_metadata_audit
        FOR EACH STATEMENT EXECUTE FUNCTION user_metadata_audit_is_append_only()""",
]

# The serving data the page shows (usage per user and hour); one that does not exist (yet) is skipped.
SERVING_RELATIONS = ("serving_user_1h",)


def migrate_operators(cur) -> None:
    """Part of `antenna_assets.serving.schema.migrate` (same transaction, same lock)."""
    for statement in DDL:
        cur.execute(statement)


def grant_operators_role(conn, role: str = OPERATORS_ROLE) -> None:
    """Exactly the page's privileges on this database: read the serving data, read and write
    user_metadata, append to and read the audit, read the operators; nothing else."""
    with conn.cursor() as cur:
        ident = grant_database_use(cur, role)
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON user_metadata TO {ident}")
        cur.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON user_metadata_audit FROM {ident}, PUBLIC")
        cur.execute(f"GRANT SELECT, INSERT ON user_metadata_audit TO {ident}")
        cur.execute(f"GRANT USAGE ON SEQUENCE user_metadata_audit_id_seq TO {ident}")
        cur.execute(f"GRANT SELECT ON operators TO {ident}")
        for relation in SERVING_RELATIONS:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,))
            if cur.fetchone()[0]:
                cur.execute(f"GRANT SELECT ON {relation} TO {ident}")
