"""Shared fixtures: one real stack (Kafka + PostgreSQL) and one Spark session per test run.

The test stack lives apart from the demo's (its own folder and ports) so both can run at once.
It is started if it is not already up, and stopped at the end if this run started it.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

os.environ.setdefault("ANTENNA_STACK_DIR", str(REPO / ".stack" / "test"))
os.environ.setdefault("ANTENNA_KAFKA_PORT", "29092")
os.environ.setdefault("ANTENNA_POSTGRES_PORT", "25432")
os.environ.setdefault("ANTENNA_SUPERSET_PORT", "28088")
os.environ.setdefault("ANTENNA_SPARK_MASTER", "local[2]")
os.environ.setdefault("ANTENNA_SPARK_SHUFFLE_PARTITIONS", "2")
os.environ.setdefault("ANTENNA_LAKE_ROOT", str(Path(os.environ["ANTENNA_STACK_DIR"]) / "lake"))
# A GCS API emulator for the gs:// lake tests. The connector jar must be on the classpath when the
# run's one SparkContext starts, and spark_conf() adds it whenever an emulator endpoint is set.
os.environ.setdefault("ANTENNA_GCS_EMULATOR_PORT", "24443")
os.environ.setdefault("ANTENNA_OPERATORS_PORT", "28080")
os.environ.setdefault("ANTENNA_GCS_ENDPOINT", f"http://127.0.0.1:{os.environ['ANTENNA_GCS_EMULATOR_PORT']}")
# The sensors tick every 5 s (30 s and 60 s by default): a test that waits for a daemon to launch
# or relaunch a run waits for a tick, not for the product's idle cost.
os.environ.setdefault("ANTENNA_STREAM_SENSOR_SECONDS", "5")
os.environ.setdefault("ANTENNA_BATCH_SENSOR_SECONDS", "5")
GCS_BUCKET = "antenna-lake-test"

from antenna_assets.settings import Settings  # noqa: E402
from antenna_assets.stack.env import apply_stack_environment  # noqa: E402
from antenna_assets.stack.kafka import KafkaBroker  # noqa: E402
from antenna_assets.stack.postgres import EmbeddedPostgres  # noqa: E402
from antenna_assets.alerts.channels import configured_channels  # noqa: E402
from antenna_assets.stack.secrets import write_private_file  # noqa: E402
from antenna_assets_tests.alert_servers import SMTP_LOGIN, Receiver, SmtpServer  # noqa: E402


def pytest_configure(config):
    # `-m "not slow"` leaves out the tests of minutes (e.g. half a GB through the speed layer).
    config.addinivalue_line("markers", "slow: takes minutes; deselect with -m 'not slow'")
    config.addinivalue_line("markers", "cluster: on a 3-broker Kafka and a Spark standalone cluster; run alone with -m cluster")


# Modules that never touch the session's stack: those that start stacks of their own (own folder and
# ports), and the pure transformations on small DataFrames. `make test` runs them in a second pytest-xdist
# worker beside the rest (`-n 2`): the stacks' tests mostly wait (outages of 20-30 s, recoveries, JVM
# starts), so the two lanes overlap on 2 cores, and that lane ended at 77% of the tests (2e4e4ff) until the
# transformations' ~1 min of Spark moved into it. Every other test shares the one session stack, whose
# fixtures start and stop it, so they stay together in one worker.
SECOND_LANE_MODULES = frozenset({"test_faults", "test_cluster_stack", "test_cluster_faults", "test_transforms"})


def lane(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")
    return "no-session-stack" if module in SECOND_LANE_MODULES else "session-stack"


def pytest_xdist_make_scheduler(config, log):
    # A scheduler of whole lanes, as xdist's by-module one but with the lane as the unit. (Its
    # `xdist_group` mark does the same through node ids, which pytest 9 no longer lets it rewrite.)
    from xdist.scheduler import LoadScopeScheduling

    class LaneScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return lane(nodeid)

    return LaneScheduling(config, log)


@pytest.fixture(scope="session")
def base_settings() -> Settings:
    """The session's settings without starting its stack: for tests that start stacks of their own."""
    return Settings.from_env()


