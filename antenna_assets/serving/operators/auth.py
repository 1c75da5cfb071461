"""Operator accounts (argon2id hashes), their sessions' generation, and the sign-in limit."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from antenna_assets.serving.operators.schema import OPERATORS, SIGN_IN_ATTEMPTS, SIGN_IN_LOCK_ID

MIN_PASSWORD_LENGTH = 10
MAX_NAME_LENGTH = 64
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified when the name is unknown, so an unknown name costs the same time as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class OperatorError(ValueError):
    """A refused operator name or password; the message says why."""


def check_name(name: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable() or name != name.strip():
        raise OperatorError(f"operator name must be 1-{MAX_NAME_LENGTH} printable characters without surrounding spaces")


def check_new_operator(name: str, password: str) -> None:
    check_name(name)
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def add_operator(conn, name: str, password: str, reset: bool = False) -> bool:
    """Create the operator (or, with `reset`, set a new password); returns whether it was created.
    Run with the product's own connection: the page's role cannot write operators."""
    check_new_operator(name, password)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM operators WHERE name = %s", (name,))
        exists = cur.fetchone() is not None
        if exists and not reset:
            raise OperatorError(f"operator {name!r} already exists: use `antenna operators password {name}` "
                                "to give it a new password")
        cur.execute(f"{OPERATORS.insert_into(('name', 'password_hash'))} VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash, "
                    "session_generation = gen_random_uuid()", (name, hash_password(password)))
    return not exists


def set_password(conn, name: str, password: str) -> None:
    """A new password for an existing operator; the operator's sessions end (a new generation)."""
    check_new_operator(name, password)
    with conn.cursor() as cur:
        cur.execute("UPDATE operators SET password_hash = %s, session_generation = gen_random_uuid() WHERE name = %s",
                    (hash_password(password), name))
        if cur.rowcount == 0:
            raise OperatorError(f"no operator {name!r}: create it with `antenna operators add {name}`")


def remove_operator(conn, name: str) -> None:
    """Delete the operator's account; its sessions end with it (their generation is gone)."""
    with conn.cursor() as cur:
        cur.execute("DELETE FROM operators WHERE name = %s", (name,))
        if cur.rowcount == 0:
            raise OperatorError(f"no operator {name!r}")


def verify_operator(conn, name: str, password: str) -> str | None:
    """The operator's session generation if the password is theirs, else None."""
    with conn.cursor() as cur:
        cur.execute("SELECT password_hash, session_generation::text FROM operators WHERE name = %s", (name,))
        row = cur.fetchone()
    try:
        return row[1] if _HASHER.verify(row[0] if row else _DUMMY_HASH, password) and row is not None else None
    except (VerificationError, InvalidHashError):
        return None


def session_generation(conn, name: str) -> str | None:
    """The operator's current session generation; None once the operator is removed."""
    with conn.cursor() as cur:
        cur.execute("SELECT session_generation::text FROM operators WHERE name = %s", (name,))
        row = cur.fetchone()
    return row[0] if row else None


def sign_in_keys(name: str, address: str) -> list[str]:
    """What the limit counts separately: the operator name and the client's address."""
    return [f"name:{name[:200]}", f"addr:{address}"]


def reserve_sign_in(conn, keys: list[str], attempts: int, window_seconds: int) -> tuple[list[int], int]:
    """Reserve one sign-in attempt for every key, before the password is checked: ([reserved row
    ids], 0), or ([], seconds to wait) when a key already has `attempts` in the last `window_seconds`.

    The keys' advisory locks (taken in one order: no deadlock) make count-then-insert atomic, so
    parallel requests, from any number of the page's processes, cannot overtake the limit. Commit
    before checking the password, so that other requests see the reservation."""
    table = SIGN_IN_ATTEMPTS.name
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s, h) FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(%s::text[]) AS k) "
                    "AS hashes ORDER BY h", (SIGN_IN_LOCK_ID, keys))
        cur.execute(f"DELETE FROM {table} WHERE attempted_at <= now() AT TIME ZONE 'UTC' - make_interval(secs => %s)",
                    (window_seconds,))
        cur.execute(f"SELECT count(*), ceil(extract(epoch FROM min(attempted_at) + make_interval(secs => %s) "
                    f"- now() AT TIME ZONE 'UTC')) FROM {table} WHERE key = ANY(%s) GROUP BY key",
                    (window_seconds, keys))
        waits = [int(wait) for count, wait in cur.fetchall() if count >= attempts]
        if waits:
            return [], max(1, *waits)
        cur.execute(f"{SIGN_IN_ATTEMPTS.insert_into(('key',))} SELECT unnest(%s::text[]) RETURNING id", (keys,))
        return [row[0] for row in cur.fetchall()], 0


def release_sign_in(conn, reserved: list[int]) -> None:
    """A successful sign-in does not count against the limit."""
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {SIGN_IN_ATTEMPTS.name} WHERE id = ANY(%s)", (reserved,))
