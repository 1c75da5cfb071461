"""Quota alert latency under live load (issue 31): from the produce of the event that puts a user over their
hourly quota to the alert's receipt by a local SMTP server and a local webhook receiver.

    python -m bench.bench_alerts [--rate 20000] [--crossings 20] [--seconds 180] [--settle 30] [--quick]
                                 [--no-record]

Needs the stack (`antenna stack up`: Kafka and PostgreSQL) and the environment pointing at it, as the other
benchmarks. On a fresh topic, serving database and lake folder, everything at its default settings:
- background load: the paced producer of bench_speed_layer, R events/s over 2,000 users; the contract's 20
  users (the only background users with a quota) get a quota no load reaches, so they raise no alert;
- the real SpeedLayer with the default SpeedLayerConfig, in this process;
- the alert rules as in production: `evaluate`, the function alert_rules_sensor calls, in its own
  transaction every ANTENNA_ALERTS_EVALUATE_SECONDS (start to start), in a thread. Not a dagster-daemon: on
  this 2-core machine the daemon and its code server would take CPU from the stream being measured, and a
  sensor with minimum_interval_seconds ticks no more often than this loop (the daemon adds its own loop's
  slack on top), so the loop's figures are the rules' part as the default interval makes it, without the
  daemon's overhead;
- the sender as `antenna stack up` starts it (stack/alert_sender.py: `antenna alerts deliver --loop` in a
  process of its own), delivering email to an aiosmtpd server and signed webhooks to an HTTP receiver that
  checks the signature, both in this process (antenna_assets_tests/alert_servers.py's SmtpServer and Receiver);
- N users of their own (not in the background load), hourly quota QUOTA bytes: PREFILL_EVENTS events bring
  each to PREFILL_EVENTS x EVENT_BYTES, below it, PREFILL_LEAD_SECONDS before its crossing; at its crossing
  one more event of EVENT_BYTES puts it over. Crossings are spread over the measured window with random
  phase against the evaluation's ticks.
Per crossing: seconds from the crossing event's produce call to the email's and the webhook's receipt, and
the parts: to its user showing over quota in serving_users_over_quota_1h (polled every POLL_SECONDS: the
speed layer), then to its alert's creation (the evaluation that enqueued it), then to the receipt (the
sender). Checked: each crossing user has exactly one alert, a quota.provisional, received once by each
channel; no other quota alert. Target: p99 <= 30 s on both channels.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import threading
import time
from contextlib import closing

import numpy as np
import psycopg2

from antenna_assets.alerts.channels import configured_channels
from antenna_assets.alerts.evaluate import evaluate
from antenna_assets.alerts.rules import PROVISIONAL
from antenna_assets.hours import utc_now
from antenna_assets.postgres import transaction
from antenna_assets.serving.views import SERVING_USERS_OVER_QUOTA_1H
from antenna_assets.settings import Settings
from antenna_assets.sources.simulator.producer import PRODUCER_TUNING
from antenna_assets.sources.user_metadata import add_users
from antenna_assets.sources.users import APPS, PROVISIONED_USERS, User, antenna_id, user_id
from antenna_assets.speed.config import SpeedLayerConfig
from antenna_assets.speed.layer import SpeedLayer, run_until_stopped
from antenna_assets.stack.alert_sender import AlertSender
from antenna_assets_tests.databases import writer_url
from antenna_assets_tests.alert_servers import Receiver, SmtpServer
from bench.bench_speed_layer import produce_paced, scratch_folder, scratch_topic, spark_session, targets
from bench.common import BackgroundLoop, cluster_settings, fresh_database, record_run

TARGET_P99_SECONDS = 30.0
QUOTA = 50_000  # bytes per hour of each crossing user
EVENT_BYTES = 9_000  # within the contract's 0..9999
PREFILL_EVENTS = 5  # 45,000 bytes: below the quota; the crossing event makes 54,000
PREFILL_LEAD_SECONDS = 10.0
FIRST_CROSSING_USER = 900_001  # far from the background's users 1..2,000
UNREACHABLE_QUOTA = 10**15
POLL_SECONDS = 0.2
OPERATOR = "ops@bench.example"

SECTION = "## Alerts: latency"
SECTION_INTRO = (
    "`bench/bench_alerts.py` (issue 31): live background load through the speed layer (default settings,\n"
    "Spark `local[2]`), the alert rules evaluated every `ANTENNA_ALERTS_EVALUATE_SECONDS` (default 15 s; the\n"
    "sensor's function in a loop, see the module's doc), the sender as the stack starts it, an aiosmtpd server\n"
    "and a signature-checking webhook receiver in the benchmark's process. N users each pushed over a 50,000 B\n"
    "hourly quota by one event at a known produce time, spread over the window. Latency: the crossing event's\n"
    "produce call -> the email's / the webhook's receipt, p50 / p99 / max. Parts (p50 / p99): the speed layer\n"
    "(-> over quota in serving_users_over_quota_1h, polled every 200 ms), the evaluation's wait (-> the alert\n"
    "created), the sender (-> email received). Target: p99 < 30 s.\n\n")
TABLE_HEADER = ("| date | machine | command | events/s sent | crossings: alerted once | produce -> email p50 / p99 / max "
                "| produce -> webhook p50 / p99 / max | parts p50 / p99: speed layer, evaluation wait, sender "
                "| target met |\n|---|---|---|---|---|---|---|---|---|\n")


def crossing_users(count: int) -> list[User]:
    return [User(user_id(FIRST_CROSSING_USER + i), f"crossing{i}", f"crossing{i}@bench.example", QUOTA)
            for i in range(count)]


def crossing_times(start: float, count: int, seconds: float, seed: int = 31) -> list[float]:
    """One crossing per slot of the window, at a random point of it (random phase against the evaluation's
    ticks); moved past an hour boundary that would fall between a user's prefill and its crossing (the
    crossing would then start a new hour instead of crossing the quota)."""
    rng = np.random.default_rng(seed)
    slot = seconds / count
    times = []
    for i in range(count):
        at = start + i * slot + rng.uniform(0, slot)
        if int(at // 3600) != int((at - PREFILL_LEAD_SECONDS) // 3600):
            at = (at // 3600) * 3600 + PREFILL_LEAD_SECONDS + 1
        times.append(at)
    return times


class Injector(BackgroundLoop):
    """Produces each crossing user's prefill, then its crossing event, at the scheduled times; keeps the time
    of each crossing event's produce call."""

    def __init__(self, bootstrap: str, topic: str, users: list[User], times: list[float]):
        super().__init__("crossing-injector")
        self.bootstrap, self.topic = bootstrap, topic
        steps = [(at - PREFILL_LEAD_SECONDS, PREFILL_EVENTS, user, False) for user, at in zip(users, times)]
        steps += [(at, 1, user, True) for user, at in zip(users, times)]
        self.steps = sorted(steps, key=lambda step: step[0])
        self.produced_at: dict[str, float] = {}  # email -> the crossing event's produce call

    def _run(self, stop: threading.Event) -> None:
        from confluent_kafka import Producer

        producer = Producer({**PRODUCER_TUNING, "linger.ms": 5, "bootstrap.servers": self.bootstrap})
        for at, events, user, crossing in self.steps:
            if stop.wait(max(0.0, at - time.time())):
                break
            now = time.time()
            message = json.dumps({"timestamp": int(now), "id": user.id, "antenna_id": antenna_id(0),
                                  "bytes": EVENT_BYTES, "app": APPS[0]}).encode()
            for _ in range(events):
                producer.produce(self.topic, message)
            if crossing:
                self.produced_at[user.email] = now
            producer.flush(30)
        if producer.flush(30):
            raise RuntimeError("the crossing events could not all be delivered")


