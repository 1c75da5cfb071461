"""What a simulation run produces: the knobs, with the original simulator's values as defaults."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Mapping

from antenna_assets.settings import DEVICES_TOPIC
from antenna_assets.sources.users import APPS


class SimulatorConfigError(ValueError):
    """A configuration value the simulator cannot use; the message names the field."""


@dataclass(frozen=True)
class SimulatorConfig:
    bootstrap: str
    topic: str = DEVICES_TOPIC
    users: int = 20
    antennas: int = 5
    apps: tuple[str, ...] = APPS
    interval_seconds: float = 60.0
    rate: float | None = None
    duration_seconds: float | None = None
    count: int | None = None
    backfill_hours: float = 0
    start: datetime | None = None
    seed: int | None = None
    malformed_fraction: float = 0.0
    # None: 5% of valid messages carry an unknown field when malformed_fraction > 0, none otherwise.
    extra_field_fraction: float | None = None
    processes: int = 1
    ground_truth_path: str | None = None
    progress: bool = True
    # librdkafka properties merged over the simulator's tuned producer settings.
    producer_options: Mapping[str, object] = field(default_factory=dict)
    # The cluster's security (kafka_client.librdkafka_config(settings)), under producer_options and
    # `bootstrap`; out of the repr: it may hold the SASL password.
    kafka_client: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def backfill(self) -> bool:
        return self.backfill_hours > 0

    @property
    def effective_extra_field_fraction(self) -> float:
        if self.extra_field_fraction is not None:
            return self.extra_field_fraction
        return 0.05 if self.malformed_fraction > 0 else 0.0

    def validate(self) -> None:
        def fail(message: str) -> None:
            raise SimulatorConfigError(message)

        if not self.bootstrap:
            fail("bootstrap servers are empty")
        if not self.topic:
            fail("topic is empty")
        if self.users < 1:
            fail(f"users must be >= 1, got {self.users}")
        if self.antennas < 1:
            fail(f"antennas must be >= 1, got {self.antennas}")
        if not self.apps or any(not app for app in self.apps):
            fail(f"apps must be a non-empty list of names, got {list(self.apps)}")
        if len(set(self.apps)) != len(self.apps):
            fail(f"apps contain duplicates: {list(self.apps)}")
        if not self.interval_seconds > 0:
            fail(f"interval_seconds must be > 0, got {self.interval_seconds}")
        if self.rate is not None and not self.rate > 0:
            fail(f"rate must be > 0 messages/s, got {self.rate}")
        if self.duration_seconds is not None and not self.duration_seconds > 0:
            fail(f"duration_seconds must be > 0, got {self.duration_seconds}")
        if self.count is not None and self.count < 1:
            fail(f"count must be >= 1, got {self.count}")
        if self.backfill_hours < 0:
            fail(f"backfill_hours must be >= 0, got {self.backfill_hours}")
        if self.start is not None and not self.backfill:
            fail("start sets where a backfill's event time begins: it needs backfill_hours > 0")
        if self.seed is not None and self.seed < 0:
            fail(f"seed must be >= 0, got {self.seed}")
        for name in ("malformed_fraction", "extra_field_fraction"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                fail(f"{name} must be within [0, 1], got {value}")
        if self.processes < 1:
            fail(f"processes must be >= 1, got {self.processes}")
