"""Alert receivers of the tests and the alert benchmark: a real SMTP server (aiosmtpd) whose mailbox keeps what it
accepts, and a real HTTP receiver that checks each webhook's signature as the README documents it (its own code,
not the product's). conftest.py's fixtures start them and point both alert channels at them."""

from __future__ import annotations

import email
import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from antenna_assets.alerts.channels import configured_channels
from antenna_assets.alerts.sender import RetryPolicy, Sender

REFUSED_ADDRESS = "nobody@refusing.example"
SMTP_LOGIN = ("antenna-alerts", "smtp password 1234")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mailbox:
    """An aiosmtpd handler that keeps what it accepts and refuses REFUSED_ADDRESS as a real server would."""

    def __init__(self):
        self.messages: list[tuple[str, email.message.Message]] = []
        self.on_message = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address == REFUSED_ADDRESS:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        message = email.message_from_bytes(envelope.original_content)
        self.messages.extend((rcpt, message) for rcpt in envelope.rcpt_tos)
        if self.on_message:
            self.on_message()
        return "250 Message accepted for delivery"

    def received(self) -> list[tuple[str, str]]:
        """(alert id, recipient) of every message, duplicates included."""
        return sorted((m["X-Antenna-Alert-Id"], rcpt) for rcpt, m in self.messages)


class SmtpServer:
    def __init__(self, login: tuple[str, str] | None = None, smtputf8: bool = True):
        self.port, self.mailbox, self.login, self.controller = free_port(), Mailbox(), login, None
        self.smtputf8 = smtputf8

    def _authenticate(self, server, session, envelope, mechanism, auth_data):
        return AuthResult(success=(auth_data.login.decode(), auth_data.password.decode()) == self.login)

    def start(self) -> None:
        auth = dict(auth_required=True, auth_require_tls=False, authenticator=self._authenticate) if self.login else {}
        self.controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port,
                                     enable_SMTPUTF8=self.smtputf8, **auth)
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()


SLOW = 0  # a scripted answer: 200, after longer than the sender waits


class Receiver(ThreadingHTTPServer):
    """A webhook receiver: verifies each request's signature with the key, answers the scripted statuses (then 200)."""

    def __init__(self):
        super().__init__(("127.0.0.1", free_port()), _ReceiverHandler)
        self.key: bytes = b""
        self.script: list[int] = []
        self.requests: list[dict] = []  # alert id, status answered, signature valid, body
        self.before_answer = None
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hooks/antenna?token=path-secret"

    def delivered(self) -> list[str]:
        return sorted(r["alert_id"] for r in self.requests if r["status"] == 200)


class _ReceiverHandler(BaseHTTPRequestHandler):
    def do_POST(self):
        server: Receiver = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        fields = dict(part.split("=", 1) for part in self.headers["Antenna-Signature"].split(","))
        expected = hmac.new(server.key, fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        valid = hmac.compare_digest(expected, fields["v1"]) and abs(time.time() - int(fields["t"])) < 300
        status = server.script.pop(0) if server.script else 200
        slow, status = status == SLOW, status or 200
        server.requests.append({"alert_id": self.headers["Antenna-Alert-Id"], "status": status, "valid": valid,
                                "body": json.loads(body), "path": self.path})
        if server.before_answer:
            server.before_answer()
        if slow:
            time.sleep(1.0)
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def make_sender(alert_settings, url: str, lines: list[str] | None = None) -> Sender:
    return Sender(url, configured_channels(alert_settings), RetryPolicy.of(alert_settings),
                  log=(lines.append if lines is not None else lambda line: None))
