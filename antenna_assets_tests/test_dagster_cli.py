"""The code location loads and assets materialize through Dagster's own command line,
against the PostgreSQL-backed instance of dagster.yaml."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(os.sys.executable).with_name("dagster"))


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DAGSTER, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def test_definitions_validate(settings):
    proc = _run("definitions", "validate", "-w", "workspace.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_instance_is_postgres(settings):
    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage

    instance = DagsterInstance.get()
    assert isinstance(instance.run_storage, PostgresRunStorage)


@pytest.mark.parametrize("partition", ["2026-11-20-13:00"])
def test_materialize_user_metadata_partition(settings, postgres, partition):
    from dagster import AssetKey, DagsterInstance

    proc = _run("asset", "materialize", "--select", "user_metadata", "--partition", partition, "-m", "antenna_assets.definitions")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    with postgres.connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM user_metadata_hourly WHERE date = '2026-11-20 13:00'")
        assert cur.fetchone()[0] >= 20
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey("user_metadata"))
    assert event is not None and event.dagster_event.partition == partition
