"""Apache Superset, the serving layer's dashboards, as a service of the local stack.

Superset pins libraries that clash with Dagster's (SQLAlchemy 1.4 vs 2.1, pandas 2.1), so it lives in
its own virtual environment, `<stack>/superset/venv`, installed on first use from the constraints file
committed next to the dashboards. Its metadata is a database of the stack's PostgreSQL; its secret key
and admin password are generated stack secrets. Every start imports the dashboards from the repository.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from antenna_assets.serving.migration import migrate
from antenna_assets.serving.roles import ensure_reader_role
from antenna_assets.serving.superset_bundle import DASHBOARD_SLUG, DATABASE_FILE, SupersetClient, bundle_zip, load_assets
from antenna_assets.settings import Settings, child_environment
from antenna_assets.errors import StackError
from antenna_assets.postgres import ensure_database, ensure_owned_database, redacted, transaction
from antenna_assets.stack.process import ServerProcess, port_open, tail
from antenna_assets.stack.postgres import SUPERSET_ROLE
from antenna_assets.stack.secrets import secrets_dir, stack_secret, write_private_file

SUPERSET_VERSION = "6.1.0"
CONSTRAINTS = Path(__file__).resolve().parents[1] / "serving" / "superset-constraints.txt"
# Superset's wheel does not declare rich and cachetools; psycopg2 is for PostgreSQL (metadata and data).
REQUIREMENTS = (f"apache-superset=={SUPERSET_VERSION}", "rich", "cachetools", "psycopg2-binary", "gunicorn")
ADMIN = "admin"
SECRET_KEY = "superset_secret_key"
ADMIN_PASSWORD = "superset_admin_password"

_CONFIG = """# Written by antenna_assets.stack.superset; secrets are read from their files, never written here.
from pathlib import Path

SECRET_KEY = Path({secret_key_file!r}).read_text().strip()
SQLALCHEMY_DATABASE_URI = {metadata_url!r}
# Charts always show the tables as they are now: the dashboard refreshes itself every minute.
DATA_CACHE_CONFIG = {{"CACHE_TYPE": "NullCache"}}
"""

# Run inside Superset's venv: the admin user exists with the password of the stack secret.
_ENSURE_ADMIN = """
import sys
from pathlib import Path
from superset.app import create_app

app = create_app()
with app.app_context():
    from superset import db, security_manager as sm
    password = Path(sys.argv[1]).read_text().strip()
    user = sm.find_user(username=sys.argv[2])
    if user is None:
        if not sm.add_user(sys.argv[2], "Antenna", "Admin", "admin@antenna.local", sm.find_role("Admin"), password=password):
            sys.exit("could not create the admin user")
    else:
        sm.reset_password(user.id, password)
    db.session.commit()
