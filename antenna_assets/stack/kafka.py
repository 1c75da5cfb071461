"""A real single-node Apache Kafka broker in KRaft mode, run with the machine's Java."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
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


@dataclass(frozen=True)
class KafkaNode:
    """One KRaft process of the local cluster (broker and controller in one): its ports and folder."""

    index: int  # 0-based; its node.id is index + 1
    port: int
    controller_port: int
    home: Path

    @property
    def node_id(self) -> int:
        return self.index + 1

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    """The local cluster's `kafka_brokers` nodes. One node keeps the stack's historical folder and ports;
    node i of several listens on kafka_port + 2i (clients) and kafka_controller_port + 2i (controller)."""
    if settings.kafka_brokers == 1:
        return [KafkaNode(0, settings.kafka_port, settings.kafka_controller_port, settings.stack_dir / "kafka")]
    return [KafkaNode(i, settings.kafka_port + 2 * i, settings.kafka_controller_port + 2 * i,
                      settings.stack_dir / "kafka" / f"node-{i + 1}") for i in range(settings.kafka_brokers)]


def _server_properties(settings: Settings, node: KafkaNode, nodes: list[KafkaNode], password: str) -> str:
    """A node's configuration; with kafka_local_sasl its one client listener is SASL_PLAINTEXT
    (SCRAM-SHA-512), and the node authenticates to the others as the product's user. The KRaft
    controller listener stays plaintext on loopback: SCRAM cannot protect it in KRaft."""
    host = "127.0.0.1"
    listener = "SASL_PLAINTEXT" if settings.kafka_local_sasl else "PLAINTEXT"
    controllers = ",".join(f"{host}:{n.controller_port}" for n in nodes)
    lines = [
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        # One node: the static voter set of before (its storage was formatted for it). Several: a dynamic
        # quorum, formatted with --initial-controllers, found through its bootstrap servers.
        (f"controller.quorum.voters=1@{host}:{node.controller_port}" if len(nodes) == 1
         else f"controller.quorum.bootstrap.servers={controllers}"),
        f"listeners={listener}://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        f"advertised.listeners={listener}://{host}:{node.port}",
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
    # Every topic (Kafka's internal ones too) on up to three nodes; with three, a write needs two
    # (acks=all): one node may die and nothing acknowledged is lost.
    replicas = replication_factor(settings)
    return "\n".join(lines + [
        f"log.dirs={node.home / 'data'}",
        f"num.partitions={settings.topic_partitions}",
        "auto.create.topics.enable=false",
        f"default.replication.factor={replicas}",
        f"min.insync.replicas={min_insync_replicas(settings)}",
        f"offsets.topic.replication.factor={replicas}",
        f"transaction.state.log.replication.factor={replicas}",
        f"transaction.state.log.min.isr={min_insync_replicas(settings)}",
        f"share.coordinator.state.topic.replication.factor={replicas}",
        f"share.coordinator.state.topic.min.isr={min_insync_replicas(settings)}",
        "group.initial.rebalance.delay.ms=0",
        # Room for benchmark preloads without filling the disk of a developer machine.
        "log.retention.bytes=8589934592",
        "message.max.bytes=10485760",
        "",
    ])


def replication_factor(settings: Settings) -> int:
    """Replicas of each topic on the local cluster: every node, at most three."""
    return min(3, settings.kafka_brokers)


def min_insync_replicas(settings: Settings) -> int:
    return 2 if replication_factor(settings) == 3 else 1


def _write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (it may hold a password)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def _java_argument(value: str) -> str:
    """One argument of a java @argfile, quoted."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class KafkaNodeProcess(ServerProcess):
    """The JVM of one node."""

    stop_grace_seconds = 45

    def __init__(self, settings: Settings, node: KafkaNode, clustered: bool):
        self.settings = settings
        self.node = node
        self.name = f"kafka node {node.node_id}" if clustered else "kafka"
        self.home = node.home
        self.data_dir = self.home / "data"
        self.pid_file = self.home / "kafka.pid"
        self.log_file = self.home / "kafka.log"
        self.address = node.address

    def healthy(self, timeout: float = 3.0) -> bool:
        if not port_open(self.node.port):
            return False
        try:
            topic_names({**librdkafka_config(self.settings), "bootstrap.servers": self.node.address}, timeout)
            return True
        except KafkaUnavailable:  # not answering yet
            return False

    def start(self, java: str, classpath: str, nodes: list[KafkaNode], password: str, cluster_id: str,
              initial_controllers: str | None):
        """Format the node's storage if new and start its JVM; returns the process (not yet healthy)."""
        for port in (self.node.port, self.node.controller_port):
            if port_open(port):
                raise StackError(f"port {port} is already in use by another process: stop it, or choose other ports "
                                 "with ANTENNA_KAFKA_PORT (each node's controller uses the next port)")
        self.home.mkdir(parents=True, exist_ok=True)
        config = self.home / "server.properties"
        _write_private(config, _server_properties(self.settings, self.node, nodes, password))
        log4j = self.home / "log4j2.properties"
        log4j.write_text(_LOG4J2.format(log=self.home / "server.log"))
        if not (self.data_dir / "meta.properties").exists():
            self._format(java, classpath, config, log4j, password, cluster_id, initial_controllers)
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
        return process

    @property
    def _sasl_user_file(self) -> Path:
        return self.home / "sasl-user"

    def _sasl_user(self) -> str | None:
        try:
            return self._sasl_user_file.read_text().strip()
        except OSError:
            return None

    def _format(self, java: str, classpath: str, config: Path, log4j: Path, password: str, cluster_id: str,
                initial_controllers: str | None) -> None:
        """Format the storage; with kafka_local_sasl also create the product user's SCRAM credential,
        which KRaft only accepts at format time. Its arguments go through a java @argfile (mode 0600,
        deleted afterwards), so the password is never on a command line."""
        arguments = ["-cp", classpath, f"-Dlog4j2.configurationFile={log4j}", "kafka.tools.StorageTool",
                     "format", "-t", cluster_id, "-c", str(config)]
        if initial_controllers:
            arguments += ["--initial-controllers", initial_controllers]
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


