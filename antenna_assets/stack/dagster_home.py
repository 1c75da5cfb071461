"""DAGSTER_HOME for the local stack: a folder under the stack dir whose dagster.yaml is the repo's."""

from __future__ import annotations

from pathlib import Path

from antenna_assets.settings import Settings

REPO_DAGSTER_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"


def ensure_dagster_home(settings: Settings) -> Path:
    home = settings.stack_dir / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    link = home / "dagster.yaml"
    if not link.is_symlink() or link.resolve() != REPO_DAGSTER_YAML:
        link.unlink(missing_ok=True)
        link.symlink_to(REPO_DAGSTER_YAML)
    return home
