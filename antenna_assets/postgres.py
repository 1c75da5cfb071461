"""The one way the product opens PostgreSQL, and the login roles of its parts.

Every connection comes from `connect` (a server that does not answer or refuses the login is a
one-line `StackError`, the password redacted). The commit rule is `transaction`: the work inside
commits when the block ends and rolls back on any error.

Login roles (dashboards, operators' page): each gets only the privileges its part needs, so a bug
or a stolen password there cannot reach the rest.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import quote, urlparse

from antenna_assets.errors import StackError


def connect(url: str, timeout: int = 5, **options):
    """A psycopg2 connection; a server that does not answer is a StackError saying what to do."""
    import psycopg2

    try:
        return psycopg2.connect(url, connect_timeout=timeout, **options)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        # A server that refused the login answered: starting it again would not help.
        hint = "" if "FATAL" in reason else ". Start it with `antenna stack up` or fix ANTENNA_POSTGRES_URL"
        raise StackError(f"cannot connect to PostgreSQL at {redacted(url)}: {reason}{hint}") from None


@contextmanager
def transaction(url: str, timeout: int = 10) -> Iterator[Any]:
    """A connection (session time zone UTC) whose work commits when the block ends, rolls back on error."""
    conn = connect(url, timeout=timeout, options="-c timezone=UTC")
    try:
        yield conn
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        conn.close()


def ensure_database(server_url: str, name: str) -> None:
    """Create database `name` on the server of `server_url` unless it exists."""
    conn = connect(server_url)
    try:
        # Not `transaction`: PostgreSQL refuses CREATE DATABASE inside a transaction block.
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                # Identifiers cannot be bound as parameters; quote_ident makes the name safe.
                cur.execute("SELECT quote_ident(%s)", (name,))
                cur.execute(f"CREATE DATABASE {cur.fetchone()[0]}")
    finally:
        conn.close()


def redacted(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return parsed._replace(netloc=parsed.netloc.replace(f":{parsed.password}@", ":***@")).geturl()
    return url


def ensure_login_role(conn, role: str, password: str) -> None:
    """Create `role` (LOGIN, no other attribute) or reset its password; idempotent."""
    import psycopg2

    with conn.cursor() as cur:
        cur.execute("SELECT quote_ident(%s)", (role,))
        ident = cur.fetchone()[0]
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        try:
            cur.execute(f"{verb} ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s", (password,))
        except psycopg2.errors.InsufficientPrivilege:
            raise StackError(f"cannot {verb.lower()} the PostgreSQL role {role!r}: the product's user needs CREATEROLE, "
                             f"or create the role yourself (LOGIN) and grant it as the README says") from None


def role_url(server_url: str, role: str, password: str) -> str:
    """`server_url` (same host, port and database) logging in as `role`."""
    parsed = urlparse(server_url)
    host = parsed.hostname or "127.0.0.1"
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}" + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()
