"""The serving schema (contract section 4) plus the product's bookkeeping tables.

Every statement is `IF NOT EXISTS`; serving/migration.py runs them in one transaction under an advisory
lock, so the migration is idempotent and two processes migrating at once cannot collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Column:
    name: str
    definition: str  # SQL type and column constraints


@dataclass(frozen=True)
class Table:
    """A table's one definition: its CREATE TABLE and every writer's column list come from here."""

    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def ddl(self) -> str:
        body = [f"{c.name} {c.definition}" for c in self.columns]
        if self.primary_key:
            body.append(f"PRIMARY KEY ({', '.join(self.primary_key)})")
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(body)})"

    def insert_into(self, names: Sequence[str] | None = None) -> str:
        """`INSERT INTO table (columns)` for all columns or the given ones, in the given order."""
        names = self.names if names is None else tuple(names)
        unknown = set(names) - set(self.names)
        if unknown:
            raise ValueError(f"{self.name} has no column {', '.join(sorted(unknown))}")
        return f"INSERT INTO {self.name} ({', '.join(names)})"


class AggregateTable(Table):
    """A serving table of byte totals: one row per `key` and window start `date`."""

    @property
    def key(self) -> str:
        return self.columns[0].name

    @property
    def value(self) -> str:
        return self.columns[2].name


# A total of bytes: exact whatever it adds up (README: sums). A report's `bytes` is a BIGINT, and a BIGINT
# total overflows after 9.2 million reports of 10^12 bytes for one key in one window, which then failed
# every replay of the batch that added them and stopped the stream; 38 digits never overflow.
TOTAL_BYTES = "NUMERIC(38, 0)"


def _aggregate(name: str, key: str, value: str) -> AggregateTable:
    return AggregateTable(name, (Column(key, "TEXT NOT NULL"), Column("date", "TIMESTAMP NOT NULL"),
                                 Column(value, f"{TOTAL_BYTES} NOT NULL")), (key, "date"))


_UTC_NOW = "DEFAULT (now() AT TIME ZONE 'UTC')"

# Speed layer: 5-minute event-time windows.
BYTES_AGG_ANTENNA = _aggregate("bytes_agg_antenna", "antenna_id", "sum_antenna_bytes")
BYTES_AGG_USER = _aggregate("bytes_agg_user", "id", "sum_user_bytes")
BYTES_AGG_APP = _aggregate("bytes_agg_app", "app", "sum_app_bytes")
STREAMING_TABLES = (BYTES_AGG_ANTENNA, BYTES_AGG_USER, BYTES_AGG_APP)

# Batch layer: one UTC hour.
BYTES_AGG_ANTENNA_1H = _aggregate("bytes_agg_antenna_1h", "antenna_id", "sum_antenna_bytes")
BYTES_AGG_USER_1H = _aggregate("bytes_agg_user_1h", "email", "sum_user_bytes")
BYTES_AGG_APP_1H = _aggregate("bytes_agg_app_1h", "app", "sum_app_bytes")
BATCH_TABLES = (BYTES_AGG_ANTENNA_1H, BYTES_AGG_USER_1H, BYTES_AGG_APP_1H)
USERS_OVER_QUOTA_1H = Table("users_over_quota_1h", (
    Column("email", "TEXT NOT NULL"),
    Column("date", "TIMESTAMP NOT NULL"),
    Column("quota", "BIGINT NOT NULL"),
    Column("sum_user_bytes", f"{TOTAL_BYTES} NOT NULL"),
), ("email", "date"))

# The operators' live table. Provisioning puts the contract's users in once per database (PROVISIONINGS).
USER_METADATA = Table("user_metadata", (
    Column("id", "TEXT NOT NULL"),
    Column("name", "TEXT NOT NULL"),
    Column("email", "TEXT NOT NULL"),
    Column("quota", "BIGINT NOT NULL CHECK (quota >= 0)"),
), ("id",))
# What was provisioned in this database, once: a user an operator deleted never comes back.
PROVISIONINGS = Table("provisionings", (
    Column("name", "TEXT NOT NULL"),
    Column("provisioned_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
), ("name",))
CONTRACT_USERS = "contract_users"  # the provisionings row of the contract's 20 users
# Snapshot of user_metadata in force for each hour: the batch layer joins hour H with it.
USER_METADATA_HOURLY = Table("user_metadata_hourly", (
    Column("date", "TIMESTAMP NOT NULL"),
    Column("id", "TEXT NOT NULL"),
    Column("name", "TEXT NOT NULL"),
    Column("email", "TEXT NOT NULL"),
    Column("quota", "BIGINT NOT NULL"),
), ("date", "id"))

# Micro-batches applied to the speed tables (their sums, dead letters and offsets committed) and
# landed in the lake (landed_at; a batch is applied first, so its totals show without waiting for
# its files). checkpoint_id is the streaming query's id, which a new checkpoint changes: batch ids
# restart at 0 there, so they identify a batch only together with it.
STREAMING_BATCHES = Table("streaming_batches", (
    Column("query", "TEXT NOT NULL"),
    Column("checkpoint_id", "TEXT NOT NULL DEFAULT ''"),
    Column("batch_id", "BIGINT NOT NULL"),
    Column("applied_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
    Column("good_messages", "BIGINT NOT NULL"),
    Column("bad_messages", "BIGINT NOT NULL"),
    Column("late_messages", "BIGINT NOT NULL"),
    Column("max_event_time", "TIMESTAMP"),
    Column("landed_at", "TIMESTAMP"),
    Column("end_offsets", "JSONB"),
    Column("hours", "TIMESTAMP[]"),
), ("query", "checkpoint_id", "batch_id"))

# A Kafka topic as Kafka identifies it, not by its name (kafka_client.TopicIdentity): the speed layer's offset
# marks and dead letters are keyed by it. Empty for rows from before identities (a run adopts the marks).
TOPIC_IDENTITY = (Column("kafka_cluster_id", "TEXT NOT NULL DEFAULT ''"),
                  Column("kafka_topic_id", "TEXT NOT NULL DEFAULT ''"))
TOPIC_IDENTITY_NAMES = tuple(c.name for c in TOPIC_IDENTITY)

# Per query and Kafka partition, the offsets below which every record is applied to the speed
# tables, and landed in the lake. Records are filtered by these, not by batch ids, so a lost or
# replaced checkpoint that reads the topic again adds nothing twice and skips nothing. The marks are
# of one topic as Kafka identifies it (its cluster's id and its topic id): a topic recreated under
# the same name, or another cluster's, has marks of its own. '' for marks recorded before identities:
# the first run that checks the topic takes them as its own (ledger.verify_topic).
STREAMING_OFFSETS = Table("streaming_offsets", (
    Column("query", "TEXT NOT NULL"),
    Column("topic", "TEXT NOT NULL"),
    Column("kafka_partition", "INT NOT NULL"),
    Column("applied_until", "BIGINT NOT NULL"),
    Column("landed_until", "BIGINT NOT NULL"),
    *TOPIC_IDENTITY,
), ("query", "topic", *TOPIC_IDENTITY_NAMES, "kafka_partition"))
# The stream's clock when a micro-batch was first planned, recorded before the batch uses it (it caps
# the batch's watermark time, speed/watermark.py): a replay of the batch reads it back, and decides
# the same way.
STREAMING_BATCH_CLOCKS = Table("streaming_batch_clocks", (
    Column("query", "TEXT NOT NULL"),
    Column("checkpoint_id", "TEXT NOT NULL"),
    Column("batch_id", "BIGINT NOT NULL"),
    Column("planned_at", "TIMESTAMP NOT NULL"),
), ("query", "checkpoint_id", "batch_id"))
# A micro-batch that failed every retry: what the operator sees (README: a failing batch).
STREAMING_FAILURES = Table("streaming_failures", (
    Column("query", "TEXT NOT NULL"),
    Column("checkpoint_id", "TEXT NOT NULL"),
    Column("batch_id", "BIGINT NOT NULL"),
    Column("failed_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
    Column("attempts", "INT NOT NULL"),
    Column("offsets", "TEXT NOT NULL"),
    Column("error", "TEXT NOT NULL"),
), ("query", "checkpoint_id", "batch_id", "failed_at"))
# UTC hours the speed layer has landed data for, and when it last landed some: the hourly batch
# runs for these, and again for an hour that received data after its run.
LANDING_HOURS = Table("landing_hours", (
    Column("hour", "TIMESTAMP NOT NULL"),
    Column("last_batch_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
), ("hour",))
# The hours raw_devices compacted, with the landing time of the newest data they included: an
# hour whose landing_hours.last_batch_at is later received data since, and is compacted again.
COMPACTED_HOURS = Table("compacted_hours", (
    Column("hour", "TIMESTAMP NOT NULL"),
    Column("landed_through", "TIMESTAMP"),
    Column("compacted_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
), ("hour",))
# The streaming runs' heartbeats (speed/heartbeat.py), on the server's clock. The streaming sensor marks a
# started run whose last beat is older than its limit as failed and sets declared_dead_at: that run, were
# it alive after all, stops at its next beat. query, pid, host and beat_at stay NULL for a run declared
# dead before it ever beat.
STREAMING_HEARTBEATS = Table("streaming_heartbeats", (
    Column("run_id", "TEXT NOT NULL"),
    Column("query", "TEXT"),
    Column("pid", "INT"),
    Column("host", "TEXT"),
    Column("beat_at", "TIMESTAMP"),
    Column("declared_dead_at", "TIMESTAMP"),
), ("run_id",))
# Records that failed validation, byte for byte as received (value and key), with a readable
# preview, the reason and where they came from; the key makes replays idempotent. The value's length
# and SHA-256 (hex) prove a copy is the record; a record larger than the speed layer's inline limit
# keeps its key and value in the lake instead, in the Parquet folder `raw_location` (speed/dead_letters.py).
DEAD_LETTER = Table("dead_letter", (
    Column("topic", "TEXT NOT NULL"),
    Column("kafka_partition", "INT NOT NULL"),
    Column("kafka_offset", "BIGINT NOT NULL"),
    Column("raw_value", "BYTEA"),
    Column("raw_key", "BYTEA"),
    Column("preview", "TEXT"),
    Column("reason", "TEXT NOT NULL"),
    Column("kafka_timestamp", "TIMESTAMP"),
    Column("ingest_time", "TIMESTAMP NOT NULL"),
    Column("raw_length", "BIGINT"),
    Column("raw_sha256", "TEXT"),
    Column("raw_location", "TEXT"),
    # A topic deleted and created again under its name numbers its records from 0 again: its dead letters
    # must not collide with the old topic's.
    *TOPIC_IDENTITY,
), ("topic", *TOPIC_IDENTITY_NAMES, "kafka_partition", "kafka_offset"))

# The health conditions the alert rules see bad now (alerts/rules.py): since when, and since when announced
# (opened_at NULL: still within its hold time). Written in the transaction that enqueues their alerts.
ALERT_CONDITIONS = Table("alert_conditions", (
    Column("name", "TEXT NOT NULL"),
    Column("subject", "TEXT NOT NULL"),
    Column("first_seen", "TIMESTAMP NOT NULL"),
    Column("opened_at", "TIMESTAMP"),
    Column("summary", "TEXT NOT NULL"),
    Column("detail", "JSONB NOT NULL"),
), ("name", "subject"))

# Retention (antenna_assets/retention). Hours whose landing files were removed after their compaction: the
# hour's raw_devices holds data its landing no longer does, so a compaction of the hour (late data) first
# copies raw_devices back into the landing. And the speed layer's 5-minute rows removed per table and hour,
# with their total, which serving_speed_vs_batch_1h adds to what the table still holds of the hour.
PRUNED_LANDING_HOURS = Table("pruned_landing_hours", (
    Column("hour", "TIMESTAMP NOT NULL"),
    Column("pruned_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
    Column("removed", "BOOLEAN NOT NULL DEFAULT false"),  # every folder the compaction held is deleted
    Column("restored_at", "TIMESTAMP"),  # raw_devices copied back into the landing, for a recompaction
), ("hour",))
PRUNED_SPEED_HOURS = Table("pruned_speed_hours", (
    Column("table_name", "TEXT NOT NULL"),
    Column("date", "TIMESTAMP NOT NULL"),
    Column("rows_removed", "BIGINT NOT NULL"),
    Column("total_bytes", f"{TOTAL_BYTES} NOT NULL"),
    Column("pruned_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
), ("table_name", "date"))

# Which hours each batch table holds the final answer for (created by the views' migration, which
# also marks the hours a batch table already holds).
BATCH_HOURS = Table("batch_hours", (
    Column("table_name", "TEXT NOT NULL"),
    Column("date", "TIMESTAMP NOT NULL"),
    Column("materialized_at", f"TIMESTAMP NOT NULL {_UTC_NOW}"),
), ("table_name", "date"))

# Alerts (antenna_assets/alerts): an outbox. A rule inserts its alert in the transaction that decides it, once
# per dedup_key whatever re-runs; the sender delivers it to each channel's recipients (alert_deliveries) and
# the alert's state, attempts, last_error, next_attempt and sent_at summarise those deliveries.
_DELIVERY_STATE = "TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed'))"
ALERTS = Table("alerts", (
    Column("id", "BIGSERIAL"),
    Column("kind", "TEXT NOT NULL"),
    Column("subject", "TEXT NOT NULL"),
    Column("dedup_key", "TEXT NOT NULL UNIQUE"),
    Column("payload", "JSONB NOT NULL"),
    Column("created", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
    Column("state", _DELIVERY_STATE),
    Column("attempts", "INT NOT NULL DEFAULT 0"),
    Column("last_error", "TEXT"),
    Column("next_attempt", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
    Column("sent_at", "TIMESTAMPTZ"),
), ("id",))
# One row per alert, channel ('email', 'webhook') and recipient: a recipient the server refuses fails alone.
ALERT_DELIVERIES = Table("alert_deliveries", (
    Column("alert_id", "BIGINT NOT NULL REFERENCES alerts (id) ON DELETE CASCADE"),
    Column("channel", "TEXT NOT NULL"),
    Column("recipient", "TEXT NOT NULL"),
    Column("state", _DELIVERY_STATE),
    Column("attempts", "INT NOT NULL DEFAULT 0"),
    Column("last_error", "TEXT"),
    Column("next_attempt", "TIMESTAMPTZ NOT NULL DEFAULT now()"),
    Column("delivered_at", "TIMESTAMPTZ"),
), ("alert_id", "channel", "recipient"))


def _with_topic_identity(table: Table) -> str:
    """A `table` from before topic identities gets TOPIC_IDENTITY's columns, empty, and its primary key with them."""
    add = ", ".join(f"ADD COLUMN {c.name} {c.definition}" for c in TOPIC_IDENTITY)
    return f"""DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                       AND table_name = '{table.name}' AND column_name = '{TOPIC_IDENTITY[-1].name}') THEN
            ALTER TABLE {table.name} {add};
            ALTER TABLE {table.name} DROP CONSTRAINT {table.name}_pkey;
            ALTER TABLE {table.name} ADD PRIMARY KEY ({", ".join(table.primary_key)});
        END IF;
    END $$"""

