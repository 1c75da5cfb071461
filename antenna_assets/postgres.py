"""The one way the product opens PostgreSQL, and the login roles of its parts.

Every connection comes from `connect` (a server that does not answer or refuses the login is a
one-line `StackError`, the password redacted). The commit rule is `transaction`: the work inside
commits when the block ends and rolls back on any error.

Login roles (dashboards, operators' page): each gets only the privileges its part needs, so a bug
or a stolen password there cannot reach the rest.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from contextlib import contextmanager, suppress
from functools import cache
from typing import Any, Iterator
from urllib.parse import quote, urlparse

from antenna_assets.errors import StackError


def connect(url: str, timeout: int = 5, **options):
    """A psycopg2 connection; a server that does not answer is a StackError saying what to do."""
    import psycopg2

    try:
        conn = psycopg2.connect(url, connect_timeout=timeout, **options)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0]
        # A server that refused the login answered: starting it again would not help.
        hint = "" if "FATAL" in reason else ". Start it with `antenna stack up` or fix ANTENNA_POSTGRES_URL"
        raise StackError(f"cannot connect to PostgreSQL at {redacted(url)}: {reason}{hint}") from None
    # The byte totals are NUMERIC(38, 0) (serving/schema.py TOTAL_BYTES): the product reads a whole NUMERIC
    # as a Python int, as it read the BIGINTs before, not as a Decimal (which float arithmetic refuses).
    psycopg2.extensions.register_type(_whole_numeric_type(), conn)
    return conn


def _whole_numeric(value: str | None, cur):
    from decimal import Decimal

    if value is None:
        return None
    return int(value) if value.lstrip("-").isdigit() else Decimal(value)


@cache
def _whole_numeric_type():
    import psycopg2.extensions

    return psycopg2.extensions.new_type((1700,), "WHOLE_NUMERIC", _whole_numeric)  # 1700: numeric's type oid


UTC_SESSION = "-c timezone=UTC"


@contextmanager
def transaction(url: str, timeout: int = 10) -> Iterator[Any]:
    """A connection (session time zone UTC) whose work commits when the block ends, rolls back on error."""
    conn = connect(url, timeout=timeout, options=UTC_SESSION)
    try:
        with _committed(conn):
            yield conn
    finally:
        conn.close()


@contextmanager
def _committed(conn) -> Iterator[None]:
    try:
        yield
        conn.commit()
    except BaseException:
        with suppress(Exception):  # a broken connection cannot roll back; the first error is the one to see
            conn.rollback()
        raise


class KeptConnection:
    """One connection for many transactions, with `transaction`'s commit rule. For a loop that
    commits every second: a login per transaction (SCRAM, a server process) cost more than the
    work. A connection that broke (server restarted, network) is replaced at the next transaction."""

    def __init__(self, url: str, timeout: int = 10):
        self.url, self.timeout = url, timeout
        self._conn = None

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, timeout=self.timeout, options=UTC_SESSION)
        from psycopg2.extensions import TRANSACTION_STATUS_IDLE

        conn = self._conn
        try:
            with _committed(conn):
                yield conn
        except BaseException:
            if conn.closed or conn.get_transaction_status() != TRANSACTION_STATUS_IDLE:
                self.close()  # broken, or in a state no rollback cleared: the next transaction logs in again
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


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


def ensure_owned_database(admin_url: str, name: str, owner: str) -> None:
    """Database `name` exists and `owner` owns it, its schema `public` and everything in it (a
    database created before the role existed is handed over); PUBLIC may not connect to it."""
    ensure_database(admin_url, name)
    conn = connect(urlparse(admin_url)._replace(path=f"/{name}").geturl())
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT quote_ident(%s), quote_ident(%s)", (name, owner))
            database, role = cur.fetchone()
            cur.execute(f"ALTER DATABASE {database} OWNER TO {role}")
            cur.execute(f"REVOKE CONNECT ON DATABASE {database} FROM PUBLIC")
            cur.execute(f"ALTER SCHEMA public OWNER TO {role}")
            cur.execute("""SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                                 WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END,
                                  quote_ident(c.relname)
                           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
                             AND pg_get_userbyid(c.relowner) <> %s
                             AND NOT (c.relkind = 'S' AND EXISTS (
                                 SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))""",
                        (owner,))
            # A sequence owned by a column moves with its table.
            for kind, relation in cur.fetchall():
                cur.execute(f"ALTER {kind} {relation} OWNER TO {role}")
        conn.commit()
    finally:
        conn.close()


def scram_sha256(password: str, iterations: int = 4096) -> str:
    """PostgreSQL's SCRAM-SHA-256 verifier of `password`: what `ALTER ROLE ... PASSWORD` is given, so
    the server (and its log, should the statement fail) never sees the password itself."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    stored_key = hashlib.sha256(hmac.new(salted, b"Client Key", "sha256").digest()).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda raw: base64.b64encode(raw).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


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
            cur.execute(f"{verb} ROLE {ident} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s",
                        (scram_sha256(password),))
        except psycopg2.errors.InsufficientPrivilege:
            raise StackError(f"cannot {verb.lower()} the PostgreSQL role {role!r}: the product's user needs CREATEROLE, "
                             f"or create the role yourself (LOGIN) and grant it as the README says") from None


def grant_database_use(cur, role: str, database_privileges: str = "CONNECT") -> str:
    """Give `role` `database_privileges` on the connected database and USAGE on its schema public;
    returns the role's quoted identifier, for the grants on relations that follow."""
    cur.execute("SELECT quote_ident(%s), quote_ident(current_database())", (role,))
    ident, database = cur.fetchone()
    cur.execute(f"GRANT {database_privileges} ON DATABASE {database} TO {ident}")
    cur.execute(f"GRANT USAGE ON SCHEMA public TO {ident}")
    return ident


def role_url(server_url: str, role: str, password: str) -> str:
    """`server_url` (same host, port and database) logging in as `role`."""
    parsed = urlparse(server_url)
    host = parsed.hostname or "127.0.0.1"
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}" + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl()
