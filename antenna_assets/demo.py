"""`antenna demo`: the whole pipeline on the embedded defaults, end to end.

Stack up, a few backfilled hours of simulated traffic, the speed layer catching up through
Dagster, the hourly batch for those hours, the head of every table, then the Dagster UI (with
the streaming and hourly sensors on) and live traffic in the background.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser("demo", help="run the whole pipeline end to end on the local stack")
    parser.add_argument("--hours", type=int, default=3, help="hours of backfilled traffic (default 3)")
    parser.add_argument("--first-hour", type=_hour, default=None, metavar="YYYY-MM-DD-HH:00",
                        help="UTC hour of the first backfilled hour (default: the hours just before this one)")
    parser.add_argument("--seed", type=int, default=2026, help="simulator seed (default 2026)")
    parser.add_argument("--live-minutes", type=float, default=30,
                        help="minutes of live traffic after the batch (default 30; 0: none)")
    parser.add_argument("--live-interval", type=float, default=60,
                        help="seconds between two messages of a user in live traffic (contract: 60)")
    parser.add_argument("--no-ui", action="store_true", help="do not start the web UIs (Dagster UI, operators' page)")
    parser.add_argument("--no-superset", action="store_true", help="do not start Apache Superset (the dashboards)")
    parser.set_defaults(handler=_demo)


def _hour(text: str) -> datetime:
    try:
        return datetime.strptime(text, "%Y-%m-%d-%H:00")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an hour like 2026-11-28-05:00, got {text!r}") from None


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _demo(args: argparse.Namespace) -> int:
    import dagster as dg

    from antenna_assets.assets.batch import hourly_tables, raw_devices
    from antenna_assets.assets.sources import user_metadata
    from antenna_assets.assets.speed import speed_layer
    from antenna_assets.partitions import partition_range_tags
    from antenna_assets.sources.user_metadata import provision_users
    from antenna_assets.resources import LakeResource, PostgresResource, SparkResource
    from antenna_assets.kafka_client import librdkafka_config
    from antenna_assets.settings import Settings
    from antenna_assets.sources.simulator import SimulatorConfig, simulate
    from antenna_assets.stack.dagster_ui import DagsterUI
    from antenna_assets.stack.env import apply_stack_environment
    from antenna_assets.errors import StackError
    from antenna_assets.stack.kafka import KafkaBroker
    from antenna_assets.stack.live_traffic import LiveTraffic
    from antenna_assets.stack.operators_page import OperatorsPage
    from antenna_assets.stack.postgres import EmbeddedPostgres
    from antenna_assets.stack.superset import Superset
    from antenna_assets.hours import utc_now

    if args.hours < 1:
        raise SystemExit("antenna demo: error: --hours must be >= 1")
    first_hour = args.first_hour or utc_now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=args.hours)
    if first_hour + timedelta(hours=args.hours) > utc_now():
        raise SystemExit("antenna demo: error: the backfilled hours must have ended: choose an earlier --first-hour")
    settings = Settings.from_env()
    _say("local stack")
    for service in (EmbeddedPostgres(settings), KafkaBroker(settings)):
        print(service.up(), flush=True)
    apply_stack_environment(settings)
    postgres = PostgresResource(url=settings.postgres_url)
    postgres.migrate()
    with postgres.connect() as conn:
        provision_users(conn)

    _say(f"simulated traffic: {args.hours} backfilled hour(s) from {first_hour:%Y-%m-%d %H:00} UTC")
    sent_before = SentHours(KafkaBroker(settings).home / "demo-sent-hours.json", settings.topic)
    hours = [first_hour + timedelta(hours=n) for n in range(args.hours)]
    to_send = sorted(set(hours) - sent_before.hours())
    if len(to_send) < len(hours):
        print(f"{len(hours) - len(to_send)} of these hour(s) already sent to {settings.topic!r} by an earlier demo: "
              "not sent again (Kafka messages carry no id, so a copy would count twice)")
    for start, count in contiguous_runs(to_send):
        truth_path = settings.stack_dir / f"demo-ground-truth-{start:%Y%m%d%H}.json"
        result = simulate(SimulatorConfig(bootstrap=settings.kafka_bootstrap, topic=settings.topic,
                                          backfill_hours=count, start=start, seed=args.seed,
                                          malformed_fraction=0.01, ground_truth_path=str(truth_path),
                                          kafka_client=librdkafka_config(settings)))
        sent_before.add([start + timedelta(hours=n) for n in range(count)])
        print(f"{result.produced} messages ({result.truth.malformed} malformed on purpose); ground truth in {truth_path}")

    instance = dg.DagsterInstance.get()
    lake = LakeResource.from_settings(settings)
    resources = {"postgres": postgres, "lake": lake, "spark": SparkResource.for_lake(lake)}
    _say("speed layer: Spark Structured Streaming catches up on the topic (trigger available_now)")
    # Backfilled history reaches Kafka out of event-time order across partitions: the catch-up
    # allows a day of lateness, the live stream later runs with the contract's 1 minute.
    streaming = dg.materialize([speed_layer], instance=instance, resources=resources, run_config={
        **_INFO_LOGS, "ops": {"speed_layer": {"config": {"trigger": "available_now", "watermark": "1 day"}}}})
    landing = streaming.asset_materializations_for_node("speed_layer")[0].metadata
    print(f"good messages: {landing['good_messages'].value}, dead letters: {landing['dead_letters'].value}")

    keys = [f"{first_hour + timedelta(hours=n):%Y-%m-%d-%H:%M}" for n in range(args.hours)]
    _say(f"batch layer: hours {keys[0]} .. {keys[-1]} in one Spark run")
    batch = dg.materialize([user_metadata, raw_devices, hourly_tables], instance=instance, resources=resources,
                           run_config=_INFO_LOGS, tags=partition_range_tags(keys[0], keys[-1]))
    for evaluation in batch.get_asset_check_evaluations():
        verdict = "passed" if evaluation.passed else f"FAILED ({evaluation.severity.value})"
        print(f"check {evaluation.asset_key.to_user_string()}.{evaluation.check_name}: {verdict}")

    _say("retention: every store's retention applied once (storage_retention; hourly with the UI's schedule)")
    from antenna_assets.assets.retention import nothing_removed, storage_retention

    retention = dg.materialize([storage_retention], instance=instance, run_config=_INFO_LOGS, resources={
        "lake": lake, "retention_postgres": PostgresResource.for_retention(settings)})
    metadata = retention.asset_materializations_for_node("storage_retention")[0].metadata
    print("nothing to remove: every store is within its retention" if nothing_removed(metadata)
          else f"removed: {metadata['summary'].value}")

    _say("serving tables (PostgreSQL)")
    with postgres.connect() as conn:
        print_table_heads(conn)

    if args.live_minutes > 0:
        print(LiveTraffic(settings).up(args.live_interval, args.live_minutes * 60))
    if not args.no_ui:
        ui = DagsterUI(settings)
        print(ui.up())
        _say(f"Dagster UI: {ui.url}  (the sensors keep the stream alive and compute each hour as it closes)")
        operators_page = OperatorsPage(settings)
        print(operators_page.up())
        _say(f"operators' page: {operators_page.url}  (create an operator first: antenna operators add NAME)")
    if not args.no_superset:
        superset = Superset(settings)
        try:
            print(superset.up(), flush=True)
            _say(f"dashboard: {superset.dashboard_url}  ({superset.login_hint()})")
        except StackError as exc:  # the pipeline runs on without its dashboards
            print(f"antenna demo: superset not started: {exc}", flush=True)
    print('stop everything with: antenna stack down   (or: make stop)')
    return 0


class SentHours:
    """The hours of backfilled traffic the demo has sent to `topic`, kept beside the broker's data
    (deleting the stack deletes both)."""

    def __init__(self, path: Path, topic: str):
        self.path, self.topic = path, topic

    def _all(self) -> dict[str, list[str]]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def hours(self) -> set[datetime]:
        return {datetime.fromisoformat(hour) for hour in self._all().get(self.topic, [])}

    def add(self, hours: list[datetime]) -> None:
        sent = self._all()
        sent[self.topic] = sorted({*sent.get(self.topic, []), *(hour.isoformat() for hour in hours)})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(sent, indent=1))


def contiguous_runs(hours: list[datetime]) -> list[tuple[datetime, int]]:
    """Sorted hours as (first hour, count) runs of consecutive hours."""
    runs: list[tuple[datetime, int]] = []
    for hour in sorted(hours):
        if runs and runs[-1][0] + timedelta(hours=runs[-1][1]) == hour:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((hour, 1))
    return runs


# The runs' progress and results, without Dagster's step-by-step DEBUG events (they stay in the UI).
_INFO_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
SERVING_TABLES = ("user_metadata", "bytes_agg_antenna", "bytes_agg_user", "bytes_agg_app", "bytes_agg_antenna_1h",
                  "bytes_agg_user_1h", "bytes_agg_app_1h", "users_over_quota_1h", "dead_letter")


def print_table_heads(conn, rows: int = 5) -> None:
    """Row count and the newest rows of every serving table."""
    with conn.cursor() as cur:
        for table in SERVING_TABLES:
            cur.execute(f"SELECT count(*) FROM {table}")
            count = cur.fetchone()[0]
            order = "id" if table == "user_metadata" else ("ingest_time DESC" if table == "dead_letter" else "date DESC, 1")
            columns = "topic, kafka_partition, kafka_offset, reason, left(preview, 40)" if table == "dead_letter" else "*"
            cur.execute(f"SELECT {columns} FROM {table} ORDER BY {order} LIMIT %s", (rows,))
            names = [d[0] for d in cur.description]
            print(f"\n{table} ({count} rows)")
            print("  " + " | ".join(names))
            for row in cur.fetchall():
                print("  " + " | ".join(str(v) for v in row))
