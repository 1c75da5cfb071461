"""The operators' page's tables, created by the product's migration, and its PostgreSQL role.

`user_metadata_audit` is written by a trigger on `user_metadata`, whoever changes it: the page names
its operator in the transaction (`antenna.operator`), PostgreSQL adds the login role. No login role
of the product may insert into the audit itself, and a trigger refuses UPDATE, DELETE and TRUNCATE;
the tables' owner (the role that migrates) can still drop or disable triggers, as owners can.
"""

from __future__ import annotations

from antenna_assets.postgres import grant_database_use
from antenna_assets.serving.schema import USER_METADATA, Column, Table

OPERATORS_ROLE = "antenna_operators"
# Serializes the page's writes to user_metadata: the email uniqueness check and the write are atomic.
WRITE_LOCK_ID = 7_286_015
# Advisory lock class of the sign-in limit's keys (the key's hash is the lock's second half).
SIGN_IN_LOCK_ID = 7_286_016
# The transaction setting that names the operator behind a change of user_metadata.
OPERATOR_SETTING = "antenna.operator"

OPERATORS = Table("operators", (
    Column("name", "TEXT NOT NULL"),
    Column("password_hash", "TEXT NOT NULL"),
    Column("created_at", "TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')"),
    # In every session cookie; a new one (password changed) ends the operator's sessions.
    Column("session_generation", "UUID NOT NULL DEFAULT gen_random_uuid()"),
), ("name",))
USER_METADATA_AUDIT = Table("user_metadata_audit", (
    Column("id", "BIGSERIAL"),
    Column("changed_at", "TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')"),
    Column("operator", "TEXT"),  # NULL: changed outside the page (provisioning, SQL)
    Column("user_id", "TEXT NOT NULL"),
    Column("field", "TEXT NOT NULL"),
    Column("old_value", "TEXT"),
    Column("new_value", "TEXT"),
    Column("db_role", "TEXT"),  # the PostgreSQL login role that made the change (NULL on rows from before it)
), ("id",))
# Sign-in attempts in their window, one row per key (`name:...`, `addr:...`): reserved before the
# password is checked, deleted when it was right.
SIGN_IN_ATTEMPTS = Table("operator_sign_in_attempts", (
    Column("id", "BIGSERIAL"),
    Column("key", "TEXT NOT NULL"),
    Column("attempted_at", "TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')"),
), ("id",))


def _audit_trigger_function() -> str:
    """One audit row per field of user_metadata that changed (`created`/`deleted` first for a whole
    row), in the field order of the table. SECURITY DEFINER: the audit's owner writes it, so no
    role needs INSERT on it; the audit is named with the trigger's schema, never through the search
    path (a caller's temporary table of the same name cannot take the rows)."""
    others = [c for c in USER_METADATA.names if c != "id"]
    row = lambda record: ", ".join(f"{record}.{c}::text" for c in others)  # noqa: E731
    nulls = ", ".join(["NULL"] * len(others))
    changes = ", ".join(f"({n}, '{c}', OLD.{c}::text, NEW.{c}::text)" for n, c in enumerate(USER_METADATA.names))
    return f"""CREATE OR REPLACE FUNCTION user_metadata_audited() RETURNS trigger LANGUAGE plpgsql
        SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            fields text[]; old_values text[]; new_values text[];
        BEGIN
            IF TG_OP = 'INSERT' THEN
                fields := ARRAY['created', {", ".join(f"'{c}'" for c in others)}];
                old_values := ARRAY[NULL, {nulls}]::text[];
                new_values := ARRAY[NEW.id, {row("NEW")}];
            ELSIF TG_OP = 'DELETE' THEN
                fields := ARRAY['deleted', {", ".join(f"'{c}'" for c in others)}];
                old_values := ARRAY[OLD.id, {row("OLD")}];
                new_values := ARRAY[NULL, {nulls}]::text[];
            ELSE
                SELECT array_agg(f ORDER BY n), array_agg(o ORDER BY n), array_agg(v ORDER BY n)
                  INTO fields, old_values, new_values
                  FROM (VALUES {changes}) AS c(n, f, o, v) WHERE o IS DISTINCT FROM v;
            END IF;
            EXECUTE format('INSERT INTO %I.user_metadata_audit (operator, user_id, field, old_value, new_value, db_role) '
                           'SELECT $1, $2, f, o, v, $6 FROM unnest($3, $4, $5) WITH ORDINALITY AS c(f, o, v, n) ORDER BY n',
                           TG_TABLE_SCHEMA)
                USING nullif(current_setting('{OPERATOR_SETTING}', true), ''),
                      CASE TG_OP WHEN 'DELETE' THEN OLD.id ELSE NEW.id END, fields, old_values, new_values,
                      session_user::text;
            RETURN NULL;
        END $$"""


