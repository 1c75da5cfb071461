"""A Spark standalone cluster from pyspark's own jars: a master and `spark_workers` workers, each a JVM
started with the wheel's `bin/spark-class` (it ships no `sbin/start-*.sh` scripts).

With `ANTENNA_SPARK_WORKERS=N` (N > 0) `antenna stack up` starts them and every Spark session of the
product (stream, assets, demo) connects to `spark://127.0.0.1:<spark_master_port>` (settings.py), so its
executors are JVMs of their own, as on a real cluster: whatever they read or write (the lake, the
streaming checkpoints) must be on storage they all see.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pyspark

from antenna_assets.errors import StackError
from antenna_assets.settings import Settings, child_environment
from antenna_assets.stack.process import ServerProcess, port_open, wait_until

MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
SPARK_HOME = Path(pyspark.__file__).parent


def _spark_class(settings: Settings, main_class: str, arguments: list[str], home: Path, log_file: Path,
                 pid_file: Path) -> subprocess.Popen:
    if shutil.which("java") is None:
        raise StackError("Java is not installed: Spark's master and workers need a JRE 17+ "
                         "(apt-get install openjdk-17-jre-headless)")
    home.mkdir(parents=True, exist_ok=True)
    # Its own daemon memory, not the driver's: a master or worker process needs little (Spark's default 1g).
    env = child_environment(SPARK_HOME=str(SPARK_HOME), SPARK_DAEMON_MEMORY=settings.spark_daemon_memory,
                            SPARK_LOG_DIR=str(home), SPARK_WORKER_DIR=str(home / "work"),
                            SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1")
    with open(log_file, "ab") as log:
        process = subprocess.Popen([str(SPARK_HOME / "bin" / "spark-class"), main_class, *arguments], env=env,
                                   cwd=home, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    pid_file.write_text(str(process.pid))
    return process


class SparkMaster(ServerProcess):
    name = "spark master"
    stop_grace_seconds = 15

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.stack_dir / "spark" / "master"
        self.pid_file = self.home / "master.pid"
        self.log_file = self.home / "master.log"
        self.address = settings.spark_cluster_url
        self.ui_url = f"http://127.0.0.1:{settings.spark_master_ui_port}"

    def state(self, timeout: float = 3.0) -> dict | None:
        """The master's own report (its web UI's /json/): status, workers with their cores and state."""
        try:
            with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=timeout) as response:
                return json.load(response)
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def alive_workers(self) -> list[dict]:
        state = self.state() or {}
        return [w for w in state.get("workers", []) if w.get("state") == "ALIVE"]

    def healthy(self) -> bool:
        return port_open(self.settings.spark_master_port) and (self.state() or {}).get("status") == "ALIVE"

    def up(self) -> str:
        if self.pid() is not None:
            if wait_until(self.healthy, 30):
                return f"spark master already running (pid {self.pid()}) at {self.address}"
            raise StackError(f"the spark master (pid {self.pid()}) runs but does not answer; see {self.log_file}")
        for port in (self.settings.spark_master_port, self.settings.spark_master_ui_port):
            if port_open(port):
                raise StackError(f"port {port} is already in use by another process: stop it, or set "
                                 "ANTENNA_SPARK_MASTER_PORT (its web UI uses the next port)")
        process = _spark_class(self.settings, MASTER_CLASS,
                               ["--host", "127.0.0.1", "--port", str(self.settings.spark_master_port),
                                "--webui-port", str(self.settings.spark_master_ui_port)],
                               self.home, self.log_file, self.pid_file)
        self._await_healthy(process, 60, interval=0.5)
        return f"spark master started (pid {process.pid}) at {self.address}, web UI {self.ui_url}"


class SparkWorker(ServerProcess):
    stop_grace_seconds = 15

    def __init__(self, settings: Settings, index: int, master: SparkMaster):
        self.settings = settings
        self.index = index
        self.master = master
        self.name = f"spark worker {index}"
        self.home = settings.stack_dir / "spark" / f"worker-{index}"
        self.pid_file = self.home / "worker.pid"
        self.log_file = self.home / "worker.log"
        self.ui_port = settings.spark_master_ui_port + 1 + index
        self.address = f"127.0.0.1 (web UI {self.ui_port})"

    def registration(self) -> dict | None:
        """This worker's entry in the master's report, while ALIVE there."""
        return next((w for w in self.master.alive_workers() if w.get("webuiaddress", "").endswith(f":{self.ui_port}")),
                    None)

    def healthy(self) -> bool:
        return self.registration() is not None

    def up(self) -> str:
        if self.pid() is not None:
            if wait_until(self.healthy, 30):
                return f"{self.name} already running (pid {self.pid()})"
            raise StackError(f"{self.name} (pid {self.pid()}) runs but is not registered; see {self.log_file}")
        if port_open(self.ui_port):
            raise StackError(f"port {self.ui_port} (web UI of {self.name}) is already in use by another process")
        cores, memory = self.settings.spark_worker_cores, self.settings.spark_worker_memory
        process = _spark_class(self.settings, WORKER_CLASS,
                               ["--host", "127.0.0.1", "--webui-port", str(self.ui_port), "--cores", str(cores),
                                "--memory", memory, "--work-dir", str(self.home / "work"), self.settings.spark_cluster_url],
                               self.home, self.log_file, self.pid_file)
        self._await_healthy(process, 60, interval=0.5)
        return f"{self.name} started (pid {process.pid}): {cores} core(s), {memory}"

    def status(self) -> tuple[bool, str]:
        ok, line = super().status()
        registration = self.registration() if ok else None
        if registration is None:
            return ok, line
        return ok, (f"{self.name}: healthy (pid {self.pid()}), {registration['cores']} core(s) "
                    f"({registration['coresused']} in use), {registration['memory']} MiB")


class SparkCluster:
    """The master and its `spark_workers` workers, as one service of the stack."""

    name = "spark cluster"

    def __init__(self, settings: Settings):
        self.master = SparkMaster(settings)
        self.workers = [SparkWorker(settings, i, self.master) for i in range(settings.spark_workers)]
        # Workers of an earlier `stack up` with more of them: stopped with the stack too.
        stale = sorted(p for p in (settings.stack_dir / "spark").glob("worker-*") if p.is_dir())
        self._all_workers = [*self.workers, *(SparkWorker(settings, int(p.name.split("-")[1]), self.master)
                                               for p in stale if int(p.name.split("-")[1]) >= settings.spark_workers)]

    def up(self) -> str:
        lines = [self.master.up(), *(worker.up() for worker in self.workers)]
        return "\n".join(lines)

    def down(self) -> str:
        return "\n".join([*(worker.down() for worker in self._all_workers), self.master.down()])

    def status(self) -> tuple[bool, str]:
        reports = [self.master.status(), *(worker.status() for worker in self.workers)]
        return all(ok for ok, _ in reports), "\n".join(line for _, line in reports)
