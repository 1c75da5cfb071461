"""Live simulated traffic in the background (`antenna simulate` in live mode), for the demo."""

from __future__ import annotations

import subprocess
import sys

from antenna_assets.settings import Settings
from antenna_assets.stack.process import PidFileService


class LiveTraffic(PidFileService):
    name = "live traffic"
    stop_grace_seconds = 15

    def __init__(self, settings: Settings):
        self.settings = settings
        self.pid_file = settings.stack_dir / "simulator.pid"
        self.log_file = settings.stack_dir / "simulator.log"

    def up(self, interval_seconds: float, duration_seconds: float) -> str:
        if self.pid() is not None:
            return f"live traffic already running (pid {self.pid()})"
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "antenna_assets.cli", "simulate", "--interval", str(interval_seconds),
                 "--duration", str(duration_seconds), "--no-progress"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid_file.write_text(str(process.pid))
        return (f"live traffic started (pid {process.pid}): one message per user every {interval_seconds:g} s "
                f"for {duration_seconds / 60:g} min")

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        return pid is not None, f"live traffic: {'pid ' + str(pid) if pid else 'not running'}"
