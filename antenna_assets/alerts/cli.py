"""`antenna alerts deliver [--loop]` and `antenna alerts test`."""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import time
import uuid
from datetime import datetime, timezone

READY_LINE = "alert sender: delivering by"  # what `antenna stack up` waits for (stack/alert_sender.py)
NO_CHANNEL = "no alert channel is configured: set ANTENNA_ALERTS_SMTP_HOST and/or ANTENNA_ALERTS_WEBHOOK_URL"


def register(commands) -> None:
    parser = commands.add_parser("alerts", help="deliver the alerts outbox by email and webhook")
    actions = parser.add_subparsers(dest="action", required=True)
    deliver = actions.add_parser("deliver", help="deliver the due alerts once (or, with --loop, until stopped)")
    deliver.add_argument("--loop", action="store_true",
                         help="keep delivering: what `antenna stack up` starts when a channel is configured")
    deliver.set_defaults(handler=_deliver)
    actions.add_parser("test", help="send one test alert to every configured channel, a line per channel on what "
                                    "happened").set_defaults(handler=_test)


def _log(line: str) -> None:
    print(f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} {line}", flush=True)


def _sender(settings, log=_log):
    """The sender of the configured channels, the database migrated (a no-op at this version); None without channels."""
    from antenna_assets.alerts.channels import WebhookChannel, configured_channels
    from antenna_assets.alerts.sender import RetryPolicy, Sender
    from antenna_assets.postgres import connect
    from antenna_assets.serving.migration import migrate

    channels = configured_channels(settings)
    if not channels:
        return None
    for channel in channels:
        if isinstance(channel, WebhookChannel) and channel.key_created:
            print(f"webhook: a new signing key is in {channel.key_file}: give it to the receiver "
                  "(`antenna stack env --show-secrets` prints it)", flush=True)
    conn = connect(settings.postgres_url)
    try:
        migrate(conn)
    finally:
        conn.close()
    return Sender(settings.postgres_url, channels, RetryPolicy.of(settings), log=log)


def _deliver(args: argparse.Namespace) -> int:
    from antenna_assets.settings import Settings

    settings = Settings.from_env()
    sender = _sender(settings)
    if sender is None:
        print(f"antenna alerts deliver: {NO_CHANNEL}", file=sys.stderr)
        return 1
    try:
        if not args.loop:
            print(sender.deliver_due().line())
            return 0
        stopping = []
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
        _log(f"{READY_LINE} {', '.join(f'{c.name} ({c.server})' for c in sender.channels.values())}")
        sender.run(settings.alerts_poll_seconds, stop=lambda: bool(stopping))
        _log("alert sender: stopped")
        return 0
    finally:
        sender.close()


def _test(args: argparse.Namespace) -> int:
    from antenna_assets.alerts.outbox import enqueue_alert
    from antenna_assets.postgres import transaction
    from antenna_assets.settings import Settings

    settings = Settings.from_env()
    sender = _sender(settings, log=lambda line: None)  # the outcome is this command's lines, per channel
    if sender is None:
        print(f"antenna alerts test: {NO_CHANNEL}", file=sys.stderr)
        return 1
    dedup_key = f"test:{uuid.uuid4()}"
    with transaction(settings.postgres_url) as conn, conn.cursor() as cur:
        enqueue_alert(cur, kind="test", subject="Test alert", dedup_key=dedup_key,
                      payload={"sent_by": f"antenna alerts test on {socket.gethostname()}"})
        cur.execute("SELECT id FROM alerts WHERE dedup_key = %s", (dedup_key,))
        alert_id = cur.fetchone()[0]
    try:
        sender.deliver_due(only_alert=alert_id)
    finally:
        sender.close()
    rows = _tried_deliveries(settings, alert_id, wait_seconds=2 * settings.alerts_send_timeout_seconds + 5)
    lines = [_channel_line(channel, [r for r in rows if r[0] == channel.name]) for channel in sender.channels.values()]
    print("\n".join(lines))
    return 0 if rows and all(state == "sent" for _, _, state, *_ in rows) else 1


def _tried_deliveries(settings, alert_id: int, wait_seconds: float) -> list[tuple]:
    """The test alert's deliveries once each was tried (one a running sender claimed first finishes there)."""
    from antenna_assets.postgres import transaction

    deadline = time.monotonic() + wait_seconds
    while True:
        with transaction(settings.postgres_url) as conn, conn.cursor() as cur:
            cur.execute("""SELECT channel, recipient, state, attempts, last_error, extract(epoch FROM next_attempt - now())
                           FROM alert_deliveries WHERE alert_id = %s ORDER BY channel, recipient""", (alert_id,))
            rows = cur.fetchall()
        if all(attempts for *_, attempts, _, _ in rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def _channel_line(channel, rows: list[tuple]) -> str:
    if not rows:
        return f"{channel.name} ({channel.server}): no recipient for a test alert (ANTENNA_ALERTS_EMAIL_TO is empty)"
    sent = [recipient for _, recipient, state, *_ in rows if state == "sent" and recipient != channel.server]
    parts = [f"delivered{' to ' + ', '.join(sent) if sent else ''}"] if any(r[2] == "sent" for r in rows) else []
    for _, recipient, state, attempts, error, retry_in in rows:
        if state == "failed":
            parts.append(f"FAILED for {recipient}: {error}")
        elif state == "pending":
            parts.append(f"NOT YET for {recipient}" + (f" ({error}; the sender tries again in {max(retry_in, 0):.0f} s)"
                                                       if attempts else " (not tried yet)"))
    return f"{channel.name} ({channel.server}): {'; '.join(parts)}"
