"""Every tunable of the product, read from environment variables with the contract's defaults.

One table of variables, documented in the README. Code asks `Settings.from_env()` rather than
reading `os.environ` itself, so a default lives in exactly one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

SPARK_VERSION = "4.2.0"  # must equal the pinned pyspark: the Kafka connector jars are fetched for it
KAFKA_VERSION = "4.1.1"
DEVICES_TOPIC = "devices"


class SettingsError(ValueError):
    """A setting has a value the product cannot use; the message says which and why."""


def _env_parsed(name: str, default, parse, kind: str):
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {kind}") from None


def _env_int(name: str, default: int) -> int:
    return _env_parsed(name, default, int, "an integer")


def _env_float(name: str, default: float) -> float:
    return _env_parsed(name, default, float, "a number")


def _env_str(name: str, default: str) -> str:
    raw = os.environ.get(name)
    return default if raw is None or raw == "" else raw


def _env_flag(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name}={raw!r}: expected 1 or 0")


def default_stack_dir() -> Path:
    return Path(_env_str("ANTENNA_STACK_DIR", str(Path.cwd() / ".stack"))).resolve()


@dataclass(frozen=True)
class Settings:
    stack_dir: Path = field(default_factory=default_stack_dir)
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    kafka_bootstrap: str = "127.0.0.1:19092"
    topic: str = DEVICES_TOPIC
    topic_partitions: int = 3
    postgres_port: int = 15432
    postgres_url: str = ""
    external_postgres: bool = False
    dagster_db: str = "dagster"
    lake_root: str = ""
    checkpoint_root: str = ""
    spark_master: str = "local[*]"
    spark_shuffle_partitions: int = 4
    spark_driver_memory: str = "2g"
    spark_ui: str = "false"
    spark_log_level: str = "WARN"
    # Lake on Google Cloud Storage: only read when a root is gs://, or when an emulator is set.
    gcs_project: str = ""
    gcs_endpoint: str = ""  # http://127.0.0.1:N of a GCS API emulator; empty: the real service
    gcs_emulator_port: int = 14443
    gcs_credentials_file: str = ""
    # Orchestration: one definition of a closed hour (its end plus the grace has passed, UTC wall
    # clock), how far back the hourly sensor looks, and the back-off of relaunches after failures.
    hour_close_grace_minutes: int = 5
    batch_lookback_hours: int = 48
    stream_backoff_seconds: float = 30.0
    stream_backoff_max_seconds: float = 900.0
    batch_backoff_seconds: float = 60.0
    batch_backoff_max_seconds: float = 3600.0
    autostart_streaming: bool = False  # the streaming sensor is on when Dagster starts
    automation: bool = False  # the hourly batch sensor is on when Dagster starts
    # Apache Superset: started by `antenna stack up` when enabled (always by the demo).
    superset: bool = False
    superset_port: int = 8088
    superset_db: str = "superset"
    # The operators' page (antenna_assets/serving/operators).
    operators_page: bool = False  # started by `antenna stack up` too
    operators_host: str = "127.0.0.1"
    operators_port: int = 8080
    operators_secure_cookie: bool = False  # set when served over https (behind a TLS proxy)
    operators_session_hours: int = 8
    operators_login_attempts: int = 5  # failed sign-ins per window, per operator name and per client address
    operators_login_window_seconds: int = 900

    @classmethod
    def from_env(cls) -> "Settings":
        stack_dir = default_stack_dir()
        kafka_port = _env_int("ANTENNA_KAFKA_PORT", 19092)
        postgres_port = _env_int("ANTENNA_POSTGRES_PORT", 15432)
        external_url = os.environ.get("ANTENNA_POSTGRES_URL", "")
        postgres_url = external_url or f"postgresql://postgres:antenna@127.0.0.1:{postgres_port}/antenna"
        lake_root = _env_str("ANTENNA_LAKE_ROOT", str(stack_dir / "lake"))
        settings = cls(
            stack_dir=stack_dir,
            kafka_port=kafka_port,
            kafka_controller_port=_env_int("ANTENNA_KAFKA_CONTROLLER_PORT", kafka_port + 1),
            kafka_bootstrap=_env_str("ANTENNA_KAFKA_BOOTSTRAP", f"127.0.0.1:{kafka_port}"),
            topic=_env_str("ANTENNA_TOPIC", DEVICES_TOPIC),
            topic_partitions=_env_int("ANTENNA_TOPIC_PARTITIONS", 3),
            postgres_port=postgres_port,
            postgres_url=postgres_url,
            external_postgres=bool(external_url),
            dagster_db=_env_str("ANTENNA_DAGSTER_DB", "dagster"),
            lake_root=lake_root.rstrip("/"),
            checkpoint_root=_env_str("ANTENNA_CHECKPOINT_ROOT", lake_root.rstrip("/") + "/_checkpoints"),
            spark_master=_env_str("ANTENNA_SPARK_MASTER", "local[*]"),
            spark_shuffle_partitions=_env_int("ANTENNA_SPARK_SHUFFLE_PARTITIONS", 4),
            spark_driver_memory=_env_str("ANTENNA_SPARK_DRIVER_MEMORY", cls.spark_driver_memory),
            spark_ui=_env_str("ANTENNA_SPARK_UI", cls.spark_ui),
            spark_log_level=_env_str("ANTENNA_SPARK_LOG_LEVEL", cls.spark_log_level),
            gcs_project=_env_str("ANTENNA_GCS_PROJECT", ""),
            gcs_endpoint=_env_str("ANTENNA_GCS_ENDPOINT", "").rstrip("/"),
            gcs_emulator_port=_env_int("ANTENNA_GCS_EMULATOR_PORT", 14443),
            gcs_credentials_file=_env_str("GOOGLE_APPLICATION_CREDENTIALS", ""),
            hour_close_grace_minutes=_env_int("ANTENNA_HOUR_CLOSE_GRACE_MINUTES", cls.hour_close_grace_minutes),
            batch_lookback_hours=_env_int("ANTENNA_BATCH_LOOKBACK_HOURS", cls.batch_lookback_hours),
            stream_backoff_seconds=_env_float("ANTENNA_STREAM_BACKOFF_SECONDS", cls.stream_backoff_seconds),
            stream_backoff_max_seconds=_env_float("ANTENNA_STREAM_BACKOFF_MAX_SECONDS", cls.stream_backoff_max_seconds),
            batch_backoff_seconds=_env_float("ANTENNA_BATCH_BACKOFF_SECONDS", cls.batch_backoff_seconds),
            batch_backoff_max_seconds=_env_float("ANTENNA_BATCH_BACKOFF_MAX_SECONDS", cls.batch_backoff_max_seconds),
            autostart_streaming=_env_str("ANTENNA_AUTOSTART_STREAMING", "") == "1",
            automation=_env_str("ANTENNA_AUTOMATION", "") == "1",
            superset=_env_flag("ANTENNA_SUPERSET"),
            superset_port=_env_int("ANTENNA_SUPERSET_PORT", 8088),
            superset_db=_env_str("ANTENNA_SUPERSET_DB", "superset"),
            operators_page=_env_flag("ANTENNA_OPERATORS_PAGE"),
            operators_host=_env_str("ANTENNA_OPERATORS_HOST", "127.0.0.1"),
            operators_port=_env_int("ANTENNA_OPERATORS_PORT", 8080),
            operators_secure_cookie=_env_flag("ANTENNA_OPERATORS_SECURE_COOKIE"),
            operators_session_hours=_env_int("ANTENNA_OPERATORS_SESSION_HOURS", 8),
            operators_login_attempts=_env_int("ANTENNA_OPERATORS_LOGIN_ATTEMPTS", 5),
            operators_login_window_seconds=_env_int("ANTENNA_OPERATORS_LOGIN_WINDOW_SECONDS", 900),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.hour_close_grace_minutes < 0 or self.batch_lookback_hours < 1:
            raise SettingsError("ANTENNA_HOUR_CLOSE_GRACE_MINUTES must be >= 0 and ANTENNA_BATCH_LOOKBACK_HOURS >= 1")
        if self.topic_partitions < 1:
            raise SettingsError(f"ANTENNA_TOPIC_PARTITIONS must be >= 1, got {self.topic_partitions}")
        parsed = urlparse(self.postgres_url)
        if parsed.scheme not in ("postgresql", "postgres") or not parsed.hostname:
            raise SettingsError(
                f"ANTENNA_POSTGRES_URL must look like postgresql://user:password@host:port/db, got {self.postgres_url!r}"
            )
        if not (self.spark_master.startswith("local") or self.spark_master.startswith("spark://")
                or self.spark_master in ("yarn",) or self.spark_master.startswith("k8s://")):
            raise SettingsError(f"ANTENNA_SPARK_MASTER={self.spark_master!r}: expected local[*], spark://host:port, yarn or k8s://")
        if not 0 < self.operators_port < 65536:
            raise SettingsError(f"ANTENNA_OPERATORS_PORT must be a TCP port (1-65535), got {self.operators_port}")
        for name, value in (("ANTENNA_OPERATORS_SESSION_HOURS", self.operators_session_hours),
                            ("ANTENNA_OPERATORS_LOGIN_ATTEMPTS", self.operators_login_attempts),
                            ("ANTENNA_OPERATORS_LOGIN_WINDOW_SECONDS", self.operators_login_window_seconds)):
            if value < 1:
                raise SettingsError(f"{name} must be >= 1, got {value}")

    @property
    def hour_close_grace(self) -> timedelta:
        return timedelta(minutes=self.hour_close_grace_minutes)

    def postgres_url_for(self, database: str) -> str:
        """The same server as `postgres_url`, another database on it."""
        return urlparse(self.postgres_url)._replace(path=f"/{database}").geturl()

    @property
    def jars_dir(self) -> Path:
        return self.stack_dir / "jars"
