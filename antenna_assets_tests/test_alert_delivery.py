"""Alerts' delivery half: the outbox (alerts/outbox.py), the email and webhook channels and the sender, against a
real PostgreSQL, a real SMTP server (aiosmtpd) and a real HTTP receiver that checks the signature as the README
documents it (its own code, not the product's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from aiosmtpd.controller import Controller
from hypothesis import given, settings as hypothesis_settings, strategies as st

from antenna_assets.alerts.channels import DELIVERED, DOWN, REFUSED, RETRY, Outcome
from antenna_assets.alerts.outbox import enqueue_alert
from antenna_assets.alerts.sender import RetryPolicy, after_try
from antenna_assets.postgres import transaction
from antenna_assets.stack.alert_sender import AlertSender, alert_environment
from antenna_assets_tests.alert_servers import REFUSED_ADDRESS, SLOW, SMTP_LOGIN, SmtpServer, make_sender
from antenna_assets_tests.databases import writer_url

# The test server takes a login without TLS (STARTTLS would need a certificate the client trusts).
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")


@pytest.fixture
def alerts_db(settings, serving_db) -> str:
    """A fresh serving database, as the pipeline's writer role sees it (what the rules and the sender log in as)."""
    return writer_url(settings, serving_db)


def _enqueue(url: str, *alerts: tuple[str, str | None]) -> list[int]:
    """Quota alerts for (user, user_email) pairs; their ids."""
    with transaction(url) as conn, conn.cursor() as cur:
        for user, user_email in alerts:
            enqueue_alert(cur, kind="quota.provisional", subject=f"{user} over quota (provisional)",
                          dedup_key=f"quota.provisional:{user}:2026-12-06T13", payload={
                              "user": user, "hour": "2026-12-06T13:00:00Z", "bytes": 1_500_000, "quota": 1_000_000,
                              **({"user_email": user_email} if user_email else {})})
        cur.execute("SELECT id FROM alerts ORDER BY id")
        return [row[0] for row in cur.fetchall()]