DDL = [
    *(t.ddl() for t in (USER_METADATA, USER_METADATA_HOURLY, *STREAMING_TABLES, *BATCH_TABLES, USERS_OVER_QUOTA_1H,
                        STREAMING_BATCHES)),
    # A database from before `provisionings` whose user_metadata has rows was provisioned: recorded, so
    # users deleted there before the upgrade do not come back either.
    f"""DO $$ BEGIN
        IF to_regclass('provisionings') IS NULL THEN
            {PROVISIONINGS.ddl()};
            INSERT INTO provisionings (name) SELECT '{CONTRACT_USERS}' WHERE EXISTS (SELECT 1 FROM user_metadata);
        END IF;
    END $$""",
    STREAMING_HEARTBEATS.ddl(),
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
    *(t.ddl() for t in (STREAMING_OFFSETS, STREAMING_FAILURES, LANDING_HOURS, COMPACTED_HOURS, DEAD_LETTER)),
    # Offset marks from before topic identities: kept, with an empty identity, until a run adopts them.
    _with_topic_identity(STREAMING_OFFSETS),
    STREAMING_BATCH_CLOCKS.ddl(),
    PRUNED_LANDING_HOURS.ddl(),
    PRUNED_SPEED_HOURS.ddl(),
    ALERT_CONDITIONS.ddl(),
    # Dead letters from before BYTEA: the text they kept becomes its UTF-8 bytes.
    """DO $$ BEGIN
        IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                   AND table_name = 'dead_letter' AND column_name = 'raw_value' AND data_type = 'text') THEN
            ALTER TABLE dead_letter ADD COLUMN raw_key BYTEA, ADD COLUMN preview TEXT;
            UPDATE dead_letter SET preview = left(raw_value, 200);
            ALTER TABLE dead_letter ALTER COLUMN raw_value TYPE BYTEA USING convert_to(raw_value, 'UTF8');
        END IF;
    END $$""",
    # Dead letters from before lengths and digests: all inline then, so both come from the bytes held.
    """DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema()
                       AND table_name = 'dead_letter' AND column_name = 'raw_sha256') THEN
            ALTER TABLE dead_letter ADD COLUMN raw_length BIGINT, ADD COLUMN raw_sha256 TEXT,
                ADD COLUMN raw_location TEXT;
            UPDATE dead_letter SET raw_length = length(raw_value), raw_sha256 = encode(sha256(raw_value), 'hex');
        END IF;
    END $$""",
    # Dead letters from before topic identities: an empty identity, as the offset marks of then.
    _with_topic_identity(DEAD_LETTER),
    ALERTS.ddl(),
    ALERT_DELIVERIES.ddl(),
    # The sender's two questions: which alerts have no deliveries yet, which deliveries are due.
    "CREATE INDEX IF NOT EXISTS alerts_pending ON alerts (id) WHERE state = 'pending'",
    "CREATE INDEX IF NOT EXISTS alert_deliveries_due ON alert_deliveries (next_attempt) WHERE state = 'pending'",
    # The speed layer's question at each start: which applied batches have no lake files yet (a month of batches
    # is millions of rows, nearly all landed).
    "CREATE INDEX IF NOT EXISTS streaming_batches_unlanded ON streaming_batches (query) WHERE landed_at IS NULL",
]