class OverQuotaPoller(BackgroundLoop):
    """When each crossing user first shows over quota in serving_users_over_quota_1h (the speed layer's part)."""

    def __init__(self, url: str, emails: list[str]):
        super().__init__("over-quota-poller")
        self.url, self.emails = url, emails
        self.first_seen: dict[str, float] = {}

    def _run(self, stop: threading.Event) -> None:
        with closing(psycopg2.connect(self.url)) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute(f"SELECT email FROM {SERVING_USERS_OVER_QUOTA_1H} WHERE source = 'speed' "
                                "AND email = ANY(%s)", (self.emails,))
                    now = time.time()
                    for (email,) in cur.fetchall():
                        self.first_seen.setdefault(email, now)
                    stop.wait(POLL_SECONDS)


class RuleEvaluations(BackgroundLoop):
    """`evaluate` as alert_rules_sensor runs it, every `interval` seconds from start to start."""

    def __init__(self, url: str, settings: Settings):
        super().__init__("alert-rules")
        self.url, self.settings = url, settings
        self.seconds: list[float] = []

    def _run(self, stop: threading.Event) -> None:
        due = time.time()
        while not stop.is_set():
            started = time.time()
            with transaction(self.url) as conn:
                evaluate(conn, self.settings, utc_now())
            self.seconds.append(time.time() - started)
            due += self.settings.alerts_evaluate_seconds
            stop.wait(max(0.0, due - time.time()))


