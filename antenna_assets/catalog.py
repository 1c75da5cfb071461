"""What Dagster's catalog shows of each asset besides its lineage, in Dagster's standard keys: the owner,
the PostgreSQL table behind it (`dagster/table_name`, and `dagster/column_schema` from the table's one
definition in serving/schema.py) and links to its code."""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg

from antenna_assets.serving.schema import (BYTES_AGG_ANTENNA, BYTES_AGG_ANTENNA_1H, BYTES_AGG_APP, BYTES_AGG_APP_1H,
                                           BYTES_AGG_USER, BYTES_AGG_USER_1H, DEAD_LETTER, USER_METADATA_HOURLY,
                                           USERS_OVER_QUOTA_1H, Table)
from antenna_assets.serving.views import SERVING_VIEWS
from antenna_assets.settings import Settings

OWNERS = ["team:antenna"]
PACKAGE = Path(__file__).resolve().parent

# The table each asset writes. user_metadata's partitions are the hourly snapshots of the operators' table.
ASSET_TABLES: dict[str, Table] = {
    "user_metadata": USER_METADATA_HOURLY,
    "devices_dead_letter": DEAD_LETTER,
    **{table.name: table for table in (BYTES_AGG_ANTENNA, BYTES_AGG_USER, BYTES_AGG_APP, BYTES_AGG_ANTENNA_1H,
                                       BYTES_AGG_USER_1H, BYTES_AGG_APP_1H, USERS_OVER_QUOTA_1H)},
}
# Where a column definition's type ends and its constraints begin.
_CONSTRAINT = re.compile(r"\s+(?=NOT NULL|NULL|DEFAULT|CHECK|UNIQUE|REFERENCES)")


def column_schema(table: Table) -> dg.TableSchema:
    """The table's columns as Dagster's TableSchema: name, SQL type, nullability, other constraints."""
    columns = []
    for column in table.columns:
        sql_type, *rest = _CONSTRAINT.split(column.definition, maxsplit=1)
        constraints = rest[0] if rest else ""
        other = constraints.replace("NOT NULL", "").strip()
        columns.append(dg.TableColumn(column.name, sql_type, constraints=dg.TableColumnConstraints(
            nullable="NOT NULL" not in constraints, unique=table.primary_key == (column.name,),
            other=[other] if other else [])))
    keys = [f"PRIMARY KEY ({', '.join(table.primary_key)})"] if table.primary_key else []
    return dg.TableSchema(columns=columns, constraints=dg.TableConstraints(other=keys))


def table_metadata(name: str) -> dict[str, object]:
    """Definition metadata of asset `name`: its table's name and, for a table (not a view), its columns."""
    if name in ASSET_TABLES:
        table = ASSET_TABLES[name]
        return {"dagster/table_name": table.name, "dagster/column_schema": column_schema(table)}
    return {"dagster/table_name": name} if name in SERVING_VIEWS else {}


def repository_url(settings: Settings) -> str:
    """The web address of the code's repository: ANTENNA_GIT_URL, else the checkout's `origin` remote
    as https (user and password left out), else empty."""
    if settings.git_url:
        return settings.git_url.rstrip("/")
    try:
        remote = subprocess.run(["git", "-C", str(PACKAGE), "remote", "get-url", "origin"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    url = urlparse(re.sub(r"^git@([^:/]+):", r"https://\1/", remote))
    if url.scheme != "https" or not url.hostname:
        return ""
    return f"https://{url.hostname}{url.path.removesuffix('.git')}".rstrip("/")


def catalogued(assets: list, settings: Settings) -> list:
    """`assets` with their owner, table metadata and code references (linked to the repository when
    it has a web address)."""
    described = dg.map_asset_specs(
        lambda spec: spec.merge_attributes(owners=OWNERS, metadata=table_metadata(spec.key.path[-1])), assets)
    url = repository_url(settings)
    # Code references are Dagster's documented way to link assets to code; their beta label would
    # otherwise print at every load of the code location.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        referenced = dg.with_source_code_references(described)
        if url:
            referenced = dg.link_code_references_to_git(
                referenced, git_url=url, git_branch=settings.git_branch,
                file_path_mapping=dg.AnchorBasedFilePathMapping(local_file_anchor=PACKAGE,
                                                                file_anchor_path_in_repository=PACKAGE.name))
    return list(referenced)