class KafkaBroker:
    """The stack's Kafka: `kafka_brokers` KRaft nodes (one by default) from the Maven jars, and the devices
    topic on them."""

    name = "kafka"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = settings.stack_dir / "kafka"
        nodes = kafka_nodes(settings)
        self.nodes = [KafkaNodeProcess(settings, node, len(nodes) > 1) for node in nodes]
        self.address = settings.kafka_bootstrap

    def pid(self) -> int | None:
        """The first running node's pid (one node: the broker's)."""
        return next((pid for pid in (n.pid() for n in self.nodes) if pid is not None), None)

    def healthy(self) -> bool:
        return all(node.healthy() for node in self.nodes)

    def up(self) -> str:
        running = [node for node in self.nodes if node.pid() is not None]
        if running and len(running) == len(self.nodes):
            if wait_until(self.healthy, 60):
                ensure_topic(self.settings)
                pids = ", ".join(str(n.pid()) for n in self.nodes)
                return f"kafka already running (pid {pids}) on {self.address}"
            raise StackError(f"kafka (pid {running[0].pid()}) runs but does not answer; see {running[0].log_file}, "
                             "or run `antenna stack down` and retry")
        java = shutil.which("java")
        if java is None:
            raise StackError("Java is not installed: the Kafka broker needs a JRE 17+ (apt-get install openjdk-17-jre-headless)")
        classpath = os.pathsep.join(str(p) for p in jars.kafka_jars(self.settings.jars_dir))
        self.home.mkdir(parents=True, exist_ok=True)
        password = self._sasl_password()
        cluster_id, initial_controllers = self._cluster_identity()
        nodes = [n.node for n in self.nodes]
        # All nodes before waiting for any: a node of several answers once a quorum of controllers is up.
        started = [(node, node.start(java, classpath, nodes, password, cluster_id, initial_controllers))
                   for node in self.nodes if node.pid() is None]
        for node, process in started:
            node._await_healthy(process, 90, interval=0.5, more_logs=(node.home / "server.log",))
        ensure_topic(self.settings)
        pids = ", ".join(str(process.pid) for _, process in started)
        return f"kafka started (pid {pids}) on {self.address}" + (
            f" (SASL_PLAINTEXT, {LOCAL_SASL_MECHANISM}, user {self.settings.kafka_sasl_username!r})"
            if self.settings.kafka_local_sasl else "")

    def _cluster_identity(self) -> tuple[str, str | None]:
        """The cluster id every node is formatted with and, for several nodes, their --initial-controllers
        (id@host:port:directory-id each), kept in the stack so a node formatted later joins the same cluster."""
        if len(self.nodes) == 1:
            return _cluster_id(), None
        saved = self.home / "cluster.json"
        if saved.exists():
            identity = json.loads(saved.read_text())
        else:
            identity = {"cluster_id": _cluster_id(),
                        "initial_controllers": ",".join(f"{n.node.node_id}@127.0.0.1:{n.node.controller_port}:{_cluster_id()}"
                                                        for n in self.nodes)}
            saved.write_text(json.dumps(identity))
        return identity["cluster_id"], identity["initial_controllers"]

    def _sasl_password(self) -> str:
        """The product user's password with kafka_local_sasl (generated into the stack's secrets on
        first use, unless the settings name another); empty without."""
        if not self.settings.kafka_local_sasl:
            return ""
        secret = f"kafka-{LOCAL_KAFKA_USER}"
        if Path(self.settings.kafka_sasl_password_file) == secrets_dir(self.settings) / secret:
            stack_secret(self.settings, secret)
        return sasl_password(self.settings)

    def _all_nodes(self) -> list[KafkaNodeProcess]:
        """This configuration's nodes, and those of an earlier `stack up` with another broker count."""
        known = {n.home for n in self.nodes}
        others = [KafkaNodeProcess(self.settings, KafkaNode(i, 0, 0, home), True)
                  for i, home in enumerate(sorted({self.home, *self.home.glob("node-*")} - known))
                  if (home / "kafka.pid").exists()]
        return [*self.nodes, *others]

    def down(self) -> str:
        lines = [node.down() for node in reversed(self._all_nodes())]
        return "\n".join(line for line in lines if "not running" not in line) or "kafka not running"

    def status(self) -> tuple[bool, str]:
        reports = [node.status() for node in self.nodes]
        healthy = all(ok for ok, _ in reports)
        lines = [line for _, line in reports]
        if len(self.nodes) > 1 and any(ok for ok, _ in reports):  # the quorum and replicas of what is left
            lines.append(cluster_report(self.settings))
        return healthy, "\n".join(lines)


