"""A Google Cloud Storage API emulator (fake-gcs-server) for tests and local runs.

The server is built from its Go module with the machine's Go on first use and cached in
`<stack>/bin`; no source or binary of it is kept in this repository. It serves the JSON API over
plain HTTP on 127.0.0.1 and keeps objects in memory: they are gone when it stops. (Its filesystem
backend mishandles the `dir/` placeholder objects Hadoop's connector makes: renames into them fail.)
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from antenna_assets.lake.gcs import gcs_client
from antenna_assets.settings import Settings, child_environment
from antenna_assets.errors import StackError
from antenna_assets.stack.process import ServerProcess, port_open, wait_until

FAKE_GCS_SERVER_MODULE = "github.com/fsouza/fake-gcs-server"
FAKE_GCS_SERVER_VERSION = "v1.56.1"  # its go.mod needs Go >= 1.26
DEFAULT_PROJECT = "antenna-local"


class GcsEmulator(ServerProcess):
    name = "gcs emulator"
    stop_grace_seconds = 10

    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = settings.gcs_emulator_port
        self.endpoint = self.address = f"http://127.0.0.1:{self.port}"
        self.binary = settings.stack_dir / "bin" / "fake-gcs-server"
        self.home = settings.stack_dir / "gcs"
        self.pid_file = self.home / "fake-gcs-server.pid"
        self.log_file = self.home / "fake-gcs-server.log"

    def install(self) -> Path:
        """`go install` the pinned version unless that binary is already cached."""
        self.binary.parent.mkdir(parents=True, exist_ok=True)
        # Stacks that share this folder (the test suite's two lanes) may ask at once: one builds, the others wait.
        with open(self.binary.with_name("fake-gcs-server.lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            return self._install()

    def _install(self) -> Path:
        marker = self.binary.with_name("fake-gcs-server.version")
        if self.binary.exists() and marker.exists() and marker.read_text() == FAKE_GCS_SERVER_VERSION:
            return self.binary
        go = shutil.which("go")
        if go is None:
            raise StackError("Go is not installed: the GCS emulator (fake-gcs-server) is built with it. "
                             "Install Go 1.26+ and retry.")
        # GOTOOLCHAIN=local: fail with the version message rather than fetch another Go toolchain.
        env = child_environment(GOBIN=str(self.binary.parent), GOTOOLCHAIN="local")
        proc = subprocess.run([go, "install", f"{FAKE_GCS_SERVER_MODULE}@{FAKE_GCS_SERVER_VERSION}"],
                              env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise StackError(f"building fake-gcs-server {FAKE_GCS_SERVER_VERSION} with {go} failed: "
                             f"{proc.stderr.strip()[-400:]}")
        marker.write_text(FAKE_GCS_SERVER_VERSION)
        return self.binary

    def healthy(self, timeout: float = 2.0) -> bool:
        try:
            with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def up(self) -> str:
        if self.pid() is not None:
            if wait_until(self.healthy, 30):
                return f"gcs emulator already running (pid {self.pid()}) on {self.endpoint}"
            raise StackError(f"gcs emulator (pid {self.pid()}) runs but does not answer; see {self.log_file}")
        if port_open(self.port):
            raise StackError(f"port {self.port} is already in use by another process: stop it, or choose another "
                             "port with ANTENNA_GCS_EMULATOR_PORT (and ANTENNA_GCS_ENDPOINT to match)")
        binary = self.install()
        self.home.mkdir(parents=True, exist_ok=True)
        address = f"127.0.0.1:{self.port}"
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                # public-host / external-url: resumable-upload and media links must point back here.
                [str(binary), "-scheme", "http", "-host", "127.0.0.1", "-port", str(self.port),
                 "-backend", "memory",
                 "-public-host", address, "-external-url", self.endpoint, "-log-level", "warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        self._await_healthy(process, 30, interval=0.2)
        return f"gcs emulator started (pid {process.pid}) on {self.endpoint}"

    def ensure_bucket(self, name: str) -> None:
        """Create bucket `name` on the emulator unless it exists (real buckets are made by their owners)."""
        client = gcs_client(self.settings.replace(gcs_endpoint=self.endpoint,
                                    gcs_project=self.settings.gcs_project or DEFAULT_PROJECT))
        if client.lookup_bucket(name) is None:
            client.create_bucket(name)
