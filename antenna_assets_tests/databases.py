"""Throw-away serving databases for tests and benchmarks that must not share tables."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

from antenna_assets.postgres import connect, ensure_database
from antenna_assets.serving.migration import migrate
from antenna_assets.serving.roles import grant_writer
from antenna_assets.settings import Settings
from antenna_assets.sources.user_metadata import provision_users


@contextmanager
def temporary_serving_database(settings: Settings, prefix: str, provisioned: bool = True) -> Iterator[str]:
    """A new serving database on the stack's server (schema migrated, the 20 users provisioned unless
    not `provisioned`), dropped afterwards; yields its URL. For tests and benchmarks that must not share tables.

    The URL logs in as the server's admin, who owns the database: to the product it is an external
    server's URL (migrating, creating the reader's and the page's roles), as in production."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = settings.postgres_admin_url
    ensure_database(settings.postgres_url_for("postgres", admin), name)
    url = settings.postgres_url_for(name, admin)
    conn = connect(url)
    try:
        migrate(conn)
        if provisioned:
            provision_users(conn)
        conn.commit()
    finally:
        conn.close()
    try:
        yield url
    finally:
        server = connect(settings.postgres_url_for("postgres", admin))
        server.autocommit = True
        with server.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        server.close()


def writer_url(settings: Settings, admin_url: str) -> str:
    """A temporary serving database (its admin URL) as the pipeline's writer role sees it: what the stream,
    the alert rules and the sender log in as."""
    conn = connect(admin_url)
    try:
        grant_writer(conn)
    finally:
        conn.close()
    return settings.postgres_url_for(urlparse(admin_url).path.lstrip("/"))
