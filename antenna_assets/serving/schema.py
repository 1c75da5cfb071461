"""The serving schema (contract section 4) plus the product's bookkeeping tables.

Every statement is `IF NOT EXISTS`, run in one transaction under an advisory lock, so the
migration is idempotent and two processes migrating at once cannot collide.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from antenna_assets.serving.operators.schema import migrate_operators

MIGRATION_LOCK_ID = 7_286_001


@dataclass(frozen=True)
class AggregateTable:
    """A serving table of byte totals: one row per `key` and window start `date`."""

    name: str
    key: str
    value: str

    @property
    def columns(self) -> tuple[str, str, str]:
        return (self.key, "date", self.value)


# Speed layer: 5-minute event-time windows.
BYTES_AGG_ANTENNA = AggregateTable("bytes_agg_antenna", "antenna_id", "sum_antenna_bytes")
BYTES_AGG_USER = AggregateTable("bytes_agg_user", "id", "sum_user_bytes")
BYTES_AGG_APP = AggregateTable("bytes_agg_app", "app", "sum_app_bytes")
STREAMING_TABLES = (BYTES_AGG_ANTENNA, BYTES_AGG_USER, BYTES_AGG_APP)

# Batch layer: one UTC hour.
BYTES_AGG_ANTENNA_1H = AggregateTable("bytes_agg_antenna_1h", "antenna_id", "sum_antenna_bytes")
BYTES_AGG_USER_1H = AggregateTable("bytes_agg_user_1h", "email", "sum_user_bytes")
BYTES_AGG_APP_1H = AggregateTable("bytes_agg_app_1h", "app", "sum_app_bytes")
BATCH_TABLES = (BYTES_AGG_ANTENNA_1H, BYTES_AGG_USER_1H, BYTES_AGG_APP_1H)


def _aggregate_ddl(table: AggregateTable) -> str:
    return (f"CREATE TABLE IF NOT EXISTS {table.name} ({table.key} TEXT NOT NULL, date TIMESTAMP NOT NULL, "
            f"{table.value} BIGINT NOT NULL, PRIMARY KEY ({table.key}, date))")


DDL = [
    # The operators' live table. Provisioning inserts missing users and never overwrites an edit.
    """CREATE TABLE IF NOT EXISTS user_metadata (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        quota BIGINT NOT NULL CHECK (quota >= 0))""",
    # Snapshot of user_metadata in force for each hour: the batch layer joins hour H with it.
    """CREATE TABLE IF NOT EXISTS user_metadata_hourly (
        date TIMESTAMP NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        email TEXT NOT NULL,
        quota BIGINT NOT NULL,
        PRIMARY KEY (date, id))""",
    *(_aggregate_ddl(t) for t in (*STREAMING_TABLES, *BATCH_TABLES)),
    """CREATE TABLE IF NOT EXISTS users_over_quota_1h (
        email TEXT NOT NULL,
        date TIMESTAMP NOT NULL,
        quota BIGINT NOT NULL,
        sum_user_bytes BIGINT NOT NULL,
        PRIMARY KEY (email, date))""",
    # Micro-batches applied to the speed tables (their sums, dead letters and offsets committed) and
    # landed in the lake (landed_at; a batch is applied first, so its totals show without waiting for
    # its files). checkpoint_id is the streaming query's id, which a new checkpoint changes: batch ids
    # restart at 0 there, so they identify a batch only together with it.
    """CREATE TABLE IF NOT EXISTS streaming_batches (
        query TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL DEFAULT '',
        batch_id BIGINT NOT NULL,
        applied_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
        good_messages BIGINT NOT NULL,
        bad_messages BIGINT NOT NULL,
        late_messages BIGINT NOT NULL,
        max_event_time TIMESTAMP,
        landed_at TIMESTAMP,
        end_offsets JSONB,
        hours TIMESTAMP[],
        PRIMARY KEY (query, checkpoint_id, batch_id))""",
    # Ledgers from before landed_at: their batches were written to the lake before being applied.
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                       AND table_name = 'streaming_batches' AND column_name = 'landed_at') THEN
            ALTER TABLE streaming_batches ADD COLUMN landed_at TIMESTAMP;
            UPDATE streaming_batches SET landed_at = applied_at;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                       AND table_name = 'streaming_batches' AND column_name = 'checkpoint_id') THEN
            ALTER TABLE streaming_batches ADD COLUMN checkpoint_id TEXT NOT NULL DEFAULT '',
                ADD COLUMN end_offsets JSONB, ADD COLUMN hours TIMESTAMP[];
            ALTER TABLE streaming_batches DROP CONSTRAINT streaming_batches_pkey;
            ALTER TABLE streaming_batches ADD PRIMARY KEY (query, checkpoint_id, batch_id);
        END IF;
    END $$""",
    # Per query and Kafka partition, the offsets below which every record is applied to the speed
    # tables, and landed in the lake. Records are filtered by these, not by batch ids, so a lost or
    # replaced checkpoint that reads the topic again adds nothing twice and skips nothing.
    """CREATE TABLE IF NOT EXISTS streaming_offsets (
        query TEXT NOT NULL,
        topic TEXT NOT NULL,
        kafka_partition INT NOT NULL,
        applied_until BIGINT NOT NULL,
        landed_until BIGINT NOT NULL,
        PRIMARY KEY (query, topic, kafka_partition))""",
    # A micro-batch that failed every retry: what the operator sees (README: a failing batch).
    """CREATE TABLE IF NOT EXISTS streaming_failures (
        query TEXT NOT NULL,
        checkpoint_id TEXT NOT NULL,
        batch_id BIGINT NOT NULL,
        failed_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
        attempts INT NOT NULL,
        offsets TEXT NOT NULL,
        error TEXT NOT NULL,
        PRIMARY KEY (query, checkpoint_id, batch_id, failed_at))""",
    # UTC hours the speed layer has landed data for, and when it last landed some: the hourly batch
    # runs for these, and again for an hour that received data after its run.
    """CREATE TABLE IF NOT EXISTS landing_hours (
        hour TIMESTAMP PRIMARY KEY,
        last_batch_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'))""",
    # The hours raw_devices compacted, with the landing time of the newest data they included: an
    # hour whose landing_hours.last_batch_at is later received data since, and is compacted again.
    """CREATE TABLE IF NOT EXISTS compacted_hours (
        hour TIMESTAMP PRIMARY KEY,
        landed_through TIMESTAMP,
        compacted_at TIMESTAMP NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'))""",
    # Records that failed validation, byte for byte as received (value and key), with a readable
    # preview, the reason and where they came from; the key makes replays idempotent.
    """CREATE TABLE IF NOT EXISTS dead_letter (
        topic TEXT NOT NULL,
        kafka_partition INT NOT NULL,
        kafka_offset BIGINT NOT NULL,
        raw_value BYTEA,
        raw_key BYTEA,
        preview TEXT,
        reason TEXT NOT NULL,
        kafka_timestamp TIMESTAMP,
        ingest_time TIMESTAMP NOT NULL,
        PRIMARY KEY (topic, kafka_partition, kafka_offset))""",
    # Dead letters from before BYTEA: the text they kept becomes its UTF-8 bytes.
    """DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'dead_letter' AND column_name = 'raw_value' AND data_type = 'text') THEN
            ALTER TABLE dead_letter ADD COLUMN raw_key BYTEA, ADD COLUMN preview TEXT;
            UPDATE dead_letter SET preview = left(raw_value, 200);
            ALTER TABLE dead_letter ALTER COLUMN raw_value TYPE BYTEA USING convert_to(raw_value, 'UTF8');
        END IF;
    END $$""",
]


def schema_digest() -> str:
    """Identifies this version's schema: the migration's statements, hashed."""
    from antenna_assets.serving.operators.schema import DDL as OPERATORS_DDL
    from antenna_assets.serving.views import BATCH_HOURS_DDL, VIEW_DDL

    return hashlib.sha256("\n".join((*DDL, *BATCH_HOURS_DDL, *VIEW_DDL, *OPERATORS_DDL)).encode()).hexdigest()


def migrate(conn) -> None:
    """Create every table that does not exist yet, and the serving views; running it again changes nothing.

    A database already at this version is left alone, so the pipeline's writer role (which may not
    run DDL) can call it; an older one needs the schema's owner (`antenna stack up` migrates it).
    """
    import psycopg2

    from antenna_assets.errors import StackError
    from antenna_assets.serving.views import create_views  # the views read these tables: created after them

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
