"""PostgreSQL login roles of the product's parts (dashboards, operators' page): each gets only the
privileges its part needs, so a bug or a stolen password there cannot reach the rest."""

from __future__ import annotations

from urllib.parse import quote, urlparse

from antenna_assets.stack.errors import StackError


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