def _deliveries(url: str) -> list[tuple]:
    with transaction(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT alert_id, channel, recipient, state, attempts, last_error FROM alert_deliveries "
                    "ORDER BY alert_id, channel, recipient")
        return cur.fetchall()


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_enqueue_is_once_per_dedup_key_and_in_the_callers_transaction(alerts_db):
    with transaction(alerts_db) as conn, conn.cursor() as cur:
        assert enqueue_alert(cur, kind="quota.provisional", subject="u1 over quota", dedup_key="quota.provisional:u1:h",
                             payload={"user_email": "u1@example.com", "bytes": 12})
        assert not enqueue_alert(cur, kind="quota.provisional", subject="again", dedup_key="quota.provisional:u1:h",
                                 payload={})
    # The caller's rollback takes the alert with it.
    with pytest.raises(RuntimeError), transaction(alerts_db) as conn, conn.cursor() as cur:
        assert enqueue_alert(cur, kind="quota.final", subject="u2", dedup_key="quota.final:u2:h", payload={})
        raise RuntimeError("the rule's transaction fails after deciding")
    with transaction(alerts_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT kind, subject, payload, state, attempts FROM alerts ORDER BY id")
        assert cur.fetchall() == [("quota.provisional", "u1 over quota", {"user_email": "u1@example.com", "bytes": 12},
                                   "pending", 0)]
        with pytest.raises(ValueError):
            enqueue_alert(cur, kind="Quota Final", subject="s", dedup_key="k", payload={})
        with pytest.raises(psycopg2.errors.CheckViolation):
            cur.execute("UPDATE alerts SET state = 'delivered'")


def test_email_and_signed_webhook_once_and_a_refused_recipient_fails_alone(alert_settings, alerts_db, smtp, receiver):
    refused_alert, good_alert = _enqueue(alerts_db, ("u1", REFUSED_ADDRESS), ("u2", "u2@antenna.example"))
    lines: list[str] = []
    sender = make_sender(alert_settings, alerts_db, lines)
    report = sender.deliver_due()
    assert (report.delivered, report.failed, report.retrying) == (5, 1, 0)
    for _ in range(3):  # later passes send nothing again, the refusal included
        sender.deliver_due()
        time.sleep(0.3)
    sender.close()

    assert smtp.mailbox.received() == sorted([(str(refused_alert), "ops@antenna.example"),
                                              (str(good_alert), "ops@antenna.example"),
                                              (str(good_alert), "u2@antenna.example")])
    message = next(m for rcpt, m in smtp.mailbox.messages if rcpt == "u2@antenna.example")
    assert message["Subject"] == "[antenna] u2 over quota (provisional)"
    parts = {part.get_content_type(): part.get_payload(decode=True).decode() for part in message.walk()
             if not part.is_multipart()}
    assert "bytes: 1500000" in parts["text/plain"] and "<th align='left'>quota</th><td>1000000</td>" in parts["text/html"]

    assert receiver.delivered() == sorted([str(refused_alert), str(good_alert)])
    assert all(r["valid"] and r["path"] == "/hooks/antenna?token=path-secret" for r in receiver.requests)
    body = next(r["body"] for r in receiver.requests if r["alert_id"] == str(good_alert))
    assert body["kind"] == "quota.provisional" and body["payload"]["user_email"] == "u2@antenna.example"

    deliveries = {(a, c, r): (state, attempts, error) for a, c, r, state, attempts, error in _deliveries(alerts_db)}
    state, attempts, error = deliveries[(refused_alert, "email", REFUSED_ADDRESS)]
    assert (state, attempts) == ("failed", 1) and error.startswith("550 5.1.1") and "User unknown" in error
    assert deliveries[(refused_alert, "webhook", f"http://127.0.0.1:{receiver.server_address[1]}")][:2] == ("sent", 1)
    with transaction(alerts_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, state, attempts, last_error, sent_at IS NOT NULL FROM alerts ORDER BY id")
        summary = {row[0]: row[1:] for row in cur.fetchall()}
    assert summary[good_alert] == ("sent", 1, None, True)
    assert summary[refused_alert][:2] == ("failed", 1)
    assert summary[refused_alert][2].startswith(f"email {REFUSED_ADDRESS}: 550 5.1.1")
    # The secrets appear nowhere the sender writes.
    assert not any(SMTP_LOGIN[1] in line or receiver.key.decode() in line for line in lines)


def test_addresses_no_message_can_carry_fail_alone(alert_settings, alerts_db):
    """A header injection, and a non-ASCII address on a server without SMTPUTF8: failed, the operators' copies sent."""
    injected, international = "u1@antenna.example\nBcc: everyone@antenna.example", "jösé@exämple.com"
    ascii_only = SmtpServer(smtputf8=False)
    ascii_only.start()
    try:
        ids = _enqueue(alerts_db, ("u1", injected), ("u2", international))
        sender = make_sender(alert_settings.replace(alerts_webhook_url="", alerts_smtp_port=ascii_only.port,
                                                alerts_smtp_username=""), alerts_db)
        sender.deliver_due()
        sender.close()
    finally:
        ascii_only.stop()
    assert ascii_only.mailbox.received() == [(str(i), "ops@antenna.example") for i in ids]
    rows = {recipient: (state, attempts, error) for _, _, recipient, state, attempts, error in _deliveries(alerts_db)}
    assert rows[injected][:2] == ("failed", 1) and "linefeed" in rows[injected][2]
    assert rows[international][:2] == ("failed", 1) and "SMTPUTF8" in rows[international][2]


def _self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for `localhost` and its key, PEM files: the test SMTP server's, and the CA the client trusts."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(hours=1))
                   .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def test_starttls_then_login(alert_settings, alerts_db, tmp_path, monkeypatch):
    """The server takes a login only over TLS (aiosmtpd's default): the message arriving proves STARTTLS, with
    the server's certificate checked (the client trusts it through SSL_CERT_FILE, as a system CA)."""
    import ssl

    cert_file, key_file = _self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    tls = SmtpServer()
    tls.controller = Controller(tls.mailbox, hostname="127.0.0.1", port=tls.port, tls_context=context,
                                require_starttls=True, auth_required=True, authenticator=SmtpServer(SMTP_LOGIN)._authenticate)
    tls.controller.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    try:
        secure = alert_settings.replace(alerts_smtp_host="localhost", alerts_smtp_port=tls.port,
                                        alerts_smtp_starttls=True, alerts_webhook_url="")
        [alert] = _enqueue(alerts_db, ("u1", None))
        sender = make_sender(secure, alerts_db)
        assert sender.deliver_due().delivered == 1
        sender.close()
    finally:
        tls.stop()
    assert tls.mailbox.received() == [(str(alert), "ops@antenna.example")]


def test_smtp_down_for_a_while_then_back_delivers_each_once(alert_settings, alerts_db, smtp, receiver):
    smtp.stop()
    sender = make_sender(alert_settings, alerts_db)
    stopping = threading.Event()
    loop = threading.Thread(target=sender.run, args=(alert_settings.alerts_poll_seconds, stopping.is_set))
    loop.start()
    try:
        ids = _enqueue(alerts_db, ("u1", None), ("u2", None), ("u3", None))
        assert _wait_for(lambda: len(receiver.delivered()) == 3, 10)  # the webhook is not held up by the email
        time.sleep(3)  # the SMTP server stays down a while; several tries fail meanwhile
        email_rows = [row for row in _deliveries(alerts_db) if row[1] == "email"]
        assert [row[3] for row in email_rows] == ["pending"] * 3
        assert max(row[4] for row in email_rows) >= 2 and "cannot reach" in email_rows[0][5]
        smtp.start()
        assert _wait_for(lambda: len(smtp.mailbox.messages) == 3, 10)
        time.sleep(1.5)  # a later pass would show a duplicate
    finally:
        stopping.set()
        loop.join(10)
        sender.close()
    assert smtp.mailbox.received() == [(str(i), "ops@antenna.example") for i in ids]
    assert receiver.delivered() == [str(i) for i in ids]
    with transaction(alerts_db) as conn, conn.cursor() as cur:
        cur.execute("SELECT DISTINCT state FROM alerts")
        assert cur.fetchall() == [("sent",)]


def test_webhook_retries_5xx_until_accepted_and_fails_4xx_without_retry(alert_settings, alerts_db, smtp, receiver):
    webhook_only = alert_settings.replace(alerts_smtp_host="")
    first, second = _enqueue(alerts_db, ("u1", None), ("u2", None))
    receiver.script = [500, 503, 200, 404]  # the first alert: 500, 503, then accepted; the second refused
    sender = make_sender(webhook_only, alerts_db)
    sender.deliver_due()  # first: 500; the pass moves on to second: 503
    assert _wait_for(lambda: (sender.deliver_due(), len(receiver.requests) >= 4)[1], 10)
    for _ in range(5):
        time.sleep(0.3)
        sender.deliver_due()
    sender.close()
    assert [(r["alert_id"], r["status"]) for r in receiver.requests] == [
        (str(first), 500), (str(second), 503), (str(first), 200), (str(second), 404)]
    rows = {a: (state, attempts, error) for a, _, _, state, attempts, error in _deliveries(alerts_db)}
    assert rows[first] == ("sent", 2, None)
    assert rows[second][:2] == ("failed", 2) and rows[second][2].startswith("HTTP 404")


def test_webhook_timeout_is_retried(alert_settings, alerts_db, receiver):
    """A receiver slower than the timeout: tried again (it may have acted on the first request: the same id says so)."""
    [alert] = _enqueue(alerts_db, ("u1", None))
    receiver.script = [SLOW]
    sender = make_sender(alert_settings.replace(alerts_smtp_host="", alerts_send_timeout_seconds=0.3), alerts_db)
    report = sender.deliver_due()
    assert (report.delivered, report.retrying) == (0, 1) and "timed out" in report.channels_down["webhook"]
    assert _wait_for(lambda: sender.deliver_due().delivered == 1, 5)
    sender.close()
    assert [(r["alert_id"], r["status"]) for r in receiver.requests] == [(str(alert), 200)] * 2
    assert _deliveries(alerts_db)[0][3:5] == ("sent", 2)


def _child_environment(alert_settings, url: str) -> dict[str, str]:
    return {**os.environ, **alert_environment(alert_settings), "ANTENNA_POSTGRES_URL": url,
            "ANTENNA_STACK_DIR": str(alert_settings.stack_dir)}


def _deliver_process(alert_settings, url: str, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "antenna_assets.cli", "alerts", "deliver", "--loop"],
                                env=_child_environment(alert_settings, url), stdout=out, stderr=subprocess.STDOUT)


def test_sender_killed_after_the_receiver_accepted_sends_that_one_alert_at_most_twice(
        alert_settings, alerts_db, smtp, receiver, tmp_path):
    """The documented bound: a sender killed between a server's acceptance and its commit sends that one
    delivery again after a restart, with the same alert id; every other delivery goes exactly once."""
    ids = _enqueue(alerts_db, *((f"u{i}", None) for i in range(6)))
    process = _deliver_process(alert_settings, alerts_db, tmp_path / "sender.log")

    def kill_at_third():  # the receiver has the request; the sender dies before it hears the answer
        if len(receiver.requests) == 3:
            os.kill(process.pid, signal.SIGKILL)

    receiver.before_answer = kill_at_third
    try:
        assert process.wait(30) == -signal.SIGKILL
        receiver.before_answer = None
        restarted = _deliver_process(alert_settings, alerts_db, tmp_path / "sender.log")
        try:
            assert _wait_for(lambda: len(receiver.requests) == 7 and len(smtp.mailbox.messages) == 6, 30), \
                (tmp_path / "sender.log").read_text()
            time.sleep(1.5)
        finally:
            restarted.send_signal(signal.SIGTERM)
            assert restarted.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    received = [r["alert_id"] for r in receiver.requests]
    assert sorted(received) == sorted([str(i) for i in ids] + [received[2]])  # the third twice, the rest once
    assert smtp.mailbox.received() == sorted((str(i), "ops@antenna.example") for i in ids)
    assert {row[3] for row in _deliveries(alerts_db)} == {"sent"}


def test_alerts_test_command_says_per_channel_what_happened(alert_settings, alerts_db, smtp, receiver, tmp_path):
    def run(settings):
        return subprocess.run([sys.executable, "-m", "antenna_assets.cli", "alerts", "test"],
                              env=_child_environment(settings, alerts_db), capture_output=True, text=True, timeout=60)

    done = run(alert_settings.replace(alerts_email_to=f"ops@antenna.example,{REFUSED_ADDRESS}"))
    lines = done.stdout.splitlines()
    assert done.returncode == 1 and len(lines) == 2, done.stdout + done.stderr
    assert lines[0].startswith(f"email (127.0.0.1:{smtp.port}): delivered to ops@antenna.example; FAILED for "
                               f"{REFUSED_ADDRESS}: 550 5.1.1")
    assert lines[1].startswith(f"webhook (http://127.0.0.1:{receiver.server_address[1]}): delivered")
    assert receiver.requests[0]["body"]["kind"] == "test" and receiver.requests[0]["valid"]

    smtp.stop()
    done = run(alert_settings)
    assert done.returncode == 1 and "email (" in done.stdout and "NOT YET for ops@antenna.example (cannot reach" \
        in done.stdout, done.stdout

    bad = run(alert_settings.replace(alerts_webhook_url="ftp://files.example/in"))
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == ("antenna: error: ANTENNA_ALERTS_WEBHOOK_URL must be an http:// or https:// URL with a host, "
                          "got ftp://...\n")


def test_the_stack_starts_the_sender_when_a_channel_is_configured_and_stops_it(alert_settings, alerts_db, smtp,
                                                                              receiver):
    assert AlertSender(alert_settings.replace(alerts_smtp_host="", alerts_webhook_url="")).up() == \
        "alert sender: not started, no alert channel is configured"
    service = AlertSender(alert_settings.replace(postgres_url=alerts_db))
    assert service.up().startswith("alert sender started")
    try:
        assert service.status()[0]
        [alert] = _enqueue(alerts_db, ("u1", "u1@antenna.example"))
        assert _wait_for(lambda: len(smtp.mailbox.messages) == 2 and len(receiver.requests) == 1, 10)
    finally:
        assert service.down().startswith("alert sender stopped")
    log = service.log_file.read_text()
    assert "alert sender: stopped" in log and f"alert {alert} (quota.provisional) webhook: delivered" in log
    assert SMTP_LOGIN[1] not in log and receiver.key.decode() not in log
    assert not service.status()[0]


OUTCOMES = st.sampled_from([Outcome(DELIVERED), Outcome(REFUSED, "550 no"), Outcome(RETRY, "503 later"),
                            Outcome(DOWN, "refused")])


@hypothesis_settings(max_examples=300, deadline=None)
@given(first=st.floats(0.01, 60), cap=st.floats(0.01, 3600), max_attempts=st.integers(1, 60),
       outcomes=st.lists(OUTCOMES, max_size=80))
def test_a_delivery_ends_sent_once_or_failed_with_bounded_doubling_back_off(first, cap, max_attempts, outcomes):
    """However its tries go, a delivery is tried at most max_attempts times, stops at the first acceptance or
    refusal, and waits between tries a delay that doubles from the first and never passes the cap."""
    policy = RetryPolicy(first, cap, max_attempts)
    attempts, state, delays = 0, "pending", []
    for outcome in outcomes:
        if state != "pending":
            break
        step = after_try(policy, attempts, outcome)
        assert step.attempts == attempts + 1 <= max_attempts
        attempts, state = step.attempts, step.state
        if outcome.kind == DELIVERED:
            assert state == "sent" and step.last_error is None
        elif outcome.kind == REFUSED or attempts == max_attempts:
            assert state == "failed" and outcome.detail in step.last_error
        else:
            assert state == "pending" and step.retry_in == min(first * 2 ** (attempts - 1), cap)
            delays.append(step.retry_in)
    assert delays == sorted(delays) and all(d <= cap for d in delays)
    tried = outcomes[:attempts]
    assert (state == "sent") == (bool(tried) and tried[-1].kind == DELIVERED)
    assert sum(o.kind == DELIVERED for o in tried) <= 1
