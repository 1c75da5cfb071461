"""The alert channels: email over SMTP and a signed webhook, each on when its setting names a server.

A channel lists an alert's recipients (`recipients`) and sends it to one (`send`), answering with an
`Outcome`: delivered, refused for good (the server's reply says retrying would get the same answer), or
worth trying again later, for this recipient (`retry`) or for the whole channel (`down`: the server could
not be reached, so the sender leaves the channel's other deliveries for a later pass).

Secrets stay in the stack's secrets folder: the SMTP password in `alerts-smtp-password` (written by the
operator), the webhook's signing key in `alerts-webhook-key` (generated on first use). Neither goes to a
setting, a log line or an exception's text.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import http.client
import json
import smtplib
import ssl
import time
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlparse

from antenna_assets.alerts.outbox import payload_json
from antenna_assets.errors import StackError
from antenna_assets.settings import Settings
from antenna_assets.stack.secrets import secrets_dir, stack_secret

SMTP_PASSWORD_FILE = "alerts-smtp-password"
WEBHOOK_KEY_FILE = "alerts-webhook-key"
SIGNATURE_HEADER = "Antenna-Signature"
ALERT_ID_HEADER = "Antenna-Alert-Id"
_REPLY_CHARS = 300  # of a server's reply kept as the delivery's last_error


@dataclass(frozen=True)
class AlertMessage:
    """An alert as the channels send it (a row of `alerts`)."""

    id: int
    kind: str
    subject: str
    dedup_key: str
    payload: dict[str, Any]
    created: datetime

    def document(self) -> dict[str, Any]:
        """The webhook's JSON body (README: Alerts): the same bytes for every attempt."""
        return {"id": self.id, "kind": self.kind, "subject": self.subject, "dedup_key": self.dedup_key,
                "created": self.created.isoformat(), "payload": self.payload}


@dataclass(frozen=True)
class Outcome:
    kind: str  # DELIVERED, REFUSED, RETRY or DOWN
    detail: str = ""


DELIVERED, REFUSED, RETRY, DOWN = "delivered", "refused", "retry", "down"


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _REPLY_CHARS else text[:_REPLY_CHARS - 3] + "..."


def _smtp_reply(code: int, reply: bytes | str) -> str:
    return _clip(f"{code} {reply.decode(errors='replace') if isinstance(reply, bytes) else reply}")


class EmailChannel:
    """One message per recipient, plain text and HTML, over one SMTP session per sender pass."""

    name = "email"

    def __init__(self, settings: Settings):
        self.host, self.port = settings.alerts_smtp_host, settings.alerts_smtp_port
        self.starttls, self.username = settings.alerts_smtp_starttls, settings.alerts_smtp_username
        self.sender, self.operators = settings.alerts_email_from, settings.alerts_operator_emails
        self.to_users, self.timeout = settings.alerts_email_users, settings.alerts_send_timeout_seconds
        self._password_file = secrets_dir(settings) / SMTP_PASSWORD_FILE
        if self.username and not self._password_file.is_file():
            raise StackError(f"ANTENNA_ALERTS_SMTP_USERNAME is set but {self._password_file} does not exist: write "
                             "the SMTP password there (mode 0600)")
        self._session: smtplib.SMTP | None = None

    @property
    def server(self) -> str:
        return f"{self.host}:{self.port}"

    def recipients(self, payload: dict[str, Any]) -> list[str]:
        user = payload.get("user_email") if self.to_users else None
        return list(dict.fromkeys([*self.operators, *([user] if isinstance(user, str) and user else [])]))

    def _open(self) -> smtplib.SMTP:
        if self._session is None:
            session = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            try:
                if self.starttls:
                    session.starttls(context=ssl.create_default_context())
                if self.username:
                    session.login(self.username, self._password_file.read_text().strip())
            except BaseException:
                session.close()
                raise
            self._session = session
        return self._session

    def send(self, alert: AlertMessage, recipient: str) -> Outcome:
        try:
            message = self._message(alert, recipient)
        except ValueError as exc:  # an address no message can carry (a line break in it, say)
            return Outcome(REFUSED, _clip(f"cannot address a message to {recipient!r}: {exc}"))
        try:
            session = self._open()
        except smtplib.SMTPResponseException as exc:  # a greeting, STARTTLS or login the server refused
            return Outcome(DOWN, f"{self.server}: {_smtp_reply(exc.smtp_code, exc.smtp_error)}")
        except smtplib.SMTPException as exc:  # e.g. no STARTTLS or AUTH offered
            return Outcome(DOWN, _clip(f"{self.server}: {exc}"))
        except OSError as exc:  # refused, timed out, a certificate that does not verify
            return Outcome(DOWN, _clip(f"cannot reach {self.server}: {exc or type(exc).__name__}"))
        try:
            session.send_message(message, self.sender, [recipient])
        except smtplib.SMTPNotSupportedError as exc:  # e.g. a non-ASCII address and a server without SMTPUTF8
            return Outcome(REFUSED, _clip(f"{self.server}: {exc}"))
        except smtplib.SMTPRecipientsRefused as exc:
            code, reply = exc.recipients[recipient]
            return Outcome(REFUSED if code >= 500 else RETRY, _smtp_reply(code, reply))
        except smtplib.SMTPSenderRefused as exc:  # the From address: every message would get the same answer
            self.close()
            return Outcome(DOWN, f"sender {self.sender} refused: {_smtp_reply(exc.smtp_code, exc.smtp_error)}")
        except smtplib.SMTPResponseException as exc:  # the message itself (DATA), or the session's state
            self.close()
            return Outcome(REFUSED if exc.smtp_code >= 500 else RETRY, _smtp_reply(exc.smtp_code, exc.smtp_error))
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            return Outcome(DOWN, _clip(f"{self.server}: {exc or type(exc).__name__}"))
        return Outcome(DELIVERED, f"accepted by {self.server}")

    def _message(self, alert: AlertMessage, recipient: str) -> EmailMessage:
        message = EmailMessage()
        message["From"], message["To"] = self.sender, recipient
        message["Subject"] = f"[antenna] {alert.subject}"
        message["Date"] = format_datetime(alert.created)
        # The same id for a resent copy (README: Alerts, at most one duplicate), so a mail client can tell.
        digest = hashlib.sha256(recipient.encode()).hexdigest()[:12]
        message["Message-ID"] = f"<antenna-alert-{alert.id}-{digest}@{self.sender.rsplit('@', 1)[1]}>"
        message["X-Antenna-Alert-Id"], message["X-Antenna-Alert-Kind"] = str(alert.id), alert.kind
        rows = [("kind", alert.kind), ("raised", f"{alert.created:%Y-%m-%d %H:%M:%S %Z}"),
                *((key, value if isinstance(value, str) else json.dumps(value)) for key, value in
                  sorted(alert.payload.items()))]
        message.set_content("\n".join([alert.subject, "", *(f"{key}: {value}" for key, value in rows), "",
                                       f"alert {alert.id} ({alert.dedup_key})"]) + "\n")
        cells = "".join(f"<tr><th align='left'>{html.escape(key)}</th><td>{html.escape(value)}</td></tr>"
                        for key, value in rows)
        message.add_alternative(f"<html><body><h2>{html.escape(alert.subject)}</h2><table>{cells}</table>"
                                f"<p><small>alert {alert.id} ({html.escape(alert.dedup_key)})</small></p>"
                                "</body></html>", subtype="html")
        return message

    def close(self) -> None:
        if self._session is not None:
            try:
                self._session.quit()
            except (OSError, smtplib.SMTPException):
                self._session.close()
            self._session = None


