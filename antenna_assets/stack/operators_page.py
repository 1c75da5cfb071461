"""The operators' web page (`antenna operators serve`) in the background."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
import urllib.request

from antenna_assets.settings import Settings, child_environment
from antenna_assets.stack.env import stack_environment
from antenna_assets.errors import StackError
from antenna_assets.stack.process import ServerProcess, port_open


class OperatorsPage(ServerProcess):
    name = "operators page"
    stop_grace_seconds = 10

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.stack_dir / "operators"
        self.pid_file = self.home / "operators-page.pid"
        self.log_file = self.home / "operators-page.log"
        # Probed on loopback when it listens on every interface.
        self._probe_host = "127.0.0.1" if settings.operators_host in ("0.0.0.0", "::") else settings.operators_host
        self.address = self.url = f"http://{self._probe_host}:{settings.operators_port}"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def up(self) -> str:
        from antenna_assets.serving.operators.config import prepare_database

        if self.pid() is not None:
            return f"operators page already running (pid {self.pid()}) at {self.url}"
        if port_open(self.settings.operators_port, self._probe_host):
            raise StackError(f"port {self.settings.operators_port} is already in use: stop that process "
                             "or choose another port with ANTENNA_OPERATORS_PORT")
        # Here rather than in the child, so a database problem is this command's one-line error.
        prepare_database(self.settings)
        self.home.mkdir(parents=True, exist_ok=True)
        # The child reads these settings, not this process's: pass the ones this service was given.
        env = child_environment(**stack_environment(self.settings), ANTENNA_OPERATORS_HOST=self.settings.operators_host,
                                ANTENNA_OPERATORS_PORT=str(self.settings.operators_port))
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen([sys.executable, "-m", "antenna_assets.cli", "operators", "serve"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        self._await_healthy(process, 30, interval=0.2)
        return f"operators page started (pid {process.pid}) at {self.url}"
