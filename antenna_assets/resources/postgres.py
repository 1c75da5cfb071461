from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from dagster import ConfigurableResource
from pydantic import Field

from antenna_assets.serving.schema import migrate
from antenna_assets.settings import Settings
from antenna_assets.postgres import transaction


class PostgresResource(ConfigurableResource):
    """The serving database. Empty `url` means ANTENNA_POSTGRES_URL, else the embedded server."""

    url: str = Field(default="", description="postgresql:// URL; empty: from the environment")

    @property
    def effective_url(self) -> str:
        return self.url or Settings.from_env().postgres_url

    def connect(self) -> AbstractContextManager[Any]:
        """A connection whose work commits when the block ends and rolls back on error (`postgres.transaction`)."""
        return transaction(self.effective_url)

    def migrate(self) -> None:
        with self.connect() as conn:
            migrate(conn)
