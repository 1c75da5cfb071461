"""Operator accounts (argon2id hashes) and the sign-in rate limit."""

from __future__ import annotations

import threading
import time
from collections import deque

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from antenna_assets.serving.operators.schema import OPERATORS

MIN_PASSWORD_LENGTH = 10
MAX_NAME_LENGTH = 64
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters
# Verified when the name is unknown, so an unknown name costs the same time as a wrong password.
_DUMMY_HASH = _HASHER.hash("not a password of anyone")


class OperatorError(ValueError):
    """A refused operator name or password; the message says why."""


def check_new_operator(name: str, password: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH or not name.isprintable() or name != name.strip():
        raise OperatorError(f"operator name must be 1-{MAX_NAME_LENGTH} printable characters without surrounding spaces")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise OperatorError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def add_operator(conn, name: str, password: str, reset: bool = False) -> bool:
    """Create the operator (or, with `reset`, set a new password); returns whether it was created.
    Run with the product's own connection: the page's role cannot write operators."""
    check_new_operator(name, password)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM operators WHERE name = %s", (name,))
        exists = cur.fetchone() is not None
        if exists and not reset:
            raise OperatorError(f"operator {name!r} already exists: use --reset-password to give it a new password")
        cur.execute(f"{OPERATORS.insert_into(('name', 'password_hash'))} VALUES (%s, %s) "
                    "ON CONFLICT (name) DO UPDATE SET password_hash = EXCLUDED.password_hash",
                    (name, hash_password(password)))
    return not exists


def verify_operator(conn, name: str, password: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT password_hash FROM operators WHERE name = %s", (name,))
        row = cur.fetchone()
    try:
        return _HASHER.verify(row[0] if row else _DUMMY_HASH, password) and row is not None
    except (VerificationError, InvalidHashError):
        return False


class LoginRateLimiter:
    """At most `attempts` failed sign-ins per `window_seconds`, counted separately per operator name
    and per client address; in this process's memory (a restart forgets them; one process serves)."""

    def __init__(self, attempts: int, window_seconds: float):
        self.attempts, self.window = attempts, window_seconds
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures.setdefault(key, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        return failures

    def retry_after(self, name: str, address: str) -> int:
        """0 if a sign-in may be tried now, else the seconds until it may."""
        now = time.monotonic()
        with self._lock:
            waits = [failures[0] + self.window - now
                     for failures in (self._recent(f"name:{name}", now), self._recent(f"addr:{address}", now))
                     if len(failures) >= self.attempts]
        return max(1, int(max(waits)) + 1) if waits else 0

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"name:{name}", f"addr:{address}"):
                self._recent(key, now).append(now)
            # Bounded memory under a flood of names: forget keys without recent failures.
            if len(self._failures) > 10_000:
                for key in [k for k, v in self._failures.items() if not v or v[-1] <= now - self.window]:
                    del self._failures[key]
