"""What a run sent, aggregated the way the serving tables are: per hour and per 5-minute window.

Workers accumulate into `TruthAccumulator` (numpy vectors, cheap to add and to merge across
processes); `GroundTruth` is the readable, JSON-serialisable result keyed by ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

WINDOW_SECONDS = 300
HOUR_SECONDS = 3600


@dataclass
class Totals:
    """Valid messages and byte sums of one window or hour, by antenna id, user id and app."""

    messages: int = 0
    antenna: dict[str, int] = field(default_factory=dict)
    user: dict[str, int] = field(default_factory=dict)
    app: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"messages": self.messages, "antenna": self.antenna, "user": self.user, "app": self.app}

    @classmethod
    def from_dict(cls, data: dict) -> "Totals":
        return cls(data["messages"], dict(data["antenna"]), dict(data["user"]), dict(data["app"]))


@dataclass
class GroundTruth:
    """Everything a run delivered; `hours` and `windows` count valid messages only."""

    messages: int = 0
    malformed: int = 0
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    with_extra_fields: int = 0
    hours: dict[datetime, Totals] = field(default_factory=dict)
    windows: dict[datetime, Totals] = field(default_factory=dict)
    seed: int | None = None

    def to_json(self, path: str | Path) -> None:
        data = {
            "messages": self.messages,
            "malformed": self.malformed,
            "malformed_by_kind": self.malformed_by_kind,
            "with_extra_fields": self.with_extra_fields,
            "seed": self.seed,
            "hours": {start.isoformat(): totals.to_dict() for start, totals in sorted(self.hours.items())},
            "windows": {start.isoformat(): totals.to_dict() for start, totals in sorted(self.windows.items())},
        }
        Path(path).write_text(json.dumps(data, indent=1))

    @classmethod
    def from_json(cls, path: str | Path) -> "GroundTruth":
        data = json.loads(Path(path).read_text())
        return cls(
            messages=data["messages"],
            malformed=data["malformed"],
            malformed_by_kind=dict(data["malformed_by_kind"]),
            with_extra_fields=data["with_extra_fields"],
            seed=data.get("seed"),
            hours={datetime.fromisoformat(k): Totals.from_dict(v) for k, v in data["hours"].items()},
            windows={datetime.fromisoformat(k): Totals.from_dict(v) for k, v in data["windows"].items()},
        )


def _naive_utc(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).replace(tzinfo=None)


class TruthAccumulator:
    """Per-window byte sums and message counts as one vector per window.

    A window's vector has one slot per user, then per antenna, then per app; bytes and counts
    are kept apart so a key that only sent 0-byte messages still appears in the totals.
    """

    def __init__(self, users: int, antennas: int, apps: int, malformed_kinds: int):
        self.users, self.antennas, self.apps = users, antennas, apps
        self.slots = users + antennas + apps
        self.windows: dict[int, np.ndarray] = {}  # window start (epoch s) -> int64[2, slots]: bytes, counts
        self.malformed_by_kind = np.zeros(malformed_kinds, dtype=np.int64)
        self.with_extra_fields = 0

    def add(self, timestamps: np.ndarray, user: np.ndarray, antenna: np.ndarray, app: np.ndarray,
            nbytes: np.ndarray, malformed_kind: np.ndarray, extra: np.ndarray) -> None:
        """Add messages (parallel arrays); `malformed_kind` is -1 for a valid message."""
        if len(timestamps) == 0:
            return
        valid = malformed_kind < 0
        self.malformed_by_kind += np.bincount(malformed_kind[~valid], minlength=len(self.malformed_by_kind))
        self.with_extra_fields += int(np.count_nonzero(extra & valid))
        window_starts, window_of = np.unique(timestamps[valid] // WINDOW_SECONDS * WINDOW_SECONDS, return_inverse=True)
        base = window_of * self.slots
        keys = np.concatenate([base + user[valid], base + self.users + antenna[valid],
                               base + self.users + self.antennas + app[valid]])
        size = len(window_starts) * self.slots
        byte_sums = np.bincount(keys, weights=np.tile(nbytes[valid], 3).astype(np.float64), minlength=size)
        counts = np.bincount(keys, minlength=size)
        # float64 sums of integers stay exact far beyond any window's byte total (< 2**53).
        sums = np.stack([np.rint(byte_sums).astype(np.int64), counts]).reshape(2, len(window_starts), self.slots)
        for position, start in enumerate(window_starts.tolist()):
            self._add_window(start, sums[:, position, :])

    def _add_window(self, start: int, vector: np.ndarray) -> None:
        if start in self.windows:
            self.windows[start] += vector
        else:
            self.windows[start] = vector.copy()

    def merge(self, other: "TruthAccumulator") -> None:
        for start, vector in other.windows.items():
            self._add_window(start, vector)
        self.malformed_by_kind += other.malformed_by_kind
        self.with_extra_fields += other.with_extra_fields

    def ground_truth(self, user_ids, antenna_ids, apps, malformed_kinds, seed: int | None) -> GroundTruth:
        hours: dict[int, np.ndarray] = {}
        for start, vector in self.windows.items():
            hour = start // HOUR_SECONDS * HOUR_SECONDS
            hours[hour] = hours[hour] + vector if hour in hours else vector.copy()
        windows = {_naive_utc(s): self._totals(v, user_ids, antenna_ids, apps) for s, v in sorted(self.windows.items())}
        return GroundTruth(
            messages=sum(t.messages for t in windows.values()),
            malformed=int(self.malformed_by_kind.sum()),
            malformed_by_kind={kind: int(n) for kind, n in zip(malformed_kinds, self.malformed_by_kind)},
            with_extra_fields=self.with_extra_fields,
            hours={_naive_utc(s): self._totals(v, user_ids, antenna_ids, apps) for s, v in sorted(hours.items())},
            windows=windows,
            seed=seed,
        )

    def _totals(self, vector: np.ndarray, user_ids, antenna_ids, apps) -> Totals:
        byte_sums, counts = vector[0].tolist(), vector[1].tolist()

        def by_key(ids, offset: int) -> dict[str, int]:
            return {key: byte_sums[offset + i] for i, key in enumerate(ids) if counts[offset + i]}

        return Totals(
            messages=int(vector[1, : self.users].sum()),
            user=by_key(user_ids, 0),
            antenna=by_key(antenna_ids, self.users),
            app=by_key(apps, self.users + self.antennas),
        )