def cluster_report(settings: Settings, timeout: float = 10.0) -> str:
    """The controller quorum (its leader and voters, from Kafka's own MetadataQuorumCommand) and every
    under-replicated partition (fewer in-sync replicas than replicas), from the cluster's metadata."""
    from confluent_kafka import TopicCollection

    admin = admin_client(librdkafka_config(settings))
    names = sorted(admin.list_topics(timeout=timeout).topics)
    described = admin.describe_topics(TopicCollection(names), request_timeout=timeout) if names else {}
    lagging = [f"{name}/{p.id} (isr {len(p.isr)} of {len(p.replicas)})" for name, future in sorted(described.items())
               for p in future.result().partitions if len(p.isr) < len(p.replicas)]
    return f"kafka quorum: {_quorum_status(settings, timeout)}; under-replicated partitions: {', '.join(lagging) or 'none'}"


def _quorum_status(settings: Settings, timeout: float) -> str:
    java = shutil.which("java")
    classpath = os.pathsep.join(str(p) for p in jars.kafka_jars(settings.jars_dir))
    command = [java, "-cp", classpath, "org.apache.kafka.tools.MetadataQuorumCommand",
               "--bootstrap-server", settings.kafka_bootstrap, "describe", "--status"]
    if settings.kafka_local_sasl:
        # The tool's client logs in like the product; its properties (with the password) in a 0600 file.
        properties = settings.stack_dir / "kafka" / "quorum-client.properties"
        # Backslashes are escapes in a properties file; the JAAS line is read after that.
        jaas = jaas_config(LOCAL_SASL_MECHANISM, settings.kafka_sasl_username, sasl_password(settings)).replace("\\", "\\\\")
        _write_private(properties, f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism={LOCAL_SASL_MECHANISM}\n"
                                   f"sasl.jaas.config={jaas}\n")
        command += ["--command-config", str(properties)]
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout + 20)
    except subprocess.TimeoutExpired:
        return "no answer"
    fields = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    if proc.returncode != 0 or "LeaderId" not in fields:
        return "unknown (" + ((proc.stderr or proc.stdout).strip().splitlines() or ["no output"])[-1][:200] + ")"
    voters = [voter["id"] for voter in json.loads(fields.get("CurrentVoters", "[]").strip() or "[]")]
    return f"leader node {fields['LeaderId'].strip()}, voters {voters}, high watermark {fields.get('HighWatermark', '?').strip()}"


def _cluster_id() -> str:
    """A KRaft cluster id as Kafka's own Uuid.randomUuid() makes it: URL-safe base64 of a random UUID,
    never starting with '-', which the storage tool would take for an option (1 fresh stack in 64 failed)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# Kafka's message.timestamp.type. With LogAppendTime the broker stamps every record with the time it
# appended it, so no producer's clock reaches the stream's watermark through the record's timestamp;
# with CreateTime (Kafka's default) the producer sets it.
LOG_APPEND_TIME, CREATE_TIME = "LogAppendTime", "CreateTime"


def ensure_topic(settings: Settings, timeout: float = 30.0) -> None:
    """Create the devices topic with the configured partition count and retention unless it exists."""
    create_topic(librdkafka_config(settings), settings.topic, settings.topic_partitions, timeout,
                 topic_config=topic_retention(settings))


def topic_retention(settings: Settings) -> dict[str, str]:
    """The devices topic's explicit retention (README: Retention): how long, and how many bytes per partition,
    Kafka keeps records the stream may not have read yet; never the broker's defaults, whatever they are."""
    return {"retention.ms": str(settings.topic_retention_ms), "retention.bytes": str(settings.topic_retention_bytes)}


def create_topic(config: dict, topic: str, partitions: int, timeout: float = 30.0,
                 timestamp_type: str = LOG_APPEND_TIME, topic_config: dict[str, str] | None = None) -> None:
    """Create `topic` on the cluster of a librdkafka `config`, its records stamped by `timestamp_type`,
    and `topic_config` (Kafka topic configs), unless it exists: an existing topic (an external cluster's) is
    left as it is. An unreachable cluster or refused credentials are a one-line StackError."""
    from confluent_kafka.admin import NewTopic
    from confluent_kafka import KafkaException

    if topic in topic_names(config, timeout):  # KafkaUnavailable is a one-line StackError
        return
    admin = admin_client(config)
    # replication_factor -1: the cluster's default.replication.factor (the local cluster's: every node, at most 3,
    # with min.insync.replicas 2 at 3; _server_properties).
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1,
                                            config={"message.timestamp.type": timestamp_type,
                                                    **(topic_config or {})})])
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
