from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from dagster import ConfigurableResource, EnvVar
from pydantic import Field

from antenna_assets.serving.migration import migrate
from antenna_assets.settings import Settings, env_name
from antenna_assets.postgres import transaction


class PostgresResource(ConfigurableResource):
    """The serving database."""

    url: str = Field(description="postgresql:// URL of the serving database: in Definitions ANTENNA_POSTGRES_URL "
                                 "as an EnvVar (it may carry a password), else the embedded server's (none in it)")

    @classmethod
    def from_settings(cls, settings: Settings) -> "PostgresResource":
        """The settings' database: a URL from the environment stays an `EnvVar`, resolved in the run, so the
        UI names the variable and never shows its value."""
        given = settings.from_environment("postgres_url")
        return cls(url=EnvVar(env_name("postgres_url")) if given else settings.postgres_url)

    @classmethod
    def for_retention(cls, settings: Settings) -> "PostgresResource":
        """The retention job's database login: the embedded server's retention role (no password in its URL),
        or an external server's URL from the environment, as an `EnvVar`."""
        if settings.from_environment("postgres_url"):
            return cls(url=EnvVar(env_name("postgres_url")))
        return cls(url=settings.postgres_retention_url)

    def connect(self) -> AbstractContextManager[Any]:
        """A connection whose work commits when the block ends and rolls back on error (`postgres.transaction`)."""
        return transaction(self.url)

    def migrate(self) -> None:
        with self.connect() as conn:
            migrate(conn)
