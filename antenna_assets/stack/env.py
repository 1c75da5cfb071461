"""Environment that points Dagster, the tests and a shell at the running stack.

It carries no password: PostgreSQL clients read theirs from the stack's passfile (PGPASSFILE, mode
0600), an external server's URL included; `antenna stack env --show-secrets` prints them.
"""

from __future__ import annotations

import os
import shlex
from urllib.parse import unquote, urlparse

from antenna_assets.settings import Settings
from antenna_assets.stack.dagster_home import ensure_dagster_home
from antenna_assets.stack.postgres import DAGSTER_ROLE
from antenna_assets.stack.secrets import secrets_dir, write_pgpass


def passwordless_url(settings: Settings) -> str:
    """An external server's URL without its password, which goes to the passfile instead."""
    url = urlparse(settings.postgres_url)
    if url.password is None:
        return settings.postgres_url
    write_pgpass(settings, url.hostname or "127.0.0.1", url.port or 5432,
                 {unquote(url.username or ""): unquote(url.password)})
    netloc = url.netloc.rsplit("@", 1)[1]
    return url._replace(netloc=f"{url.username}@{netloc}" if url.username else netloc).geturl()


def stack_environment(settings: Settings, show_secrets: bool = False) -> dict[str, str]:
    url = urlparse(settings.postgres_url)
    env = {
        "ANTENNA_STACK_DIR": str(settings.stack_dir),
        "ANTENNA_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "ANTENNA_LAKE_ROOT": settings.lake_root,
        "ANTENNA_SPARK_MASTER": settings.spark_master,
        "PGPASSFILE": str(settings.pgpass_file),
        "DAGSTER_HOME": str(ensure_dagster_home(settings)),
        "DAGSTER_PG_HOST": url.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(url.port or 5432),
        # The embedded server's Dagster database has a role of its own; an external server's is the URL's user's.
        "DAGSTER_PG_USER": unquote(url.username or "postgres") if settings.external_postgres else DAGSTER_ROLE,
        "DAGSTER_PG_DB": settings.dagster_db,
    }
    if settings.spark_workers:  # the cluster's size: each application's share of its cores follows from it
        env["ANTENNA_SPARK_WORKERS"] = str(settings.spark_workers)
    if settings.kafka_local_sasl:  # the password stays in its 0600 file, named by the settings
        env["ANTENNA_KAFKA_LOCAL_SASL"] = "1"
    # Exporting the embedded server's URL would make later commands treat it as external.
    if settings.external_postgres:
        env["ANTENNA_POSTGRES_URL"] = settings.postgres_url if show_secrets else passwordless_url(settings)
    return env


def apply_stack_environment(settings: Settings) -> dict[str, str]:
    env = stack_environment(settings)
    os.environ.update(env)
    return env


def export_lines(settings: Settings, show_secrets: bool = False) -> str:
    lines = [f"export {key}={shlex.quote(value)}" for key, value in stack_environment(settings, show_secrets).items()]
    folder = secrets_dir(settings)
    files = sorted(path for path in folder.iterdir() if path.is_file()) if folder.is_dir() else []
    if show_secrets:
        lines += [f"# {path.name}: {path.read_text().strip()}" for path in files if path != settings.pgpass_file]
    else:
        lines.append(f"# passwords and keys: one file each in {folder} (mode 0600), PostgreSQL's also in "
                     f"{settings.pgpass_file}; `antenna stack env --show-secrets` prints them")
    return "\n".join(lines)
