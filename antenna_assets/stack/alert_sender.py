"""The alert sender (`antenna alerts deliver --loop`) in the background, started with the stack when an alert
channel is configured (README: Alerts, the sender)."""

from __future__ import annotations

import subprocess
import sys

from antenna_assets.alerts.cli import READY_LINE
from antenna_assets.errors import StackError
from antenna_assets.settings import Settings, child_environment, env_name
from antenna_assets.stack.env import stack_environment
from antenna_assets.stack.process import PidFileService, stop_pid, tail, wait_until


def alert_environment(settings: Settings) -> dict[str, str]:
    """The alert settings as a child process reads them: it gets the ones this process was given."""
    return {env_name(name): str(int(value)) if isinstance(value, bool) else str(value)
            for name, value in settings.model_dump().items() if name.startswith("alerts_")}


class AlertSender(PidFileService):
    name = "alert sender"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.stack_dir / "alerts"
        self.pid_file = self.home / "alert-sender.pid"
        self.log_file = self.home / "alert-sender.log"
        # It finishes the delivery in hand when asked to stop: one SMTP session step or webhook request.
        self.stop_grace_seconds = settings.alerts_send_timeout_seconds + settings.alerts_poll_seconds + 5

    @property
    def configured(self) -> bool:
        return bool(self.settings.alerts_smtp_host or self.settings.alerts_webhook_url)

    def up(self) -> str:
        if not self.configured:
            return "alert sender: not started, no alert channel is configured"
        if self.pid() is not None:
            return f"alert sender already running (pid {self.pid()}); its log: {self.log_file}"
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            started_at = log.tell()
            env = child_environment(**stack_environment(self.settings), **alert_environment(self.settings))
            process = subprocess.Popen([sys.executable, "-m", "antenna_assets.cli", "alerts", "deliver", "--loop"],
                                       env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self.pid_file.write_text(str(process.pid))

        def ready() -> bool:
            with open(self.log_file, "rb") as log:
                log.seek(started_at)
                return READY_LINE.encode() in log.read()

        # A configuration or database problem ends it before it is ready: this command's error then.
        wait_until(ready, 30, abort=lambda: process.poll() is not None)
        if process.poll() is not None or not ready():
            stop_pid(process.pid)
            self.pid_file.unlink(missing_ok=True)
            raise StackError(f"the alert sender did not start; last lines of {self.log_file}:\n{tail(self.log_file)}")
        return f"alert sender started (pid {process.pid}); its log: {self.log_file}"

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if pid is None:
            return False, f"alert sender: {'not running' if self.configured else 'off (no alert channel configured)'}"
        return True, f"alert sender: running (pid {pid}), log {self.log_file}"
