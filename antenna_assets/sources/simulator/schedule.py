"""When each message is due: ticks, blocks of ticks, and which process sends which block.

Tick t carries one message per user. Blocks of ticks are the unit of randomness and of work:
process w sends blocks w, w+P, w+2P, ... so the messages never depend on the process count.
"""

from __future__ import annotations

import calendar
import math
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from antenna_assets.sources.simulator.config import SimulatorConfig
from antenna_assets.sources.users import antenna_id, synthetic_users

# About this many messages share one random draw and one ground-truth update.
BLOCK_MESSAGES = 8192


def _epoch(moment: datetime) -> float:
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return calendar.timegm(moment.timetuple()) + moment.microsecond / 1e6


def default_backfill_start(backfill_hours: float, now: datetime | None = None) -> datetime:
    """The current UTC hour, floored, minus the backfill: the backfill ends where live time begins."""
    now = now or datetime.now(timezone.utc).replace(tzinfo=None)
    return now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=backfill_hours)


@dataclass(frozen=True)
class SimulationPlan:
    bootstrap: str
    topic: str
    user_ids: tuple[str, ...]
    antenna_ids: tuple[str, ...]
    apps: tuple[str, ...]
    seed: int
    backfill: bool
    first_tick: float  # epoch seconds: event time of tick 0 (backfill) or its wall-clock time (live)
    paced_from: float | None  # wall-clock epoch seconds of tick 0 when ticks are paced (live, or a backfill with a rate)
    tick_seconds: float
    ticks: int | None  # None: until stopped
    message_limit: int | None
    wall_deadline: float | None  # epoch seconds after which no tick starts
    malformed_fraction: float
    extra_field_fraction: float
    processes: int
    producer_options: dict
    kafka_client: dict = field(repr=False)  # security properties, possibly a password

    @classmethod
    def from_config(cls, config: SimulatorConfig, now: float) -> "SimulationPlan":
        tick_seconds = config.users / config.rate if config.rate else config.interval_seconds
        duration_ticks = None
        if config.backfill:
            start = config.start or default_backfill_start(config.backfill_hours)
            first_tick = _epoch(start)
            ticks = math.ceil(config.backfill_hours * 3600 / tick_seconds)
        else:
            first_tick = now
            ticks = None
            if config.duration_seconds is not None:
                duration_ticks = math.ceil(config.duration_seconds / tick_seconds)
        if config.count is not None:
            count_ticks = math.ceil(config.count / config.users)
            ticks = count_ticks if ticks is None else min(ticks, count_ticks)
        if duration_ticks is not None:
            ticks = duration_ticks if ticks is None else min(ticks, duration_ticks)
        return cls(
            bootstrap=config.bootstrap,
            topic=config.topic,
            user_ids=tuple(u.id for u in synthetic_users(config.users)),
            antenna_ids=tuple(antenna_id(i) for i in range(config.antennas)),
            apps=tuple(config.apps),
            seed=config.seed if config.seed is not None else secrets.randbelow(2**63),
            backfill=config.backfill,
            first_tick=first_tick,
            # A backfill with a rate replays its past event time at that pace instead of as fast as possible.
            paced_from=now if not config.backfill or config.rate else None,
            tick_seconds=tick_seconds,
            ticks=ticks,
            message_limit=config.count,
            # Live runs end by tick count; a backfill's duration caps its wall-clock time.
            wall_deadline=now + config.duration_seconds if config.backfill and config.duration_seconds else None,
            malformed_fraction=config.malformed_fraction,
            extra_field_fraction=config.effective_extra_field_fraction,
            processes=config.processes,
            producer_options=dict(config.producer_options),
            kafka_client=dict(config.kafka_client),
        )

    @property
    def users(self) -> int:
        return len(self.user_ids)

    @property
    def ticks_per_block(self) -> int:
        return max(1, BLOCK_MESSAGES // self.users)

    def blocks_of(self, worker: int):
        """Block indices for one process, in order, until the plan ends (forever in an open live run)."""
        block = worker
        while self.ticks is None or block * self.ticks_per_block < self.ticks:
            yield block
            block += self.processes

    @property
    def planned_messages(self) -> int | None:
        """Messages the plan sends if nothing stops it early; None for an open-ended live run."""
        if self.ticks is None:
            return None
        return self.ticks * self.users if self.message_limit is None else min(self.message_limit, self.ticks * self.users)

    def ticks_of(self, block: int) -> range:
        first = block * self.ticks_per_block
        last = first + self.ticks_per_block
        return range(first, last if self.ticks is None else min(last, self.ticks))

    def messages_in(self, tick: int) -> int:
        """Users that send at this tick: all, except in the last tick of a run cut by a message count."""
        if self.message_limit is None:
            return self.users
        return max(0, min(self.users, self.message_limit - tick * self.users))

    def due(self, tick: int) -> float:
        """The tick's event time (a backfill) or wall-clock time (live)."""
        return self.first_tick + tick * self.tick_seconds

    def send_at(self, tick: int) -> float | None:
        """Wall-clock time at which the tick is sent; None: as soon as possible."""
        return None if self.paced_from is None else self.paced_from + tick * self.tick_seconds
