"""Every tunable of the product: one object, built from `ANTENNA_*` environment variables.

Each field is the variable without its prefix (`kafka_port` is ANTENNA_KAFKA_PORT) and its default
is written here once; the README's configuration table lists them. Code is handed a `Settings`
(or builds one with `Settings.from_env()` at its entry point) and never reads `os.environ` itself.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

SPARK_VERSION = "4.2.0"  # must equal the pinned pyspark: the Kafka connector jars are fetched for it
KAFKA_VERSION = "4.1.1"
DEVICES_TOPIC = "devices"
KAFKA_SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
KAFKA_SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
LOCAL_KAFKA_USER = "antenna"  # the product's SCRAM user on the local broker with kafka_local_sasl
ENV_PREFIX = "ANTENNA_"
# The embedded PostgreSQL's roles (antenna_assets/stack/postgres.py creates them; README: Security).
SUPERUSER = "postgres"
WRITER_ROLE = "antenna_writer"
RETENTION_ROLE = "antenna_retention"  # the retention job's: deletes what retention removes, and nothing else

_KINDS = {"int_parsing": "an integer", "float_parsing": "a number", "bool_parsing": "1 or 0"}


class SettingsError(ValueError):
    """A setting has a value the product cannot use; the message says which and why."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True, frozen=True, extra="ignore",
                                      populate_by_name=True)

    stack_dir: Path = Field(default_factory=lambda: Path.cwd() / ".stack")
    # Kafka: the local broker's ports, or any cluster's bootstrap servers.
    kafka_port: int = 19092
    kafka_controller_port: int = 0  # 0: kafka_port + 1
    kafka_bootstrap: str = ""  # empty: the local broker, 127.0.0.1:kafka_port
    kafka_heap: str = ""  # empty: 1g for one node, 384m each for several
    # KRaft nodes of the local cluster (stack/kafka.py): node i listens on kafka_port + 2i, its controller
    # on kafka_controller_port + 2i. With 3, every topic has 3 replicas and a write needs 2 (min.insync.replicas).
    kafka_brokers: int = Field(default=1, ge=1, le=9)
    topic: str = DEVICES_TOPIC
    topic_partitions: int = Field(default=3, ge=1)
    # Kafka security, one set for every client (simulator, sensor, stack, Spark): antenna_assets/kafka.py.
    kafka_security_protocol: str = ""  # empty: SASL_PLAINTEXT with kafka_local_sasl, else PLAINTEXT
    kafka_sasl_mechanism: str = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""  # empty with kafka_local_sasl: LOCAL_KAFKA_USER
    kafka_sasl_password: SecretStr = SecretStr("")  # SecretStr: never shown by a repr or a log line
    kafka_sasl_password_file: str = ""  # empty with kafka_local_sasl and no password: <stack_dir>/secrets/kafka-antenna
    kafka_ssl_ca_file: str = ""  # PEM file of the CA that signed the brokers' certificates
    kafka_local_sasl: bool = False  # the local broker listens with SASL_PLAINTEXT + SCRAM-SHA-512 only
    # PostgreSQL: the embedded server on postgres_port, unless a URL names another server.
    postgres_port: int = 15432
    postgres_url: str = ""  # empty: the embedded server, as the pipeline's writer role
    dagster_db: str = "dagster"
    # The lake and the streaming checkpoints: local folders under the stack, or gs:// URLs.
    lake_root: str = ""  # empty: <stack_dir>/lake
    checkpoint_root: str = ""  # empty: <lake_root>/_checkpoints
    # `antenna dead-letters prune` moves dead letters older than this many days to the lake; 0: keeps them all.
    dead_letter_retention_days: int = Field(default=0, ge=0)
    # Retention (antenna_assets/retention, README: Retention): the retention job's schedule (cron, UTC) and what it
    # keeps. Landing files of a compacted and checked hour go this long after the hour's end; 5-minute rows of
    # batch-final hours after so many days; the ledger's batch rows, clocks, failures and heartbeats too.
    retention_cron: str = "40 * * * *"
    retention_landing_grace_hours: int = Field(default=24, ge=1)
    retention_speed_days: int = Field(default=7, ge=1)
    retention_ledger_days: int = Field(default=30, ge=1)
    # The devices topic's retention when the product creates it: how long the stream may be stopped before
    # Kafka deletes records it has not read (README: Retention). Bytes are per partition; -1: no size limit.
    topic_retention_ms: int = Field(default=7 * 24 * 3600 * 1000, ge=-1)
    topic_retention_bytes: int = Field(default=8 * 1024 ** 3, ge=-1)
    partitions_start: str = "2025-01-01-00:00"  # the first hourly partition Dagster offers
    spark_master: str = "local[*]"  # with spark_workers and not set: the stack's cluster, spark_cluster_url
    # A Spark standalone cluster started by the stack (stack/spark_cluster.py): 0 workers, none. Its master
    # listens on spark_master_port, its web UI on the next port, worker i's web UI on the one after + i.
    spark_workers: int = Field(default=0, ge=0)
    spark_master_port: int = Field(default=7077, gt=0, lt=65000)
    spark_worker_cores: int = Field(default=1, ge=1)
    spark_worker_memory: str = "1g"
    spark_daemon_memory: str = "256m"  # the heap of the master and worker processes themselves
    # spark.cores.max of each application on a spark:// master; 0: Spark's default, every free core. On the
    # stack's cluster, half its cores (at least 1) unless set: the streaming run never gives its cores back,
    # and an hourly batch run started beside it would wait for a core forever.
    spark_app_cores: int = Field(default=0, ge=0)
    spark_shuffle_partitions: int = Field(default=4, ge=1)
    spark_driver_memory: str = "1280m"  # the heap limit; the JVM's native memory comes on top (BENCHMARKS.md, Memory)
    # JVM options of the Spark driver, after the UTC time zone the product sets. The serial collector:
    # the same throughput and freshness as G1 here, and a lower peak RSS in most runs (BENCHMARKS.md, Memory).
    # Its young generation fixed: a micro-batch's data lives about a second and, in the ~100 MiB the collector
    # chose, was promoted and filled the old generation, with a ~250 ms full collection every ~6 s of live
    # traffic; 768 rather than 384 MiB drained a 5M backlog at 0.88-0.94 of the floor instead of 0.71-0.82
    # (BENCHMARKS.md, Speed layer). 640 MiB (the same 384 MiB eden, two 128 MiB survivor spaces) under a 1280m
    # heap: the catch-up and freshness of 768 MiB under 1536m at a peak RSS under 2 GiB; 768 MiB under 1280m
    # left too small an old generation, more full collections (BENCHMARKS.md, Performance round 3).
    spark_driver_java_options: str = "-XX:+UseSerialGC -Xmn640m -XX:SurvivorRatio=3"
    spark_ui: bool = False
    spark_log_level: str = "WARN"
    # Lake on Google Cloud Storage: only read when a root is gs://, or when an emulator is set.
    gcs_project: str = ""
    gcs_endpoint: str = ""  # http://127.0.0.1:N of a GCS API emulator; empty: the real service
    gcs_emulator_port: int = 14443
    gcs_credentials_file: str = Field(default="", validation_alias=AliasChoices(
        "ANTENNA_GCS_CREDENTIALS_FILE", "GOOGLE_APPLICATION_CREDENTIALS"))
    # Orchestration: one definition of a closed hour (its end plus the grace has passed, UTC wall
    # clock), how far back the hourly sensor looks, and the back-off of relaunches after failures.
    hour_close_grace_minutes: int = Field(default=5, ge=0)
    batch_lookback_hours: int = Field(default=48, ge=1)
    # How often the streaming and hourly sensors tick: the longest a dead stream or a closed hour waits for
    # its run to be launched, besides the back-off. Each tick is a few PostgreSQL and run-storage queries.
    stream_sensor_seconds: int = Field(default=30, ge=1)
    batch_sensor_seconds: int = Field(default=60, ge=1)
    stream_backoff_seconds: float = 30.0
    stream_backoff_max_seconds: float = 900.0
    # The streaming run's heartbeat (speed/heartbeat.py): how often it beats, and how old its last beat may
    # be before the streaming sensor marks the run failed (its process and code server died, e.g. a host
    # restart) and launches another. Minutes: a stalled JVM or a short PostgreSQL outage must not end a live run.
    stream_heartbeat_seconds: float = Field(default=10.0, gt=0)
    stream_heartbeat_limit_seconds: float = Field(default=180.0, gt=0)
    batch_backoff_seconds: float = 60.0
    batch_backoff_max_seconds: float = 3600.0
    # The hourly tables' freshness policy: a closed hour's batch is due this long after the hour closes
    # (the sensor's tick, the run queue and the Spark run); an hour not written by then shows as overdue.
    batch_run_minutes: int = Field(default=15, ge=1, le=60)
    # The speed layer's freshness check fails when the latest applied event is older than this; Dagster's
    # automation runs it every stream_lag_check_minutes (one short run each time).
    stream_lag_limit_seconds: float = Field(default=300.0, gt=0)
    stream_lag_check_minutes: int = Field(default=5, ge=1, le=59)
    # Alert rules (alerts/rules.py), evaluated every alerts_evaluate_seconds: quota alerts for the hours of the
    # last alerts_lookback_hours; the stream behind by more than alerts_stream_lag_seconds for
    # alerts_stream_lag_hold_seconds; dead letters over alerts_dead_letter_ratio of the records the stream
    # applied in the last alerts_dead_letter_window_minutes, and at least alerts_dead_letter_min of them.
    alerts_evaluate_seconds: int = Field(default=15, ge=1)
    alerts_lookback_hours: int = Field(default=48, ge=1)
    alerts_stream_lag_seconds: float = Field(default=300.0, gt=0)
    alerts_stream_lag_hold_seconds: float = Field(default=120.0, ge=0)
    alerts_dead_letter_ratio: float = Field(default=0.01, ge=0, le=1)
    alerts_dead_letter_min: int = Field(default=10, ge=1)
    alerts_dead_letter_window_minutes: int = Field(default=5, ge=1)
    # Alert delivery (alerts/channels.py, alerts/sender.py); a channel is off while its host or URL is empty.
    # Email over SMTP to alerts_email_to (comma-separated) and, with alerts_email_users, to the user an alert is
    # about; a login with alerts_smtp_username reads its password from <stack_dir>/secrets/alerts-smtp-password.
    alerts_smtp_host: str = ""
    alerts_smtp_port: int = Field(default=25, gt=0, lt=65536)
    alerts_smtp_starttls: bool = False
    alerts_smtp_username: str = ""
    alerts_email_from: str = "antenna@localhost"
    alerts_email_to: str = ""
    alerts_email_users: bool = False
    # A signed JSON POST per alert; the signing key is <stack_dir>/secrets/alerts-webhook-key (README: Alerts).
    alerts_webhook_url: str = ""
    alerts_send_timeout_seconds: float = Field(default=10.0, gt=0)  # one SMTP session step or webhook request
    # A delivery that failed for a reason that may pass (server down, a 4xx SMTP or 5xx HTTP reply) is tried
    # again after alerts_retry_seconds, doubling up to alerts_retry_max_seconds, alerts_max_attempts tries in all
    # (the defaults: about 11 hours). The sender also looks every alerts_poll_seconds without being notified.
    alerts_retry_seconds: float = Field(default=5.0, gt=0)
    alerts_retry_max_seconds: float = Field(default=900.0, gt=0)
    alerts_max_attempts: int = Field(default=50, ge=1)
    alerts_poll_seconds: float = Field(default=2.0, gt=0)
    autostart_streaming: bool = False  # the streaming sensor is on when Dagster starts
    automation: bool = False  # the hourly batch sensor is on when Dagster starts
    ui_port: int = 3000  # the Dagster UI started by `antenna demo`
    # Apache Superset: started by `antenna stack up` when enabled (always by the demo).
    superset: bool = False
    superset_port: int = 8088
    superset_db: str = "superset"
    # The operators' page (antenna_assets/serving/operators).
    operators_page: bool = False  # started by `antenna stack up` too
    operators_host: str = "127.0.0.1"
    operators_port: int = Field(default=8080, gt=0, lt=65536)
    operators_secure_cookie: bool = False  # set when served over https (behind a TLS proxy)
    operators_session_hours: int = Field(default=8, ge=1)  # absolute: using the page does not extend it
    operators_login_attempts: int = Field(default=5, ge=1)  # failed sign-ins per window, per name and per address
    operators_login_window_seconds: int = Field(default=900, ge=1)
    # Request bodies, read no further (413): signed in, the CSV import's 5 MB and its form; signed out, a sign-in form.
    operators_max_body_bytes: int = Field(default=6_000_000, ge=1024)
    operators_max_signed_out_body_bytes: int = Field(default=16_384, ge=1024)
    # Users' names and emails are personal data: Dagster's event metadata (previews) leaves them out unless set.
    metadata_personal_data: bool = False
    # The Dagster UI links each asset to its code at this repository URL and branch; empty: the checkout's
    # `origin` remote, and no links without one.
    git_url: str = ""
    git_branch: str = "main"

    @model_validator(mode="after")
    def _derive_and_check(self) -> "Settings":
        # Defaults that follow from other settings; set once here, so a copy keeps them as they are.
        derived = {"stack_dir": self.stack_dir.resolve()}
        derived["lake_root"] = (self.lake_root or str(derived["stack_dir"] / "lake")).rstrip("/")
        derived["checkpoint_root"] = (self.checkpoint_root or derived["lake_root"] + "/_checkpoints").rstrip("/")
        derived["kafka_controller_port"] = self.kafka_controller_port or self.kafka_port + 1
        derived["kafka_bootstrap"] = self.kafka_bootstrap or ",".join(
            f"127.0.0.1:{self.kafka_port + 2 * node}" for node in range(self.kafka_brokers))
        derived["kafka_heap"] = self.kafka_heap or ("1g" if self.kafka_brokers == 1 else "384m")
        if self.spark_workers and "spark_master" not in self.model_fields_set:
            derived["spark_master"] = self.spark_cluster_url
        if ("spark_app_cores" not in self.model_fields_set
                and derived.get("spark_master", self.spark_master) == self.spark_cluster_url):
            derived["spark_app_cores"] = max(1, self.spark_workers * self.spark_worker_cores // 2)
        derived["postgres_url"] = self.postgres_url or self.embedded_url(WRITER_ROLE, derived["stack_dir"])
        derived["gcs_endpoint"] = self.gcs_endpoint.rstrip("/")
        derived.update(self._kafka_security(derived["stack_dir"]))
        for name, value in derived.items():
            object.__setattr__(self, name, value)
        from antenna_assets.postgres import redacted

        parsed = urlparse(self.postgres_url)
        if parsed.scheme not in ("postgresql", "postgres") or not parsed.hostname:
            raise ValueError(f"{ENV_PREFIX}POSTGRES_URL must look like postgresql://user:password@host:port/db, "
                             f"got {redacted(self.postgres_url)!r}")
        if self.stream_heartbeat_limit_seconds < 2 * self.stream_heartbeat_seconds:
            raise ValueError(f"{ENV_PREFIX}STREAM_HEARTBEAT_LIMIT_SECONDS={self.stream_heartbeat_limit_seconds:g} "
                             f"must be at least twice {ENV_PREFIX}STREAM_HEARTBEAT_SECONDS={self.stream_heartbeat_seconds:g}")
        if self.retention_ledger_days * 24 <= self.retention_landing_grace_hours:
            raise ValueError(f"{ENV_PREFIX}RETENTION_LEDGER_DAYS={self.retention_ledger_days} must be longer than "
                             f"{ENV_PREFIX}RETENTION_LANDING_GRACE_HOURS={self.retention_landing_grace_hours}: the "
                             "landing prune finds what each batch folder holds in the ledger")
        if not (self.spark_master.startswith(("local", "spark://", "k8s://")) or self.spark_master == "yarn"):
            raise ValueError(f"{ENV_PREFIX}SPARK_MASTER={self.spark_master!r}: expected local[*], spark://host:port, "
                             "yarn or k8s://")
        self._check_alert_channels()
        return self

    def _check_alert_channels(self) -> None:
        webhook = urlparse(self.alerts_webhook_url)
        # Only the scheme is shown: a webhook URL's path is often its secret.
        if self.alerts_webhook_url and (webhook.scheme not in ("http", "https") or not webhook.hostname):
            raise ValueError(f"{ENV_PREFIX}ALERTS_WEBHOOK_URL must be an http:// or https:// URL with a host, got "
                             f"{webhook.scheme + '://...' if webhook.scheme else 'no scheme'}")
        if self.alerts_smtp_host and not (self.alerts_email_to.strip() or self.alerts_email_users):
            raise ValueError(f"{ENV_PREFIX}ALERTS_SMTP_HOST is set but no one gets the email: set "
                             f"{ENV_PREFIX}ALERTS_EMAIL_TO (operators' addresses) or {ENV_PREFIX}ALERTS_EMAIL_USERS=1")
        for address in (self.alerts_email_from, *self.alerts_operator_emails):
            if address.count("@") != 1 or any(c in address for c in " <>,;"):
                raise ValueError(f"{ENV_PREFIX}ALERTS_EMAIL_FROM/_TO: {address!r} is not an email address")

    @property
    def alerts_operator_emails(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.alerts_email_to.split(",") if a.strip())

    def _kafka_security(self, stack_dir: Path) -> dict[str, str]:
        """The derived Kafka security settings; a combination no client can use is a ValueError."""
        local = self.kafka_local_sasl
        protocol = (self.kafka_security_protocol or ("SASL_PLAINTEXT" if local else "PLAINTEXT")).upper()
        mechanism = self.kafka_sasl_mechanism.upper()
        username = self.kafka_sasl_username or (LOCAL_KAFKA_USER if local else "")
        password_file = self.kafka_sasl_password_file
        if local and not password_file and not self.kafka_sasl_password.get_secret_value():
            password_file = str(stack_dir / "secrets" / f"kafka-{LOCAL_KAFKA_USER}")
        if protocol not in KAFKA_SECURITY_PROTOCOLS:
            raise ValueError(f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol!r}: expected one of "
                             f"{', '.join(KAFKA_SECURITY_PROTOCOLS)}")
        if mechanism not in KAFKA_SASL_MECHANISMS:
            raise ValueError(f"{ENV_PREFIX}KAFKA_SASL_MECHANISM={self.kafka_sasl_mechanism!r}: expected one of "
                             f"{', '.join(KAFKA_SASL_MECHANISMS)}")
        if protocol.startswith("SASL") and not (username and (password_file or self.kafka_sasl_password.get_secret_value())):
            raise ValueError(f"{ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} needs {ENV_PREFIX}KAFKA_SASL_USERNAME and "
                             f"{ENV_PREFIX}KAFKA_SASL_PASSWORD (or {ENV_PREFIX}KAFKA_SASL_PASSWORD_FILE)")
        if self.kafka_ssl_ca_file and not protocol.endswith("SSL"):
            raise ValueError(f"{ENV_PREFIX}KAFKA_SSL_CA_FILE is set but {ENV_PREFIX}KAFKA_SECURITY_PROTOCOL={protocol} "
                             "does not use TLS: use SSL or SASL_SSL")
        return {"kafka_security_protocol": protocol, "kafka_sasl_mechanism": mechanism,
                "kafka_sasl_username": username, "kafka_sasl_password_file": password_file}

    @classmethod
    def from_env(cls, **overrides: Any) -> "Settings":
        """The environment's settings (with `overrides` on top); a bad value is a one-line SettingsError."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            raise SettingsError(_one_line(exc)) from None

    def replace(self, **changes: Any) -> "Settings":
        """A copy with `changes`; derived defaults (bootstrap, URLs, roots) are kept as they were."""
        return self.model_copy(update=changes)

    def embedded_url(self, role: str, stack_dir: Path | None = None) -> str:
        """The embedded server's serving database as `role`: no password in the URL, libpq reads it
        from the stack's 0600 passfile."""
        passfile = quote(str(pgpass_file(stack_dir or self.stack_dir)))
        return f"postgresql://{role}@127.0.0.1:{self.postgres_port}/antenna?passfile={passfile}"

    @property
    def external_postgres(self) -> bool:
        """True when the URL names a server of its own rather than the embedded one."""
        return self.postgres_url != self.embedded_url(WRITER_ROLE)

    @property
    def postgres_admin_url(self) -> str:
        """Who sets the server up (databases, migration, roles): the embedded server's superuser, or
        an external server's own user. The product's running parts never connect with it."""
        return self.postgres_url if self.external_postgres else self.embedded_url(SUPERUSER)

    @property
    def postgres_retention_url(self) -> str:
        """The retention job's login: the embedded server's retention role, or an external server's own user."""
        return self.postgres_url if self.external_postgres else self.embedded_url(RETENTION_ROLE)

    @property
    def pgpass_file(self) -> Path:
        return pgpass_file(self.stack_dir)

    def from_environment(self, name: str) -> bool:
        """Whether setting `name` was given by its environment variable rather than defaulted."""
        return name in self.model_fields_set

    @property
    def hour_close_grace(self) -> timedelta:
        return timedelta(minutes=self.hour_close_grace_minutes)

    def postgres_url_for(self, database: str, url: str = "") -> str:
        """The same server as `url` (default `postgres_url`), another database on it."""
        return urlparse(url or self.postgres_url)._replace(path=f"/{database}").geturl()

    @property
    def jars_dir(self) -> Path:
        return self.stack_dir / "jars"

    @property
    def spark_cluster_url(self) -> str:
        """The master of the stack's Spark standalone cluster (stack/spark_cluster.py)."""
        return f"spark://127.0.0.1:{self.spark_master_port}"

    @property
    def spark_master_ui_port(self) -> int:
        return self.spark_master_port + 1


def pgpass_file(stack_dir: Path) -> Path:
    """libpq's password file for the embedded server's roles (mode 0600; README: Security)."""
    return stack_dir / "secrets" / "pgpass"


def env_name(field: str) -> str:
    """The environment variable of a setting: `kafka_port` -> ANTENNA_KAFKA_PORT."""
    return ENV_PREFIX + field.upper()


def child_environment(**extra: str) -> dict[str, str]:
    """The environment a child process (a server of the stack, Dagster) starts with: ours plus `extra`."""
    return {**os.environ, **extra}


def _one_line(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = env_name(field) if field else "setting"
        kind = _KINDS.get(error["type"])
        if kind == "1 or 0":
            problems.append(f"{name}={error['input']!r}: expected 1 or 0")
        elif kind:
            problems.append(f"{name}={error['input']!r} is not {kind}")
        elif field:
            problems.append(f"{name}={error['input']!r}: {error['msg']}")
        else:
            problems.append(error["msg"].removeprefix("Value error, "))
    return "; ".join(problems)
