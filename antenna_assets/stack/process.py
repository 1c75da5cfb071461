"""Small helpers shared by the stack's services: pid files, port probes, waiting."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Callable

import psutil

from antenna_assets.errors import StackError


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts connections there: a connect says so for any owner of the port, where
    psutil's connection table would need root to see other users' sockets."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        # A zombie child still has its pid; it is not alive for our purposes.
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
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


def stop_pid(pid: int, grace_seconds: float = 30.0, with_descendants: bool = False) -> None:
    """SIGTERM (to the process and, if asked, everything it started), wait for a clean exit, SIGKILL
    what is left. Our own children are reaped."""
    try:
        process = psutil.Process(pid)
        processes = [process, *(process.children(recursive=True) if with_descendants else ())]
    except psutil.NoSuchProcess:
        return
    for each in processes:
        try:
            each.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(processes, timeout=grace_seconds)
    for each in left:
        try:
            each.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)


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
