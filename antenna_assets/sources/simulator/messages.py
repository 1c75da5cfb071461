"""The random content of the messages and their JSON text.

Randomness is drawn per block of messages from a generator seeded with (seed, block index), so the
messages do not depend on how blocks are spread over processes. Valid messages are built from
pre-rendered fragments (the hot path); the rare malformed or extra-field ones go through `json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from antenna_assets.sources.contract import (ANTENNA_ID, APP, BROKEN_JSON, BYTES, FIELD_NAMES, ID, MISSING_FIELD,
                                             NEGATIVE_BYTES, TIMESTAMP, WRONG_TYPE)

MAX_BYTES = 9999  # the original simulator's bytes per report: uniform in 0..9999
# The contract's rejection reasons the simulator produces on purpose: the parser must give exactly these.
MALFORMED_KINDS = (BROKEN_JSON, MISSING_FIELD, WRONG_TYPE, NEGATIVE_BYTES)
EXTRA_FIELD = "signal"
_NON_NUMERIC = ("many", "lots", "n/a")


@dataclass
class BlockDraws:
    """Random choices for every message slot of a block (tick-major, one slot per user per tick)."""

    antenna: np.ndarray
    nbytes: np.ndarray
    app: np.ndarray
    malformed_kind: np.ndarray  # index into MALFORMED_KINDS, -1 when the message is valid
    extra: np.ndarray  # valid message carrying an unknown field
    detail: np.ndarray  # picks the variant of a malformed message or the extra field's value


def draw_block(seed: int, block: int, size: int, antennas: int, apps: int,
               malformed_fraction: float, extra_field_fraction: float) -> BlockDraws:
    rng = np.random.default_rng([seed, block])
    antenna = rng.integers(0, antennas, size)
    nbytes = rng.integers(0, MAX_BYTES + 1, size)
    app = rng.integers(0, apps, size)
    if malformed_fraction == 0 and extra_field_fraction == 0:
        return BlockDraws(antenna, nbytes, app, np.full(size, -1), np.zeros(size, dtype=bool), np.zeros(size, dtype=np.int64))
    malformed = rng.random(size) < malformed_fraction
    malformed_kind = np.where(malformed, rng.integers(0, len(MALFORMED_KINDS), size), -1)
    extra = (rng.random(size) < extra_field_fraction) & ~malformed
    return BlockDraws(antenna, nbytes, app, malformed_kind, extra, rng.integers(0, 2**31, size))


def _compact(message: dict) -> str:
    return json.dumps(message, separators=(",", ":"))


class MessageRenderer:
    """JSON text of messages for fixed users, antennas and apps."""

    def __init__(self, user_ids: tuple[str, ...], antenna_ids: tuple[str, ...], apps: tuple[str, ...]):
        self.user_ids, self.antenna_ids, self.apps = user_ids, antenna_ids, apps
        # `{"timestamp":T,"id":"U","antenna_id":"A","bytes":B,"app":"P"}` cut at the variable parts.
        self._user_parts = [f'{u}","{ANTENNA_ID}":"' for u in user_ids]
        self._antenna_parts = [f'{a}","{BYTES}":' for a in antenna_ids]
        self._app_parts = [f',"{APP}":"{p}"}}' for p in apps]

    def render_tick(self, timestamp: int, antennas: list[int], nbytes: list[int], apps: list[int]) -> list[str]:
        """Valid messages of users 0..len(antennas)-1 at one tick."""
        head = f'{{"{TIMESTAMP}":{timestamp},"{ID}":"'
        antenna_parts, app_parts = self._antenna_parts, self._app_parts
        return [head + u + antenna_parts[a] + str(b) + app_parts[p]
                for u, a, b, p in zip(self._user_parts, antennas, nbytes, apps)]

    def render_special(self, timestamp: int, user: int, antenna: int, nbytes: int, app: int,
                       malformed_kind: int, detail: int) -> str:
        """A malformed message of the given kind, or (kind -1) a valid one with an extra field."""
        message: dict = {TIMESTAMP: timestamp, ID: self.user_ids[user], ANTENNA_ID: self.antenna_ids[antenna],
                         BYTES: nbytes, APP: self.apps[app]}
        kind = MALFORMED_KINDS[malformed_kind] if malformed_kind >= 0 else None
        if kind is None:
            message[EXTRA_FIELD] = -40 - detail % 60
        elif kind == BROKEN_JSON:
            text = _compact(message)
            # Any proper prefix of an object is invalid JSON: its closing brace is the last character.
            return text[: 1 + detail % (len(text) - 1)]
        elif kind == MISSING_FIELD:
            del message[FIELD_NAMES[detail % len(FIELD_NAMES)]]
        elif kind == WRONG_TYPE:
            name = (BYTES, TIMESTAMP)[detail % 2]
            if (detail >> 1) % 2:
                message[name] = message[name] + 0.5
            else:
                message[name] = _NON_NUMERIC[(detail >> 2) % len(_NON_NUMERIC)]
        else:  # negative_bytes
            message[BYTES] = -1 - detail % (MAX_BYTES + 1)
        return _compact(message)