def received_at(messages: list, lock: threading.Lock) -> tuple[list[float], callable]:
    """A hook for SmtpServer.mailbox.on_message / Receiver.before_answer: stamps what arrived since its last call."""
    stamps: list[float] = []

    def stamp() -> None:
        with lock:
            stamps.extend([time.time()] * (len(messages) - len(stamps)))
    return stamps, stamp


def _prepare_users(url: str, users: list[User]) -> None:
    """The crossing users added and the contract's users' quotas raised, as an operator would (`url`: an owner's)."""
    with transaction(url) as conn:
        add_users(conn, users)
        with conn.cursor() as cur:
            cur.execute("UPDATE user_metadata SET quota = %s WHERE id = ANY(%s)",
                        (UNREACHABLE_QUOTA, [u.id for u in PROVISIONED_USERS]))


def _alerts(url: str) -> list[tuple[str, str, str | None, float]]:
    """(id, kind, email, created as epoch seconds) of every alert."""
    with transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT id::text, kind, payload->>'email', extract(epoch FROM created) FROM alerts ORDER BY id")
        return [(i, kind, email, float(created)) for i, kind, email, created in cur.fetchall()]


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    p50, p99 = np.percentile(values, 50), np.percentile(values, 99)
    return f"{p50:.1f} / {p99:.1f} / {max(values):.1f} s"


