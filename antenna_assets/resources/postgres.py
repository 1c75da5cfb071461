from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from dagster import ConfigurableResource
from pydantic import Field

from antenna_assets.db.schema import migrate
from antenna_assets.settings import Settings
from antenna_assets.stack.postgres import connect


class PostgresResource(ConfigurableResource):
    """The serving database. Empty `url` means ANTENNA_POSTGRES_URL, else the embedded server."""

    url: str = Field(default="", description="postgresql:// URL; empty: from the environment")

    @property
    def effective_url(self) -> str:
        return self.url or Settings.from_env().postgres_url

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A psycopg2 connection whose work commits on success and rolls back on error."""
        conn = connect(self.effective_url, timeout=10, options="-c timezone=UTC")
        try:
            yield conn
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def migrate(self) -> None:
        with self.connect() as conn:
            migrate(conn)
