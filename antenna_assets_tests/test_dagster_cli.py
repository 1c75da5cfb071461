"""The code location loads and assets materialize through Dagster's own command lines, `dg` (the
project's: pyproject.toml's [tool.dg]) and `dagster` (workspace.yaml, `-m`: what CI scripts use), against
the PostgreSQL-backed instance of dagster.yaml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
DAGSTER = str(Path(sys.executable).with_name("dagster"))
DG = str(Path(sys.executable).with_name("dg"))
# What Dagster prints for a superseded or deprecated command or API.
OUTDATED = re.compile(r"supersed|deprecat", re.IGNORECASE)


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([DAGSTER, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=os.environ.copy())


def _dg(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`dg` as the README runs it: in the project's folder, with its virtualenv the active one."""
    proc = subprocess.run([DG, *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {}), "VIRTUAL_ENV": sys.prefix})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def test_dg_check_defs_loads_the_project_without_an_outdated_warning(settings):
    proc = _dg("check", "defs")
    output = proc.stdout + proc.stderr
    assert "All definitions loaded successfully." in output
    assert not OUTDATED.search(output) and "virtual environment does not match" not in output, output


def test_workspace_yaml_is_a_valid_workspace(settings):
    proc = _run("definitions", "validate", "-w", "workspace.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "code location antenna_assets" in proc.stdout + proc.stderr  # the name dg gives it too


def test_instance_is_postgres(settings):
    from dagster import DagsterInstance
    from dagster_postgres import PostgresRunStorage

    instance = DagsterInstance.get()
    assert isinstance(instance.run_storage, PostgresRunStorage)


def test_materialize_user_metadata_partition(settings, serving_db):
    """On a fresh serving database the partition's snapshot is exactly the provisioned users, with an
    operator's edit made before it."""
    from dagster import AssetKey, DagsterInstance

    from antenna_assets.sources.users import PROVISIONED_USERS
    from antenna_assets_tests.truth import execute, query

    execute(serving_db, "UPDATE user_metadata SET quota = 123 WHERE id = %s", (PROVISIONED_USERS[0].id,))
    partition = "2026-11-20-13:00"
    proc = subprocess.run([DAGSTER, "asset", "materialize", "--select", "user_metadata", "--partition", partition, "-m",
                           "antenna_assets.definitions"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ANTENNA_POSTGRES_URL": serving_db})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    snapshot = query(serving_db, "SELECT id, name, email, quota FROM user_metadata_hourly WHERE date = '2026-11-20 13:00' "
                                 "ORDER BY id")
    provisioned = [(u.id, u.name, u.email, 123 if n == 0 else u.quota) for n, u in enumerate(PROVISIONED_USERS)]
    assert snapshot == provisioned
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey("user_metadata"))
    assert event is not None and event.dagster_event.partition == partition


def test_dg_launch_materializes_a_partition_without_an_outdated_warning(settings, serving_db):
    from dagster import AssetKey, DagsterInstance

    from antenna_assets.sources.users import PROVISIONED_USERS
    from antenna_assets_tests.truth import query

    partition = "2026-11-21-07:00"
    proc = _dg("launch", "--assets", "user_metadata", "--partition", partition, env={"ANTENNA_POSTGRES_URL": serving_db})
    assert not OUTDATED.search(proc.stdout + proc.stderr), proc.stdout[-2000:] + proc.stderr[-3000:]
    snapshot = query(serving_db, "SELECT id FROM user_metadata_hourly WHERE date = '2026-11-21 07:00' ORDER BY id")
    assert snapshot == sorted((u.id,) for u in PROVISIONED_USERS)
    event = DagsterInstance.get().get_latest_materialization_event(AssetKey("user_metadata"))
    assert event is not None and event.dagster_event.partition == partition


def test_dg_dev_serves_the_project_without_an_outdated_warning(settings):
    """The demo's UI (`dg dev`: webserver and daemon) loads the code location as `antenna_assets`; its
    log has no superseded or deprecated warning."""
    import json
    import socket
    import time
    import urllib.request

    from antenna_assets.stack.dagster_ui import DagsterUI

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ui = DagsterUI(settings, port=port)
    start = ui.log_file.stat().st_size if ui.log_file.exists() else 0
    ui.up(automation=False)
    try:
        query = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus } } } }"})
        loaded = []
        for _ in range(120):
            request = urllib.request.Request(f"{ui.url}/graphql", data=query.encode(),
                                             headers={"Content-Type": "application/json"})
            entries = json.load(urllib.request.urlopen(request, timeout=10))["data"]["workspaceOrError"]["locationEntries"]
            loaded = [e["name"] for e in entries if e["loadStatus"] == "LOADED"]
            if loaded:
                break
            time.sleep(1)
        assert loaded == ["antenna_assets"]
        time.sleep(5)  # the daemon's first iterations
    finally:
        ui.down()
    with open(ui.log_file, errors="replace") as log:
        log.seek(start)
        output = log.read()
    assert not OUTDATED.search(output) and "virtual environment does not match" not in output, output[-3000:]
