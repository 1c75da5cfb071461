"""A real single-node Apache Kafka broker in KRaft mode, run with the machine's Java."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from antenna_assets.settings import Settings
from antenna_assets.stack import jars
from antenna_assets.errors import StackError
from antenna_assets.stack.process import ServerProcess, port_open, wait_until

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = WARN
logger.apache.name = org.apache.kafka
logger.apache.level = WARN
"""


def _server_properties(settings: Settings, data_dir: Path) -> str:
    host = "127.0.0.1"
    return "\n".join([
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{settings.kafka_controller_port}",
        f"listeners=PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}",
        f"advertised.listeners=PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir}",
        f"num.partitions={settings.topic_partitions}",
        "auto.create.topics.enable=false",
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "group.initial.rebalance.delay.ms=0",
        # Room for benchmark preloads without filling the disk of a developer machine.
        "log.retention.bytes=8589934592",
        "message.max.bytes=10485760",
        "",
    ])


class KafkaBroker(ServerProcess):
    name = "kafka"
    stop_grace_seconds = 45

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.stack_dir / "kafka"
        self.data_dir = self.home / "data"
        self.pid_file = self.home / "kafka.pid"
        self.log_file = self.home / "kafka.log"
        self.address = settings.kafka_bootstrap

    def healthy(self, timeout: float = 3.0) -> bool:
        from confluent_kafka.admin import AdminClient

        if not port_open(self.settings.kafka_port):
            return False
        try:
            AdminClient({"bootstrap.servers": self.settings.kafka_bootstrap}).list_topics(timeout=timeout)
            return True
        except Exception:  # noqa: BLE001 - any failure means "not answering yet"
            return False

    def up(self) -> str:
        if self.pid() is not None:
            if wait_until(self.healthy, 60):
                ensure_topic(self.settings)
                return f"kafka already running (pid {self.pid()}) on {self.address}"
            raise StackError(f"kafka (pid {self.pid()}) runs but does not answer; see {self.log_file}, "
                             "or run `antenna stack down` and retry")
        java = shutil.which("java")
        if java is None:
            raise StackError("Java is not installed: the Kafka broker needs a JRE 17+ (apt-get install openjdk-17-jre-headless)")
        for port in (self.settings.kafka_port, self.settings.kafka_controller_port):
            if port_open(port):
                raise StackError(f"port {port} is already in use by another process: stop it, or choose other ports "
                                 "with ANTENNA_KAFKA_PORT (the controller uses the next port)")
        classpath = os.pathsep.join(str(p) for p in jars.kafka_jars(self.settings.jars_dir))
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        config.write_text(_server_properties(self.settings, self.data_dir))
        log4j = self.home / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.home / "server.log"))
        if not (self.data_dir / "meta.properties").exists():
            proc = subprocess.run([java, "-cp", classpath, f"-Dlog4j2.configurationFile={log4j}", "kafka.tools.StorageTool",
                                   "format", "-t", _cluster_id(), "-c", str(config)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise StackError(f"formatting Kafka storage failed: {(proc.stderr or proc.stdout).strip()[-400:]}")
        heap = os.environ.get("ANTENNA_KAFKA_HEAP", "1g")
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath, "kafka.Kafka", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        self._await_healthy(process, 90, interval=0.5, more_logs=(self.home / "server.log",))
        ensure_topic(self.settings)
        return f"kafka started (pid {process.pid}) on {self.address}"


def _cluster_id() -> str:
    """A KRaft cluster id as Kafka's own Uuid.randomUuid() makes it: URL-safe base64 of a random UUID,
    never starting with '-', which the storage tool would take for an option (1 fresh stack in 64 failed)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def ensure_topic(settings: Settings, timeout: float = 30.0) -> None:
    """Create the devices topic with the configured partition count unless it exists."""
    from confluent_kafka.admin import AdminClient, NewTopic
    from confluent_kafka import KafkaException

    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    try:
        topics = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise StackError(f"Kafka at {settings.kafka_bootstrap} does not answer ({exc}); start it with `antenna stack up` "
                         "or set ANTENNA_KAFKA_BOOTSTRAP") from None
    if settings.topic in topics:
        return
    futures = admin.create_topics([NewTopic(settings.topic, num_partitions=settings.topic_partitions, replication_factor=1)])
    for future in futures.values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    # The controller acknowledges the creation before the broker's metadata shows the topic, and a
    # fresh broker lags there long enough for the next reader to miss it.
    if not wait_until(lambda: settings.topic in admin.list_topics(timeout=timeout).topics, timeout, interval=0.05):
        raise StackError(f"Kafka at {settings.kafka_bootstrap} created topic {settings.topic!r} but does not list it "
                         f"after {timeout:g} s")