def webhook_signature(key: str, timestamp: int, body: bytes) -> str:
    """The signature header's value: `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>` (README: Alerts)."""
    mac = hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


class WebhookChannel:
    """A JSON POST per alert to the configured URL, signed; redirects are not followed."""

    name = "webhook"

    def __init__(self, settings: Settings):
        self.url = urlparse(settings.alerts_webhook_url)
        self.timeout = settings.alerts_send_timeout_seconds
        self._key, self.key_created = stack_secret(settings, WEBHOOK_KEY_FILE)
        self.key_file = secrets_dir(settings) / WEBHOOK_KEY_FILE

    @property
    def server(self) -> str:
        """The receiver as a delivery row names it: scheme, host and port, not a path that may be its secret."""
        return f"{self.url.scheme}://{self.url.netloc.rsplit('@', 1)[-1]}"

    def recipients(self, payload: dict[str, Any]) -> list[str]:
        return [self.server]

    def send(self, alert: AlertMessage, recipient: str) -> Outcome:
        body = payload_json(alert.document()).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "antenna-alerts",
                   ALERT_ID_HEADER: str(alert.id), SIGNATURE_HEADER: webhook_signature(self._key, int(time.time()), body)}
        connection_class = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        connection = connection_class(self.url.hostname, self.url.port, timeout=self.timeout)
        target = (self.url.path or "/") + (f"?{self.url.query}" if self.url.query else "")
        try:
            connection.request("POST", target, body=body, headers=headers)
            response = connection.getresponse()
            reply = _clip(f"HTTP {response.status} {response.reason}: {response.read(_REPLY_CHARS).decode(errors='replace')}")
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, not HTTP
            return Outcome(DOWN, _clip(f"{self.server}: {exc or type(exc).__name__}"))
        finally:
            connection.close()
        if 200 <= response.status < 300:
            return Outcome(DELIVERED, reply)
        # 429 is the one 4xx that means "later"; a redirect or any other 4xx would get the same answer again.
        return Outcome(RETRY if response.status >= 500 or response.status == 429 else REFUSED, reply)

    def close(self) -> None:
        """Nothing kept between requests."""


Channel = EmailChannel | WebhookChannel


def configured_channels(settings: Settings) -> list[Channel]:
    """The channels the settings turn on, in the order `antenna alerts test` reports them."""
    return [*([EmailChannel(settings)] if settings.alerts_smtp_host else []),
            *([WebhookChannel(settings)] if settings.alerts_webhook_url else [])]