DDL = [
    OPERATORS.ddl(),
    # Databases migrated before sessions were revocable and the audit was written by the trigger.
    "ALTER TABLE operators ADD COLUMN IF NOT EXISTS session_generation UUID NOT NULL DEFAULT gen_random_uuid()",
    USER_METADATA_AUDIT.ddl(),
    "ALTER TABLE user_metadata_audit ALTER COLUMN operator DROP NOT NULL, ADD COLUMN IF NOT EXISTS db_role TEXT",
    "CREATE INDEX IF NOT EXISTS user_metadata_audit_by_user ON user_metadata_audit (user_id, id)",
    """CREATE OR REPLACE FUNCTION user_metadata_audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'user_metadata_audit is append-only'; END $$""",
    """CREATE OR REPLACE TRIGGER user_metadata_audit_append_only BEFORE UPDATE OR DELETE ON user_metadata_audit
        FOR EACH ROW EXECUTE FUNCTION user_metadata_audit_is_append_only()""",
    """CREATE OR REPLACE TRIGGER user_metadata_audit_no_truncate BEFORE TRUNCATE ON user_metadata_audit
        FOR EACH STATEMENT EXECUTE FUNCTION user_metadata_audit_is_append_only()""",
    _audit_trigger_function(),
    """CREATE OR REPLACE TRIGGER user_metadata_audited AFTER INSERT OR UPDATE OR DELETE ON user_metadata
        FOR EACH ROW EXECUTE FUNCTION user_metadata_audited()""",
    SIGN_IN_ATTEMPTS.ddl(),
    "CREATE INDEX IF NOT EXISTS operator_sign_in_attempts_by_key ON operator_sign_in_attempts (key, attempted_at)",
    "CREATE INDEX IF NOT EXISTS operator_sign_in_attempts_by_time ON operator_sign_in_attempts (attempted_at)",
]

# The serving data the page shows (usage per user and hour, the alerts outbox); one that does not exist (yet)
# is skipped.
SERVING_RELATIONS = ("serving_user_1h", "alerts")


def migrate_operators(cur) -> None:
    """Part of `antenna_assets.serving.migration.migrate` (same transaction, same lock)."""
    for statement in DDL:
        cur.execute(statement)


def grant_operators_role(conn, role: str = OPERATORS_ROLE) -> None:
    """Exactly the page's privileges on this database: read the serving data, read and write
    user_metadata (the trigger audits it), read the audit and the operators, keep the sign-in
    attempts; nothing else."""
    with conn.cursor() as cur:
        ident = grant_database_use(cur, role)
        cur.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON user_metadata TO {ident}")
        # Revoked first: a role granted INSERT by an earlier version loses it.
        cur.execute(f"REVOKE ALL ON user_metadata_audit FROM {ident}, PUBLIC")
        cur.execute(f"REVOKE ALL ON SEQUENCE user_metadata_audit_id_seq FROM {ident}, PUBLIC")
        cur.execute(f"GRANT SELECT ON user_metadata_audit TO {ident}")
        cur.execute(f"GRANT SELECT ON operators TO {ident}")
        cur.execute(f"GRANT SELECT, INSERT, DELETE ON {SIGN_IN_ATTEMPTS.name} TO {ident}")
        cur.execute(f"GRANT USAGE ON SEQUENCE {SIGN_IN_ATTEMPTS.name}_id_seq TO {ident}")
        for relation in SERVING_RELATIONS:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (relation,))
            if cur.fetchone()[0]:
                cur.execute(f"GRANT SELECT ON {relation} TO {ident}")