def _p50_p99(values: list[float]) -> str:
    return f"{np.percentile(values, 50):.1f} / {np.percentile(values, 99):.1f}" if values else "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_alerts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=20_000, help="background events/s (default 20,000)")
    parser.add_argument("--crossings", type=int, default=20, help="users pushed over quota (default 20)")
    parser.add_argument("--seconds", type=float, default=180, help="window the crossings are spread over (default 180)")
    parser.add_argument("--settle", type=float, default=30, help="seconds of load before the first crossing (default 30)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 crossings over 45 s after 20 s of load")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to BENCHMARKS.md")
    args = parser.parse_args(argv)
    count, seconds, settle = (5, 45, 20) if args.quick else (args.crossings, args.seconds, args.settle)
    settings = Settings.from_env()
    # After the last crossing: two evaluation intervals and the sender's poll for its alert to arrive.
    tail = 2 * settings.alerts_evaluate_seconds + settings.alerts_poll_seconds + 10
    users = crossing_users(count)
    emails = [u.email for u in users]
    spark = spark_session("bench_alerts")
    smtp, receiver = SmtpServer(), Receiver()
    smtp.start()
    lock = threading.Lock()
    mail_stamps, smtp.mailbox.on_message = received_at(smtp.mailbox.messages, lock)
    hook_stamps, receiver.before_answer = received_at(receiver.requests, lock)
    try:
        with scratch_topic(settings, "alerts") as topic, fresh_database(settings) as admin_url, \
                scratch_folder() as folder:
            url = writer_url(settings, admin_url)
            _prepare_users(admin_url, users)
            alert_settings = settings.replace(
                postgres_url=url, alerts_smtp_host="127.0.0.1", alerts_smtp_port=smtp.port,
                alerts_email_to=OPERATOR, alerts_webhook_url=receiver.url)
            configured_channels(alert_settings)  # generates the webhook's key in the stack's secrets
            receiver.key = (settings.stack_dir / "secrets" / "alerts-webhook-key").read_text().strip().encode()
            sender = AlertSender(alert_settings)
            print(sender.up(), flush=True)
            try:
                layer = SpeedLayer(spark, SpeedLayerConfig(query_name=topic.replace("-", "_")),
                                   targets(settings, topic, admin_url, folder))
                sent_path = folder / "sent.npz"
                load_seconds = settle + seconds + tail
                producer = multiprocessing.get_context("spawn").Process(
                    target=produce_paced, args=(settings.kafka_bootstrap, topic, args.rate, load_seconds,
                                                str(sent_path)), name="alerts-background", daemon=True)
                producer.start()
                start = time.time()
                times = crossing_times(start + settle, count, seconds)
                print(f"{args.rate:,.0f} events/s for {load_seconds:.0f} s; {count} crossings over {seconds:g} s "
                      f"after {settle:g} s; rules every {settings.alerts_evaluate_seconds} s", flush=True)
                with Injector(settings.kafka_bootstrap, topic, users, times) as injector, \
                        OverQuotaPoller(url, emails) as poller, RuleEvaluations(url, settings) as rules:
                    run_until_stopped(layer, should_stop=lambda: producer.exitcode is not None, poll_seconds=0.5)
                if producer.exitcode != 0:
                    sys.exit(f"the background producer failed (exit code {producer.exitcode})")
                sent_at = np.load(sent_path)["sent_at"]
                alerts = _alerts(url)
            finally:
                print(sender.down(), flush=True)
    finally:
        smtp.stop()
        receiver.shutdown()
        receiver.server_close()
        spark.stop()

    by_id = {alert_id: (kind, email, created) for alert_id, kind, email, created in alerts}
    mails = [(m["X-Antenna-Alert-Id"], rcpt, at) for (rcpt, m), at in zip(smtp.mailbox.messages, mail_stamps)]
    hooks = [(r["alert_id"], r["valid"], at) for r, at in zip(receiver.requests, hook_stamps) if r["status"] == 200]
    problems, email_latency, hook_latency, once = [], [], [], 0
    speed_part, evaluation_part, sender_part = [], [], []
    for email in emails:
        mine = [(i, kind, created) for i, (kind, owner, created) in by_id.items() if owner == email]
        produced = injector.produced_at.get(email)
        if produced is None or [kind for _, kind, _ in mine] != [PROVISIONAL]:
            problems.append(f"{email}: alerts {[kind for _, kind, _ in mine]}, produced {produced is not None}")
            continue
        alert_id, _, created = mine[0]
        got_mail = [at for i, rcpt, at in mails if i == alert_id and rcpt == OPERATOR]
        got_hook = [at for i, valid, at in hooks if i == alert_id and valid]
        if len(got_mail) != 1 or len(got_hook) != 1:
            problems.append(f"{email}: {len(got_mail)} emails, {len(got_hook)} valid webhooks")
        else:
            once += 1
        if got_mail:
            email_latency.append(got_mail[0] - produced)
            sender_part.append(got_mail[0] - created)
        if got_hook:
            hook_latency.append(got_hook[0] - produced)
        seen = poller.first_seen.get(email)
        if seen is not None:
            speed_part.append(seen - produced)
            evaluation_part.append(created - seen)
        print(f"  {email}: produced {produced:.1f}, over quota +{(seen or np.nan) - produced:.1f} s, alert created "
              f"+{created - produced:.1f} s, email +{(got_mail or [np.nan])[0] - produced:.1f} s, webhook "
              f"+{(got_hook or [np.nan])[0] - produced:.1f} s", flush=True)
    others = [kind for kind, owner, _ in by_id.values() if owner not in emails]
    if any(kind.startswith("quota.") for kind in others):
        problems.append(f"quota alerts of other users: {others}")
    in_window = sent_at[(sent_at >= start + settle) & (sent_at < start + settle + seconds)]
    sent_rate = len(in_window) / seconds
    met = (not problems and np.percentile(email_latency, 99) < TARGET_P99_SECONDS
           and np.percentile(hook_latency, 99) < TARGET_P99_SECONDS)
    parts = (f"{_p50_p99(speed_part)}, {_p50_p99(evaluation_part)}, {_p50_p99(sender_part)} s; "
             f"an evaluation took {_p50_p99(rules.seconds)} s")
    print(f"sent {sent_rate:,.0f} events/s over the window ({len(sent_at):,} in all); {once} of {count} crossings "
          f"alerted exactly once; produce -> email {_spread(email_latency)}, -> webhook {_spread(hook_latency)}; "
          f"parts: {parts}; other alerts: {others or 'none'}", flush=True)
    for problem in problems:
        print(f"  PROBLEM {problem}", flush=True)
    command = cluster_settings(settings) + "python -m bench.bench_alerts" + (" --quick" if args.quick else (
        f" --crossings {count} --seconds {seconds:g} --settle {settle:g}")) + (
        f" --rate {args.rate:g}" if args.rate != 20_000 else "")
    record_run(SECTION, SECTION_INTRO, TABLE_HEADER, command, [
        f"{sent_rate:,.0f}", f"{once} of {count}", _spread(email_latency), _spread(hook_latency), parts,
        "yes" if met else "no"], dry_run=args.no_record)
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
