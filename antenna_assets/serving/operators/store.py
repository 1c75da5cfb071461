"""The page's SQL (all parameterized): users with their usage, changes with their audit rows.

Every change names its operator in the transaction, takes the page's write lock, checks and writes
`user_metadata`; the table's trigger appends one audit row per changed field in the same transaction
(schema.py), so a change and its audit are committed together or not at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from antenna_assets.serving.operators.schema import OPERATOR_SETTING, USER_METADATA_AUDIT, WRITE_LOCK_ID
from antenna_assets.serving.schema import USER_METADATA
from antenna_assets.serving.operators.validation import FIELDS, UserInput

LIST_LIMIT = 500
SORTS = {  # sort key -> ORDER BY expression (whitelisted: never text from the request)
    "id": "u.id", "name": "lower(u.name)", "email": "lower(u.email)", "quota": "u.quota",
    "this_hour": "COALESCE(cur.sum_user_bytes, 0)", "last_hour": "COALESCE(prev.sum_user_bytes, 0)",
}


@dataclass(frozen=True)
class UserRow:
    id: str
    name: str
    email: str
    quota: int
    this_hour: int | None = None
    last_hour: int | None = None
    this_hour_source: str | None = None  # serving_user_1h's source: batch (final) or speed
    last_hour_source: str | None = None

    def over(self, used: int | None) -> bool:
        return used is not None and used > self.quota


@dataclass(frozen=True)
class AuditRow:
    """A row of user_metadata_audit, its columns in order."""

    id: int
    changed_at: datetime
    operator: str | None  # None: changed outside the page
    user_id: str
    field: str
    old_value: str | None
    new_value: str | None
    db_role: str | None


class ChangeRefused(ValueError):
    """A change that validates field by field but conflicts with the table: {field: message}."""

    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def current_hour(now: datetime) -> datetime:
    return now.replace(minute=0, second=0, microsecond=0)


def like_pattern(text: str) -> str:
    """`text` as an ILIKE pattern that matches it anywhere, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def usage_available(conn) -> bool:
    """Whether the serving view of usage per user and hour exists (the serving layer's migration)."""
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('serving_user_1h') IS NOT NULL")
        return cur.fetchone()[0]


def list_users(conn, now: datetime, search: str = "", sort: str = "id", descending: bool = False,
               limit: int = LIST_LIMIT, usage: bool = True) -> tuple[list[UserRow], int]:
    """Users matching `search` (in id, name or email) with this hour's and the last closed hour's
    bytes from the serving data (unless not `usage`); and how many match in all."""
    hour = current_hour(now)
    order = SORTS.get(sort, SORTS["id"]) + (" DESC" if descending else "")
    where = "WHERE u.id ILIKE %(q)s OR u.name ILIKE %(q)s OR u.email ILIKE %(q)s" if search else ""
    params = {"q": like_pattern(search), "hour": hour, "previous": hour - timedelta(hours=1), "limit": limit}
    # The two hours are read from the view once (a view over every speed-layer row: filter it first).
    usage_rows = ("SELECT email, date, sum_user_bytes, source FROM serving_user_1h WHERE date IN (%(hour)s, %(previous)s)"
                  if usage else "SELECT NULL::text AS email, NULL::timestamp AS date, NULL::numeric AS sum_user_bytes, "
                                "NULL::text AS source WHERE false")
    with conn.cursor() as cur:
        cur.execute(
            f"WITH usage AS ({usage_rows}) "
            "SELECT u.id, u.name, u.email, u.quota, cur.sum_user_bytes, prev.sum_user_bytes, cur.source, prev.source, "
            "count(*) OVER () FROM user_metadata u "
            "LEFT JOIN usage cur ON cur.email = u.email AND cur.date = %(hour)s "
            "LEFT JOIN usage prev ON prev.email = u.email AND prev.date = %(previous)s "
            f"{where} ORDER BY {order}, u.id LIMIT %(limit)s", params)
        rows = cur.fetchall()
    return [UserRow(*row[:8]) for row in rows], (rows[0][8] if rows else 0)


def get_user(conn, user_id: str, lock: bool = False) -> UserRow | None:
    with conn.cursor() as cur:
        cur.execute(f"SELECT {', '.join(USER_METADATA.names)} FROM user_metadata WHERE id = %s"
                    + (" FOR UPDATE" if lock else ""), (user_id,))
        row = cur.fetchone()
    return UserRow(*row) if row else None


