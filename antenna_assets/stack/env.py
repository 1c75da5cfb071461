"""Environment that points Dagster, the tests and a shell at the running stack."""

from __future__ import annotations

import os
import shlex
from urllib.parse import unquote, urlparse

from antenna_assets.settings import Settings
from antenna_assets.stack.dagster_home import ensure_dagster_home


def stack_environment(settings: Settings) -> dict[str, str]:
    url = urlparse(settings.postgres_url)
    env = {
        "ANTENNA_STACK_DIR": str(settings.stack_dir),
        "ANTENNA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ANTENNA_LAKE_ROOT": settings.lake_root,
        "ANTENNA_SPARK_MASTER": settings.spark_master,
        "DAGSTER_HOME": str(ensure_dagster_home(settings)),
        "DAGSTER_PG_HOST": url.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        "DAGSTER_PG_USER": unquote(url.username or "postgres"),
        "DAGSTER_PG_PASSWORD": unquote(url.password or "antenna"),
        "DAGSTER_PG_DB": settings.dagster_db,
    }
    if settings.kafka_local_sasl:  # the password stays in its 0600 file, named by the settings
        env["ANTENNA_KAFKA_LOCAL_SASL"] = "1"
    # Exporting the embedded server's URL would make later commands treat it as external.
    if settings.external_postgres:
        env["ANTENNA_POSTGRES_URL"] = settings.postgres_url
    return env


def apply_stack_environment(settings: Settings) -> dict[str, str]:
    env = stack_environment(settings)
    os.environ.update(env)
    return env


def export_lines(settings: Settings) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in stack_environment(settings).items())
