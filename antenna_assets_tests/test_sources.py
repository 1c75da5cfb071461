"""The operators' source table: provisioning happens once per database (never overwrites an edit, never
brings back a deleted user), and the hourly snapshots the batch layer joins with (real PostgreSQL,
through Dagster)."""

from __future__ import annotations

from datetime import datetime

import dagster as dg
import pytest

from antenna_assets.assets.sources import user_metadata
from antenna_assets.batch.layer import MissingSnapshotError, user_metadata_snapshots
from antenna_assets.sources.user_metadata import provision_users
from antenna_assets.resources import PostgresResource
from antenna_assets.serving.operators.store import audit_rows, delete_user
from antenna_assets.serving.migration import migrate
from antenna_assets.sources.users import PROVISIONED_USERS
from antenna_assets_tests.databases import temporary_serving_database
from antenna_assets_tests.truth import execute, query

FIRST = PROVISIONED_USERS[0]
NEWCOMER = ("00000000-0000-0000-0000-000000000099", "nuria", "nuria@gmail.com", 4242)


def _provisioned_with_edits() -> list[tuple]:
    users = [tuple(u) for u in PROVISIONED_USERS]
    users[0] = (FIRST.id, FIRST.name, "andres@example.org", 777)
    return sorted([*users, NEWCOMER])


def test_provisioning_twice_keeps_operators_edits_and_added_users(serving_db):
    """serving_db is provisioned once already; edits and a new user, then provisioning again."""
    execute(serving_db, "UPDATE user_metadata SET quota = 777, email = 'andres@example.org' WHERE id = %s", (FIRST.id,))
    execute(serving_db, "INSERT INTO user_metadata VALUES (%s, %s, %s, %s)", NEWCOMER)
    with PostgresResource(url=serving_db).connect() as conn:
        assert provision_users(conn) == 0
    assert query(serving_db, "SELECT id, name, email, quota FROM user_metadata ORDER BY id") == _provisioned_with_edits()


def _users(url: str) -> list[tuple]:
    return query(url, "SELECT id, name, email, quota FROM user_metadata ORDER BY id")


def test_a_fresh_database_is_provisioned_once_with_all_20_users(settings):
    """Through the hourly `user_metadata` asset, which provisions before every snapshot."""
    with temporary_serving_database(settings, "test", provisioned=False) as url:
        assert _users(url) == []
        first = _snapshot(url, "2026-03-02-10:00")
        assert first.success and _users(url) == sorted(tuple(u) for u in PROVISIONED_USERS)
        [materialization] = first.asset_materializations_for_node("user_metadata")
        assert materialization.metadata["provisioned_users"].value == 20
        again = _snapshot(url, "2026-03-02-11:00")
        [materialization] = again.asset_materializations_for_node("user_metadata")
        assert materialization.metadata["provisioned_users"].value == 0


def test_a_user_an_operator_deleted_never_comes_back(serving_db):
    victim = PROVISIONED_USERS[5]
    with PostgresResource(url=serving_db).connect() as conn:
        assert delete_user(conn, "alice", victim.id)  # as the operators' page deletes
    with PostgresResource(url=serving_db).connect() as conn:
        assert "deleted" in {row.field for row in audit_rows(conn, victim.id)}
        assert provision_users(conn) == 0
    assert _snapshot(serving_db, "2026-03-03-10:00").success  # the hourly asset provisions too
    remaining = sorted(tuple(u) for u in PROVISIONED_USERS if u != victim)
    assert _users(serving_db) == remaining
    assert _snapshot_rows(serving_db, datetime(2026, 3, 3, 10)) == remaining


def test_a_database_provisioned_before_the_record_keeps_its_deletions(serving_db):
    """A database of an earlier version (no `provisionings`), with a user deleted there: its migration
    records it as provisioned."""
    victim = PROVISIONED_USERS[7]
    execute(serving_db, "DROP TABLE provisionings")
    execute(serving_db, "DELETE FROM schema_version")  # an earlier version's schema: migrated again
    execute(serving_db, "DELETE FROM user_metadata WHERE id = %s", (victim.id,))
    with PostgresResource(url=serving_db).connect() as conn:
        migrate(conn)
        assert provision_users(conn) == 0
    assert _users(serving_db) == sorted(tuple(u) for u in PROVISIONED_USERS if u != victim)


def _snapshot(url: str, partition: str, refresh: bool = False) -> dg.MaterializeResult:
    return dg.materialize([user_metadata], partition_key=partition, instance=dg.DagsterInstance.ephemeral(),
                          resources={"postgres": PostgresResource(url=url)},
                          run_config={"ops": {"user_metadata": {"config": {"refresh": refresh}}}})


def _snapshot_rows(url: str, hour: datetime) -> list[tuple]:
    return query(url, "SELECT id, name, email, quota FROM user_metadata_hourly WHERE date = %s ORDER BY id", (hour,))


def test_snapshots_take_edits_keep_old_hours_and_refresh_on_request(serving_db):
    old, new = datetime(2026, 3, 1, 10), datetime(2026, 3, 1, 11)
    assert _snapshot(serving_db, "2026-03-01-10:00").success
    before = _snapshot_rows(serving_db, old)
    assert before == sorted(tuple(u) for u in PROVISIONED_USERS)

    execute(serving_db, "UPDATE user_metadata SET quota = 777, email = 'andres@example.org' WHERE id = %s", (FIRST.id,))
    execute(serving_db, "INSERT INTO user_metadata VALUES (%s, %s, %s, %s)", NEWCOMER)
    assert _snapshot(serving_db, "2026-03-01-11:00").success
    assert _snapshot_rows(serving_db, new) == _provisioned_with_edits()  # taken after the edit: has it
    assert _snapshot(serving_db, "2026-03-01-10:00").success
    assert _snapshot_rows(serving_db, old) == before  # re-running an old hour keeps its snapshot
    assert _snapshot(serving_db, "2026-03-01-10:00", refresh=True).success
    assert _snapshot_rows(serving_db, old) == _provisioned_with_edits()  # refresh retakes it

    with PostgresResource(url=serving_db).connect() as conn:
        with pytest.raises(MissingSnapshotError, match="no user_metadata snapshot for hour.*2026-03-01-12:00"):
            user_metadata_snapshots(conn, [datetime(2026, 3, 1, 12)])
