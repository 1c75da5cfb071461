"""Serving tables filled straight through PostgreSQL (no Spark): a closed hour the batch layer has not
done yet, two batch-final hours and the current, speed-only hour. For the views' and the dashboards' tests."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from antenna_assets.alerts.outbox import enqueue_alert
from antenna_assets.batch.layer import write_hourly_tables
from antenna_assets.serving.schema import BYTES_AGG_ANTENNA, BYTES_AGG_APP, BYTES_AGG_USER
from antenna_assets.hours import HOUR
from antenna_assets.sources.contract import BROKEN_JSON, MISSING_FIELD, NEGATIVE_BYTES, WRONG_TYPE
from antenna_assets.sources.users import PROVISIONED_USERS

ANTENNAS = [f"antenna-{n}" for n in range(3)]
APPS = ["WHATSAPP", "FACEBOOK", "TWITTER"]
UNKNOWN_ID = "not-a-provisioned-user"
RENAMED_EMAIL = "renamed@example.com"
DEAD_LETTER_REASONS = (BROKEN_JSON, WRONG_TYPE, MISSING_FIELD, NEGATIVE_BYTES)
ALERT_KINDS = ("quota.provisional", "quota.final", "quota.withdrawn", "health.stream_lag")


@dataclass
class Seeded:
    now: datetime
    speed: dict = field(default_factory=dict)  # AggregateTable -> {(key, window start): bytes}
    batch: dict = field(default_factory=dict)  # batch table name -> rows

    @property
    def current(self) -> datetime:
        return self.now.replace(minute=0, second=0, microsecond=0)

    @property
    def unbatched(self) -> datetime:
        return self.current - 3 * HOUR

    @property
    def batched_hours(self) -> tuple[datetime, datetime]:
        return self.current - 2 * HOUR, self.current - HOUR

    @property
    def latest_event(self) -> datetime:
        return self.now - timedelta(minutes=1)


def fill_serving(conn, now: datetime, seed: int = 7) -> Seeded:
    """Speed rows in 5-minute windows for every hour up to `now`, batch rows for the batch-final hours
    (deliberately different from the speed sums, as after late events), the ledger, dead letters and
    one user edit after the batch ran, and alerts in the outbox. Returns what was written, for the expectations."""
    rng = random.Random(seed)
    seeded = Seeded(now=now.replace(second=0, microsecond=0))
    users = PROVISIONED_USERS[:6]
    keys = {BYTES_AGG_ANTENNA: ANTENNAS, BYTES_AGG_USER: [u.id for u in users] + [UNKNOWN_ID], BYTES_AGG_APP: APPS}
    seeded.speed = {table: {} for table in keys}
    for hour in (seeded.unbatched, *seeded.batched_hours, seeded.current):
        for minute in range(0, 60, 5):
            window = hour + timedelta(minutes=minute)
            if window > seeded.now:
                break
            for table, table_keys in keys.items():
                for key in table_keys:
                    # Users 0 and 1 go far over their quota in every hour.
                    heavy = table is BYTES_AGG_USER and key in (users[0].id, users[1].id)
                    seeded.speed[table][(key, window)] = rng.randint(0, 9999) + (200_000 if heavy else 0)
    first, second = seeded.batched_hours
    seeded.batch = {
        "bytes_agg_antenna_1h": [(a, h, rng.randint(0, 10**6)) for a in ANTENNAS for h in seeded.batched_hours],
        "bytes_agg_user_1h": [(u.email, h, rng.randint(0, 10**6)) for u in users for h in seeded.batched_hours],
        "bytes_agg_app_1h": [(a, h, rng.randint(0, 10**6)) for a in APPS[:2] for h in seeded.batched_hours],
        # The second batch-final hour has nobody over quota: final all the same.
        "users_over_quota_1h": [(users[0].email, first, users[0].quota, users[0].quota + 5)],
    }
    with conn.cursor() as cur:
        for table, rows in seeded.speed.items():
            cur.executemany(f"INSERT INTO {table.name} VALUES (%s, %s, %s)", [(k, d, v) for (k, d), v in rows.items()])
        cur.execute("INSERT INTO streaming_batches (query, batch_id, good_messages, bad_messages, late_messages, "
                    "max_event_time) VALUES ('speed_layer', 0, 1, 0, 0, %s), ('speed_layer', 1, 1, 0, 0, %s)",
                    (seeded.latest_event - HOUR, seeded.latest_event))
        cur.executemany("INSERT INTO dead_letter (topic, kafka_partition, kafka_offset, raw_value, reason, ingest_time) "
                        "VALUES ('devices', 0, %s, %s, %s, %s)",
                        [(n, f"secret raw value {n}", DEAD_LETTER_REASONS[n % 4], seeded.now - timedelta(minutes=3 * n))
                         for n in range(40)])
    for hour in seeded.batched_hours:  # one batch run per hour, through the batch layer's own writer
        write_hourly_tables(conn, {name: [r for r in rows if r[1] == hour] for name, rows in seeded.batch.items()},
                            hour, hour + HOUR)
        conn.commit()
    with conn.cursor() as cur:  # an operator's edit after the batch: the speed rows use the live table
        cur.execute("UPDATE user_metadata SET email = %s, quota = 1000 WHERE id = %s", (RENAMED_EMAIL, users[2].id))
    conn.commit()
    with conn.cursor() as cur:  # alerts in the outbox, created over the last hours
        for n, kind in enumerate(ALERT_KINDS * 2):
            enqueue_alert(cur, kind=kind, subject=f"seeded {kind}", dedup_key=f"seeded:{n}", payload={})
            cur.execute("UPDATE alerts SET created = %s AT TIME ZONE 'UTC' WHERE dedup_key = %s",
                        (seeded.now - n * timedelta(minutes=25), f"seeded:{n}"))
    conn.commit()
    return seeded
