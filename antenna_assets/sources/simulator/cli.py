"""`antenna simulate`: send device usage messages to Kafka, live or as a backfill."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime


def _number(kind, minimum=None, maximum=None, above=None):
    """An argparse type: `kind` within bounds, with a one-line message otherwise."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, got {text!r}") from None
        if value != value or (minimum is not None and value < minimum) or (maximum is not None and value > maximum) \
                or (above is not None and value <= above):
            bounds = [f">= {minimum}" if minimum is not None else "", f"<= {maximum}" if maximum is not None else "",
                      f"> {above}" if above is not None else ""]
            raise argparse.ArgumentTypeError(f"must be {' and '.join(b for b in bounds if b)}, got {text}")
        return value
    return parse


def _utc_datetime(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO date-time in UTC like 2026-11-28T13:00, got {text!r}") from None


def _apps(text: str) -> tuple[str, ...]:
    apps = tuple(a.strip() for a in text.split(",") if a.strip())
    if not apps:
        raise argparse.ArgumentTypeError("expected a comma-separated list of app names")
    return apps


def _producer_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected librdkafka property=value, got {text!r}")
    return key, value


def register(subparsers) -> None:
    from antenna_assets.sources.users import APPS

    parser = subparsers.add_parser(
        "simulate", help="send device usage messages to Kafka (live, or a backfill of past hours)",
        usage="antenna simulate [options]   (antenna simulate --help lists them)",
        description="Live mode sends one message per user every --interval seconds stamped with the current time; "
                    "--backfill-hours sends past hours of event time as fast as possible.")
    add = parser.add_argument
    add("--bootstrap", help="Kafka bootstrap servers (default: ANTENNA_KAFKA_BOOTSTRAP, else the local stack)")
    add("--topic", help="topic (default: ANTENNA_TOPIC, else devices)")
    add("--users", type=_number(int, minimum=1), default=20, help="number of users (default 20, the contract's)")
    add("--antennas", type=_number(int, minimum=1), default=5, help="number of antennas (default 5)")
    add("--apps", type=_apps, default=APPS, help=f"comma-separated app names (default {','.join(APPS)})")
    add("--interval", type=_number(float, above=0), default=60.0, help="seconds between ticks; one message per user per tick (default 60)")
    add("--rate", type=_number(float, above=0), help="messages per second overall (overrides --interval); with --backfill-hours, the backfill is sent at this pace")
    add("--duration", type=_number(float, above=0), help="stop after this many seconds")
    add("--count", type=_number(int, minimum=1), help="stop after this many messages")
    add("--backfill-hours", type=_number(float, minimum=0), default=0, help="send this many hours of past event time, as fast as possible (or at --rate)")
    add("--start", type=_utc_datetime, help="backfill: UTC start of the event time (default: this hour minus the backfill)")
    add("--seed", type=_number(int, minimum=0), help="random seed: the same seed sends the same messages")
    add("--malformed-fraction", type=_number(float, minimum=0, maximum=1), default=0.0, help="probability that a message is malformed")
    add("--extra-field-fraction", type=_number(float, minimum=0, maximum=1),
        help="probability that a valid message carries an unknown field (default 0.05 with --malformed-fraction, else 0)")
    add("--processes", type=_number(int, minimum=1), default=1, help="producing processes (default 1)")
    add("--ground-truth", metavar="PATH", help="write the ground truth (totals per hour and 5-minute window) as JSON")
    add("--no-progress", action="store_true", help="no progress lines on stderr")
    add("-X", dest="producer_options", metavar="PROP=VALUE", type=_producer_option, action="append", default=[],
        help="librdkafka producer property, overriding the tuned defaults (repeatable)")
    parser.set_defaults(handler=lambda args: _simulate(args, parser))


def _simulate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from antenna_assets.kafka_client import librdkafka_config
    from antenna_assets.settings import Settings
    from antenna_assets.sources.simulator import SimulationError, SimulatorConfig, SimulatorConfigError, simulate

    settings = Settings.from_env()
    config = SimulatorConfig(
        bootstrap=args.bootstrap or settings.kafka_bootstrap, topic=args.topic or settings.topic,
        users=args.users, antennas=args.antennas, apps=args.apps, interval_seconds=args.interval, rate=args.rate,
        duration_seconds=args.duration, count=args.count, backfill_hours=args.backfill_hours, start=args.start,
        seed=args.seed, malformed_fraction=args.malformed_fraction, extra_field_fraction=args.extra_field_fraction,
        processes=args.processes, ground_truth_path=args.ground_truth, progress=not args.no_progress,
        producer_options=dict(args.producer_options), kafka_client=librdkafka_config(settings),
    )
    try:
        config.validate()
    except SimulatorConfigError as exc:
        parser.error(str(exc))
    try:
        result = simulate(config)
    except SimulationError as exc:
        print(f"antenna simulate: error: {exc}", file=sys.stderr)
        return 1
    truth = result.truth
    print(f"sent {result.produced:,} messages to {config.topic} on {config.bootstrap} in {result.seconds:.1f} s "
          f"({result.rate:,.0f} msg/s, {result.processes} process(es), seed {truth.seed}): {truth.messages:,} valid, "
          f"{truth.malformed:,} malformed, {truth.with_extra_fields:,} with extra fields"
          + (f"; ground truth in {config.ground_truth_path}" if config.ground_truth_path else ""))
    return 0