@pytest.fixture(scope="session")
def settings(base_settings) -> Settings:
    settings = base_settings
    services = [EmbeddedPostgres(settings), KafkaBroker(settings)]
    started = [s for s in services if not s.status()[0]]
    for service in services:
        service.up()
    apply_stack_environment(settings)
    yield settings
    if os.environ.get("ANTENNA_KEEP_STACK") != "1":
        for service in reversed(started):
            service.down()


@pytest.fixture(scope="session")
def gcs_emulator(settings):
    """fake-gcs-server (built from its Go module on first use), with the test bucket."""
    from antenna_assets.stack.gcs_emulator import GcsEmulator

    emulator = GcsEmulator(settings)
    assert settings.gcs_endpoint == emulator.endpoint, "ANTENNA_GCS_ENDPOINT must point at the emulator's port"
    started = not emulator.status()[0]
    emulator.up()
    emulator.ensure_bucket(GCS_BUCKET)
    yield emulator
    if started and os.environ.get("ANTENNA_KEEP_STACK") != "1":
        emulator.down()


@pytest.fixture(scope="session")
def spark(base_settings):
    from antenna_assets.resources.spark import build_spark_session

    session = build_spark_session(base_settings, app_name="antenna_assets_tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def postgres(settings):
    from antenna_assets.resources import PostgresResource

    resource = PostgresResource(url=settings.postgres_url)
    resource.migrate()
    return resource


@pytest.fixture
def topic(settings) -> str:
    """A fresh topic per test, so tests never see each other's messages."""

    from antenna_assets.stack.kafka import ensure_topic

    name = f"devices-test-{uuid.uuid4().hex[:10]}"
    ensure_topic(settings.replace(topic=name))
    return name


def fresh_database(settings):
    """A new serving database for one test or module; dropped afterwards."""
    from antenna_assets_tests.databases import temporary_serving_database

    return temporary_serving_database(settings, "test")


@pytest.fixture
def serving_db(settings) -> str:
    with fresh_database(settings) as url:
        yield url


OPERATOR_PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def page(settings):
    """The operators' page's database, fresh for the module, with operator `alice` (password OPERATOR_PASSWORD):
    (its URL as the database's owner, the page's config)."""
    from antenna_assets.postgres import transaction
    from antenna_assets.serving.operators.auth import add_operator
    from antenna_assets.serving.operators.config import PageConfig, prepare_database

    with fresh_database(settings) as url:
        prepare_database(settings, url)
        with transaction(url) as conn:
            add_operator(conn, "alice", OPERATOR_PASSWORD)
        yield url, PageConfig.from_settings(settings, url)


@pytest.fixture
def smtp():
    """A real SMTP server on 127.0.0.1 that takes SMTP_LOGIN (alert_servers.py)."""
    server = SmtpServer(login=SMTP_LOGIN)
    server.start()
    yield server
    if server.controller.server is not None:
        server.stop()


@pytest.fixture
def receiver():
    """A real webhook receiver on 127.0.0.1 that checks each request's signature (alert_servers.py)."""
    server = Receiver()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def alert_settings(settings, tmp_path, smtp, receiver):
    """Both channels on, at the test servers, with the test's own secrets folder and quick retries."""
    tmp_path.joinpath("secrets").mkdir(mode=0o700)
    write_private_file(tmp_path / "secrets" / "alerts-smtp-password", SMTP_LOGIN[1] + "\n")
    configured = settings.replace(
        stack_dir=tmp_path, alerts_smtp_host="127.0.0.1", alerts_smtp_port=smtp.port,
        alerts_smtp_username=SMTP_LOGIN[0], alerts_email_from="alerts@antenna.example",
        alerts_email_to="ops@antenna.example", alerts_email_users=True, alerts_webhook_url=receiver.url,
        alerts_send_timeout_seconds=3.0, alerts_retry_seconds=0.2, alerts_retry_max_seconds=1.0,
        alerts_max_attempts=50, alerts_poll_seconds=0.5)
    configured_channels(configured)  # generates the webhook's key
    receiver.key = (tmp_path / "secrets" / "alerts-webhook-key").read_text().strip().encode()
    return configured