"""


def dashboard_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.superset_port}/superset/dashboard/{DASHBOARD_SLUG}/"


class Superset(ServerProcess):
    name = "superset"
    stop_grace_seconds = 20

    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = settings.superset_port
        self.address = self.url = f"http://127.0.0.1:{self.port}"
        self.home = settings.stack_dir / "superset"
        self.venv = self.home / "venv"
        self.config_file = self.home / "superset_config.py"
        self.pid_file = self.home / "superset.pid"
        self.log_file = self.home / "superset.log"
        self.install_log = self.home / "install.log"

    @property
    def password_file(self) -> Path:
        return secrets_dir(self.settings) / ADMIN_PASSWORD

    def admin_password(self) -> str:
        return stack_secret(self.settings, ADMIN_PASSWORD)[0]

    def healthy(self, timeout: float = 3.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def install(self) -> None:
        """Create the venv and install the pinned Superset, unless this exact constraints file is installed."""
        marker = self.venv / ".antenna-constraints"
        digest = hashlib.sha256(CONSTRAINTS.read_bytes()).hexdigest()
        if marker.exists() and marker.read_text() == digest:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        print(f"installing Apache Superset {SUPERSET_VERSION} into {self.venv} (first use, about a minute)...",
              flush=True)
        with open(self.install_log, "w") as log:
            steps = ([sys.executable, "-m", "venv", "--clear", str(self.venv)],
                     [str(self.venv / "bin" / "python"), "-m", "pip", "install", "--upgrade", "pip"],
                     [str(self.venv / "bin" / "python"), "-m", "pip", "install", "-c", str(CONSTRAINTS), *REQUIREMENTS])
            for step in steps:
                if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode:
                    raise StackError(f"installing Apache Superset into {self.venv} failed ({self._install_error()}); "
                                     f"see {self.install_log}, fix pip's access to the package index and retry")
        marker.write_text(digest)

    def _install_error(self) -> str:
        """pip's first error line (the cause; the last one is its generic advice)."""
        lines = [line.strip() for line in self.install_log.read_text(errors="replace").splitlines() if line.strip()]
        return next((line for line in lines if line.startswith("ERROR:")), lines[-1] if lines else "no output")

    def _superset(self, *args: str) -> None:
        env = child_environment(SUPERSET_CONFIG_PATH=str(self.config_file), FLASK_APP="superset")
        with open(self.log_file, "ab") as log:
            proc = subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], env=env, stdout=log,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise StackError(f"`{' '.join(args[:3])}` failed; last lines of {self.log_file}:\n{tail(self.log_file)}")

    def _prepare(self) -> str | None:
        """Metadata database, secrets, config, schema, roles and admin; returns the admin password when
        it was generated now."""
        metadata_url = self._metadata_database()
        stack_secret(self.settings, SECRET_KEY)
        password, created = stack_secret(self.settings, ADMIN_PASSWORD)
        self.write_config(metadata_url)
        # `db upgrade` and `init` take ~10 s: once per metadata database and Superset version.
        initialized = self.home / ".initialized"
        stamp = f"{SUPERSET_VERSION} {redacted(metadata_url)}"
        if not initialized.exists() or initialized.read_text() != stamp or created:
            self._superset("superset", "db", "upgrade")
            self._superset("superset", "init")
            self._superset("python", "-c", _ENSURE_ADMIN, str(self.password_file), ADMIN)
            initialized.write_text(stamp)
        return password if created else None

    def write_config(self, metadata_url: str) -> None:
        """superset_config.py, owner-only from its creation (its database URL may carry a password)."""
        self.home.mkdir(parents=True, exist_ok=True)
        write_private_file(self.config_file, _CONFIG.format(
            secret_key_file=str(secrets_dir(self.settings) / SECRET_KEY), metadata_url=metadata_url))

    def _metadata_database(self) -> str:
        """Superset's metadata database, owned by its own role on the embedded server (logging in
        through the stack's passfile), or the external server's user's; returns its URL."""
        if self.settings.external_postgres:
            ensure_database(self.settings.postgres_url_for("postgres"), self.settings.superset_db)
            return self.settings.postgres_url_for(self.settings.superset_db)
        ensure_owned_database(self.settings.postgres_url_for("postgres", self.settings.postgres_admin_url),
                              self.settings.superset_db, SUPERSET_ROLE)
        return self.settings.postgres_url_for(self.settings.superset_db, self.settings.embedded_url(SUPERSET_ROLE))

    def up(self) -> str:
        if self.pid() is not None and self.healthy():
            self.import_dashboards()
            return f"superset already running (pid {self.pid()}) at {self.url}"
        if port_open(self.port):
            raise StackError(f"port {self.port} (Superset) is already in use by another process: stop it, or choose "
                             "another port with ANTENNA_SUPERSET_PORT")
        if self.pid() is not None:
            raise StackError(f"superset (pid {self.pid()}) runs but does not answer at {self.url}; see {self.log_file}, "
                             "or run `antenna stack down` and retry")
        self.install()
        new_password = self._prepare()
        env = child_environment(SUPERSET_CONFIG_PATH=str(self.config_file))
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [str(self.venv / "bin" / "gunicorn"), "--bind", f"127.0.0.1:{self.port}", "--workers", "1",
                 "--worker-class", "gthread", "--threads", "8", "--timeout", "120", "superset.app:create_app()"],
                cwd=self.home, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        self._await_healthy(process, 180, interval=1.0)
        try:
            self.import_dashboards()
        except StackError:
            self.down()
            raise
        message = f"superset started (pid {process.pid}) at {self.url}, user {ADMIN}"
        if new_password:
            # Not printed: terminals and CI keep their output in logs.
            message += (f"\nsuperset admin password generated into {self.password_file} (mode 0600; "
                        "or `antenna stack env --show-secrets`)")
        return message

    def import_dashboards(self) -> None:
        """Grant the reader, then import the repository's dashboards (serving/superset_assets) into this
        running Superset."""
        settings = self.settings
        with transaction(settings.postgres_admin_url) as conn:
            migrate(conn)  # the views the reader is granted must exist
        reader_url = ensure_reader_role(settings, private_databases=(settings.dagster_db, settings.superset_db))
        client = SupersetClient(self.url, ADMIN, self.admin_password())
        client.import_assets(bundle_zip(load_assets(), reader_url), {DATABASE_FILE: unquote(urlparse(reader_url).password)})

    @property
    def dashboard_url(self) -> str:
        return dashboard_url(self.settings)

    def login_hint(self) -> str:
        return f"log in to {self.url} as {ADMIN}; the password is in {self.password_file} (cat it)"
