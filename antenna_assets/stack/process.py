"""Small helpers shared by the stack's services: pid files, port probes, waiting."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Callable

from antenna_assets.errors import StackError


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); it is not alive for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.25,
               abort: Callable[[], bool] | None = None) -> bool:
    """Poll until `predicate()`; give up after `timeout` seconds or as soon as `abort()` is true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if abort is not None and abort():
            return False
        time.sleep(interval)
    return predicate()


def stop_pid(pid: int, grace_seconds: float = 30.0) -> None:
    """SIGTERM, wait for a clean exit, SIGKILL if it does not come."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if not wait_until(lambda: not pid_alive(pid), grace_seconds):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        wait_until(lambda: not pid_alive(pid), 5)
    try:  # reap it if it is our child
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class PidFileService:
    """A background process of the stack, found through its pid file (`self.pid_file`)."""

    name: str  # in messages: "kafka stopped (pid 42)"
    stop_grace_seconds: float = 30.0
    pid_file: Path

    def pid(self) -> int | None:
        pid = read_pid(self.pid_file)
        return pid if pid_alive(pid) else None

    def down(self) -> str:
        pid = self.pid()
        if pid is not None:
            self._stop(pid)
        self.pid_file.unlink(missing_ok=True)
        return f"{self.name} not running" if pid is None else f"{self.name} stopped (pid {pid})"

    def _stop(self, pid: int) -> None:
        stop_pid(pid, grace_seconds=self.stop_grace_seconds)


class ServerProcess(PidFileService):
    """A PidFileService that answers requests at `address` once `healthy()`."""

    address: str  # in messages: "kafka: healthy (pid 42, 127.0.0.1:9092)"
    log_file: Path

    def healthy(self) -> bool:
        raise NotImplementedError

    def _await_healthy(self, process, timeout: float, interval: float, more_logs: tuple[Path, ...] = ()) -> None:
        """Wait for the just-started `process` to answer; if it exits or never answers, stop it, forget
        its pid and raise with the end of its logs."""
        if wait_until(self.healthy, timeout, interval=interval, abort=lambda: process.poll() is not None):
            return
        if process.poll() is None:
            stop_pid(process.pid)
        self.pid_file.unlink(missing_ok=True)
        logs = "\n".join(tail(log) for log in (self.log_file, *more_logs))
        raise StackError(f"{self.name} did not start; last lines of {self.log_file}:\n{logs}")

    def status(self) -> tuple[bool, str]:
        pid = self.pid()
        if pid is None:
            return False, f"{self.name}: not running"
        if self.healthy():
            return True, f"{self.name}: healthy (pid {pid}, {self.address})"
        return False, f"{self.name}: running (pid {pid}) but not answering on {self.address}"