def hourly_usage(conn, email: str, now: datetime, hours: int = 24) -> list[tuple[datetime, int | None]]:
    """The user's bytes in each of the last `hours` UTC hours, the current one last (None: no data)."""
    last = current_hour(now)
    first = last - timedelta(hours=hours - 1)
    with conn.cursor() as cur:
        cur.execute("SELECT date, sum_user_bytes FROM serving_user_1h WHERE email = %s AND date BETWEEN %s AND %s",
                    (email, first, last))
        by_hour = dict(cur.fetchall())
    return [(first + timedelta(hours=n), by_hour.get(first + timedelta(hours=n))) for n in range(hours)]


def audit_rows(conn, user_id: str | None = None, limit: int = 200) -> list[AuditRow]:
    select = f"SELECT {', '.join(USER_METADATA_AUDIT.names)} FROM user_metadata_audit"
    with conn.cursor() as cur:
        if user_id is None:
            cur.execute(f"{select} ORDER BY id DESC LIMIT %s", (limit,))
        else:
            cur.execute(f"{select} WHERE user_id = %s ORDER BY id DESC LIMIT %s", (user_id, limit))
        return [AuditRow(*row) for row in cur.fetchall()]


def _lock(cur, operator: str) -> None:
    """The write lock, and the operator whom the audit trigger records for this transaction's changes."""
    cur.execute("SELECT set_config(%s, %s, true), pg_advisory_xact_lock(%s)", (OPERATOR_SETTING, operator, WRITE_LOCK_ID))


def _email_conflicts(cur, users: list[UserInput]) -> dict[str, str]:
    """{user id: message} for emails another user already has. Emails key the hourly user table,
    so two users with one email would merge (and collide in its primary key)."""
    cur.execute("SELECT id, lower(email) FROM user_metadata WHERE lower(email) = ANY(%s)",
                ([u.email.lower() for u in users],))
    owner = {email: user_id for user_id, email in cur.fetchall()}
    return {u.id: f"already the email of user {owner[u.email.lower()]}"
            for u in users if owner.get(u.email.lower(), u.id) != u.id}


def _write(cur, user: UserInput, before: UserRow | None) -> int:
    """Insert or update one user (the lock is held); returns the changed fields."""
    if before is None:
        cur.execute(f"{USER_METADATA.insert_into()} VALUES (%s, %s, %s, %s)",
                    (user.id, user.name, user.email, user.quota))
        return len(FIELDS) - 1
    changed = [f for f in FIELDS if f != "id" and getattr(before, f) != getattr(user, f)]
    if changed:
        cur.execute("UPDATE user_metadata SET name = %s, email = %s, quota = %s WHERE id = %s",
                    (user.name, user.email, user.quota, user.id))
    return len(changed)


def create_user(conn, operator: str, user: UserInput) -> None:
    with conn.cursor() as cur:
        _lock(cur, operator)
        if get_user(conn, user.id) is not None:
            raise ChangeRefused({"id": "a user with this id already exists"})
        conflicts = _email_conflicts(cur, [user])
        if conflicts:
            raise ChangeRefused({"email": conflicts[user.id]})
        _write(cur, user, None)


def update_user(conn, operator: str, user: UserInput) -> int:
    """Returns how many fields changed (0: nothing written). Raises LookupError if the user is gone."""
    with conn.cursor() as cur:
        _lock(cur, operator)
        before = get_user(conn, user.id, lock=True)
        if before is None:
            raise LookupError(user.id)
        conflicts = _email_conflicts(cur, [user])
        if conflicts:
            raise ChangeRefused({"email": conflicts[user.id]})
        changed = _write(cur, user, before)
    return changed


def delete_user(conn, operator: str, user_id: str) -> bool:
    with conn.cursor() as cur:
        _lock(cur, operator)
        cur.execute("DELETE FROM user_metadata WHERE id = %s", (user_id,))
        return cur.rowcount > 0


def import_users(conn, operator: str, users: list[tuple[int, UserInput]]) -> tuple[int, int]:
    """Insert or update every (line, user) in one transaction; returns (created, updated).
    Raises ChangeRefused with {"line N": message} for rows that conflict with the table."""
    with conn.cursor() as cur:
        _lock(cur, operator)
        conflicts = _email_conflicts(cur, [u for _, u in users])
        if conflicts:
            raise ChangeRefused({f"line {line}": f"email: {conflicts[u.id]}" for line, u in users if u.id in conflicts})
        created = updated = 0
        for _, user in users:
            before = get_user(conn, user.id, lock=True)
            changed = _write(cur, user, before)
            created += before is None
            updated += before is not None and changed > 0
    return created, updated
