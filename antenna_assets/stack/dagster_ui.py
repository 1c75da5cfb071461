"""`dg dev` (webserver + daemon, so the sensors run) in the background, for the demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from antenna_assets.settings import Settings, child_environment
from antenna_assets.stack.env import stack_environment
from antenna_assets.errors import StackError
from antenna_assets.stack.process import PidFileService, port_open, stop_pid, tail, wait_until

REPO = Path(__file__).resolve().parents[2]


class DagsterUI(PidFileService):
    name = "dagster UI"
    stop_grace_seconds = 30

    def __init__(self, settings: Settings, port: int | None = None):
        self.settings = settings
        self.port = port or settings.ui_port
        self.home = settings.stack_dir / "dagster"
        self.pid_file = self.home / "dagster-dev.pid"
        self.log_file = self.home / "dagster-dev.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self, automation: bool = True) -> str:
        if self.pid() is not None:
            return f"dagster UI already running (pid {self.pid()}) at {self.url}"
        if port_open(self.port):
            raise StackError(f"port {self.port} is already in use: stop that process or set ANTENNA_UI_PORT")
        env = child_environment(**stack_environment(self.settings))
        if automation:
            # Sensors default to running: the stream is kept alive and closed hours are computed.
            env.update(ANTENNA_AUTOSTART_STREAMING="1", ANTENNA_AUTOMATION="1")
        # dg finds the project (pyproject.toml's [tool.dg]) from its folder and warns unless this
        # virtualenv is the active one.
        env["VIRTUAL_ENV"] = sys.prefix
        dg = str(Path(sys.executable).with_name("dg"))
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen([dg, "dev", "--host", "127.0.0.1", "--port", str(self.port)], cwd=REPO, env=env,
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        if not wait_until(lambda: port_open(self.port), 120, interval=0.5, abort=lambda: process.poll() is not None):
            stop_pid(process.pid)
            raise StackError(f"the Dagster UI did not start; last lines of {self.log_file}:\n{tail(self.log_file)}")
        return f"dagster UI started (pid {process.pid}) at {self.url}"

    def _stop(self, pid: int) -> None:
        # Its descendants are the webserver, the daemon and the runs they launched (the stream):
        # SIGTERM lets the stream stop its query cleanly; what is left after the grace is killed.
        stop_pid(pid, self.stop_grace_seconds, with_descendants=True)

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if pid is None:
            return False, "dagster UI: not running"
        return port_open(self.port), f"dagster UI: pid {pid} at {self.url}"
