"""A real single-node Apache Kafka broker in KRaft mode, run with the machine's Java."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path

from antenna_assets.kafka_client import (KafkaUnavailable, admin_client, jaas_config, librdkafka_config, sasl_password,
                                         topic_names)
from antenna_assets.settings import LOCAL_KAFKA_USER, Settings
from antenna_assets.stack import jars
from antenna_assets.errors import StackError
from antenna_assets.stack.process import ServerProcess, port_open, wait_until
from antenna_assets.stack.secrets import secrets_dir, stack_secret

LOCAL_SASL_MECHANISM = "SCRAM-SHA-512"

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


def _server_properties(settings: Settings, data_dir: Path, password: str) -> str:
    """The broker's configuration; with kafka_local_sasl its one client listener is SASL_PLAINTEXT
    (SCRAM-SHA-512), and the broker authenticates to itself as the product's user. The KRaft
    controller listener stays plaintext on loopback: SCRAM cannot protect it in KRaft."""
    host = "127.0.0.1"
    listener = "SASL_PLAINTEXT" if settings.kafka_local_sasl else "PLAINTEXT"
    lines = [
        "process.roles=broker,controller",
        "node.id=1",
        f"controller.quorum.voters=1@{host}:{settings.kafka_controller_port}",
        f"listeners={listener}://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}",
        f"advertised.listeners={listener}://{host}:{settings.kafka_port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={listener}",
        f"listener.security.protocol.map=CONTROLLER:PLAINTEXT,{listener}:{listener}",
    ]
    if settings.kafka_local_sasl:
        # Backslashes are escapes in a properties file; the JAAS line is read after that.
        jaas = jaas_config(LOCAL_SASL_MECHANISM, settings.kafka_sasl_username, password).replace("\\", "\\\\")
        lines += [
            f"sasl.enabled.mechanisms={LOCAL_SASL_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={LOCAL_SASL_MECHANISM}",
            f"listener.name.sasl_plaintext.{LOCAL_SASL_MECHANISM.lower()}.sasl.jaas.config={jaas}",
        ]
    return "\n".join(lines + [
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


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _java_argument(value: str) -> str:
    """One argument of a java @argfile, quoted."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
        if not port_open(self.settings.kafka_port):
            return False
        try:
            topic_names(librdkafka_config(self.settings), timeout)
            return True
        except KafkaUnavailable:  # not answering yet
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
        password = self._sasl_password()
        config = self.home / "server.properties"
        _write_private(config, _server_properties(self.settings, self.data_dir, password))
        log4j = self.home / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.home / "server.log"))
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, classpath, config, log4j, password)
        elif self.settings.kafka_local_sasl and self._sasl_user() != self.settings.kafka_sasl_username:
            raise StackError(f"Kafka's storage in {self.data_dir} was formatted without the SASL user "
                             f"{self.settings.kafka_sasl_username!r}: run `antenna stack down` and delete that folder "
                             "(its messages go with it), or use another ANTENNA_STACK_DIR")
        heap = self.settings.kafka_heap
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(
                [java, f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                 f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath, "kafka.Kafka", str(config)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.pid_file.write_text(str(process.pid))
        self._await_healthy(process, 90, interval=0.5, more_logs=(self.home / "server.log",))
        ensure_topic(self.settings)
        return f"kafka started (pid {process.pid}) on {self.address}" + (
            f" (SASL_PLAINTEXT, {LOCAL_SASL_MECHANISM}, user {self.settings.kafka_sasl_username!r})"
            if self.settings.kafka_local_sasl else "")

    @property
    def _sasl_user_file(self) -> Path:
        return self.home / "sasl-user"

    def _sasl_user(self) -> str | None:
        try:
            return self._sasl_user_file.read_text().strip()
        except OSError:
            return None

    def _sasl_password(self) -> str:
        """The product user's password with kafka_local_sasl (generated into the stack's secrets on
        first use, unless the settings name another); empty without."""
        if not self.settings.kafka_local_sasl:
            return ""
        secret = f"kafka-{LOCAL_KAFKA_USER}"
        if Path(self.settings.kafka_sasl_password_file) == secrets_dir(self.settings) / secret:
            stack_secret(self.settings, secret)
        return sasl_password(self.settings)

    def _format(self, java: str, classpath: str, config: Path, log4j: Path, password: str) -> None:
        """Format the storage; with kafka_local_sasl also create the product user's SCRAM credential,
        which KRaft only accepts at format time. Its arguments go through a java @argfile (mode 0600,
        deleted afterwards), so the password is never on a command line."""
        arguments = ["-cp", classpath, f"-Dlog4j2.configurationFile={log4j}", "kafka.tools.StorageTool",
                     "format", "-t", _cluster_id(), "-c", str(config)]
        if self.settings.kafka_local_sasl:
            arguments += ["--add-scram",
                          f"{LOCAL_SASL_MECHANISM}=[name={self.settings.kafka_sasl_username},password={password}]"]
        argfile = self.home / "format.args"
        _write_private(argfile, "\n".join(_java_argument(a) for a in arguments) + "\n")
        try:
            proc = subprocess.run([java, f"@{argfile}"], capture_output=True, text=True)
        finally:
            argfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            output = (proc.stderr or proc.stdout).strip()[-400:]
            raise StackError(f"formatting Kafka storage failed: {output.replace(password, '***') if password else output}")
        if self.settings.kafka_local_sasl:
            self._sasl_user_file.write_text(self.settings.kafka_sasl_username + "\n")


def _cluster_id() -> str:
    """A KRaft cluster id as Kafka's own Uuid.randomUuid() makes it: URL-safe base64 of a random UUID,
    never starting with '-', which the storage tool would take for an option (1 fresh stack in 64 failed)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def ensure_topic(settings: Settings, timeout: float = 30.0) -> None:
    """Create the devices topic with the configured partition count unless it exists."""
    create_topic(librdkafka_config(settings), settings.topic, settings.topic_partitions, timeout)


def create_topic(config: dict, topic: str, partitions: int, timeout: float = 30.0) -> None:
    """Create `topic` on the cluster of a librdkafka `config` unless it exists; an unreachable cluster
    or refused credentials are a one-line StackError."""
    from confluent_kafka.admin import NewTopic
    from confluent_kafka import KafkaException

    if topic in topic_names(config, timeout):  # KafkaUnavailable is a one-line StackError
        return
    admin = admin_client(config)
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for future in futures.values():
        try:
            future.result(timeout)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    # The controller acknowledges the creation before the broker's metadata shows the topic, and a
    # fresh broker lags there long enough for the next reader to miss it.
    if not wait_until(lambda: topic in admin.list_topics(timeout=timeout).topics, timeout, interval=0.05):
        raise StackError(f"Kafka at {config['bootstrap.servers']} created topic {topic!r} but does not list it "
                         f"after {timeout:g} s")
