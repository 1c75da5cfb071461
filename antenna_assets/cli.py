"""`antenna`: the product's command line."""

from __future__ import annotations

import argparse
import sys

from antenna_assets.lake.gcs import GcsLakeError
from antenna_assets.errors import StackError
from antenna_assets.settings import Settings, SettingsError


def _stack(args: argparse.Namespace) -> int:
    from antenna_assets.stack.alert_sender import AlertSender
    from antenna_assets.stack.dagster_ui import DagsterUI
    from antenna_assets.stack.env import export_lines
    from antenna_assets.stack.gcs_emulator import GcsEmulator
    from antenna_assets.stack.kafka import KafkaBroker
    from antenna_assets.stack.live_traffic import LiveTraffic
    from antenna_assets.stack.operators_page import OperatorsPage
    from antenna_assets.stack.postgres import EmbeddedPostgres
    from antenna_assets.stack.spark_cluster import SparkCluster
    from antenna_assets.stack.superset import Superset

    settings = Settings.from_env()
    services = [EmbeddedPostgres(settings), KafkaBroker(settings)]
    spark_cluster = SparkCluster(settings)
    if settings.spark_workers:
        services.append(spark_cluster)
    superset, operators_page = Superset(settings), OperatorsPage(settings)
    # Optional: started by `antenna demo`, `stack up --superset/--operators` or the tests, stopped with the stack.
    alert_sender = AlertSender(settings)  # with the stack whenever an alert channel is configured
    extras = [superset, operators_page, DagsterUI(settings), LiveTraffic(settings), GcsEmulator(settings), alert_sender]
    if not settings.spark_workers:
        extras.append(spark_cluster)  # one started with ANTENNA_SPARK_WORKERS before is stopped with the stack
    if args.action == "up":
        for service in services:
            print(service.up(), flush=True)
        if args.operators or settings.operators_page:
            print(operators_page.up(), flush=True)
            print("create an operator with: antenna operators add NAME")
        if alert_sender.configured:
            print(alert_sender.up(), flush=True)
        print('point a shell at it with: eval "$(antenna stack env)"')
        if args.superset or settings.superset:
            # Kafka and PostgreSQL stay up if Superset cannot start: its error is the command's own.
            print(superset.up(), flush=True)
            print(f"dashboard: {superset.dashboard_url}  ({superset.login_hint()})")
    elif args.action == "down":
        for service in [*extras, *reversed(services)]:
            print(service.down(), flush=True)
    elif args.action == "status":
        healthy = True
        for service in services:
            ok, line = service.status()
            healthy &= ok
            print(line)
        for service in extras:
            print(service.status()[1])
        return 0 if healthy else 1
    elif args.action == "env":
        print(export_lines(settings, show_secrets=args.show_secrets))
    return 0


def _jars(args: argparse.Namespace) -> int:
    from antenna_assets.stack import jars

    settings = Settings.from_env()
    for name, fetch in (("kafka", jars.kafka_jars), ("spark", jars.spark_jars), ("local_fs", jars.local_fs_jars)):
        print(f"{name}: {len(fetch(settings.jars_dir))} jars in {settings.jars_dir / name}", flush=True)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="antenna", description="Antenna usage lambda pipeline on Dagster.")
    commands = parser.add_subparsers(dest="command", required=True)
    stack = commands.add_parser("stack", help="the local stack: Kafka broker and PostgreSQL")
    stack.add_argument("action", choices=["up", "down", "status", "env"])
    stack.add_argument("--superset", action="store_true",
                       help="up: also start Apache Superset with the dashboards (or set ANTENNA_SUPERSET=1)")
    stack.add_argument("--operators", action="store_true",
                       help="up: also start the operators' web page (or set ANTENNA_OPERATORS_PAGE=1)")
    stack.add_argument("--show-secrets", action="store_true",
                       help="env: also print the stack's generated passwords and keys (else only where they are)")
    stack.set_defaults(handler=_stack)
    commands.add_parser("jars", help="fetch and cache the Kafka broker and Spark connector jars").set_defaults(handler=_jars)
    # Each layer adds its own sub-commands; their modules import their heavy parts lazily.
    from antenna_assets.alerts.cli import register as register_alerts
    from antenna_assets.demo import register as register_demo
    from antenna_assets.retention.storage import register as register_storage
    from antenna_assets.serving.operators.cli import register as register_operators
    from antenna_assets.sources.simulator.cli import register as register_simulate
    from antenna_assets.speed.cli import register as register_stream
    from antenna_assets.speed.dead_letter_retention import register as register_dead_letters

    for register in (register_simulate, register_stream, register_dead_letters, register_demo, register_operators,
                     register_alerts, register_storage):
        register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (StackError, SettingsError, GcsLakeError) as exc:
        print(f"antenna: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("antenna: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
