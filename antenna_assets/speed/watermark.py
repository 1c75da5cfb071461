"""The speed layer's watermark: which windows a micro-batch treats as closed, and how far it moves on.

A micro-batch's watermark comes from the batches applied before it (Spark's rule, so a replay sees
the same). What the batch itself contributes is the newest *watermark time* of its accepted events
(an event's time capped by its Kafka record's timestamp, devices.WATERMARK_TIME), capped again here
by what the records cannot vouch for: the stream's own clock when the batch was planned (a producer
that stamps its records, CreateTime, may run ahead) and the previous watermark time plus
`max_watermark_advance` (one batch cannot carry the watermark far past everybody else's events).
Both inputs come from the ledger, so a replay of the batch decides the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class BatchWatermark:
    previous: datetime | None  # the newest watermark time of the batches applied before; None before the first
    planned_at: datetime  # the stream's clock when the batch was first planned, as the ledger recorded it
    delay: timedelta  # `watermark`: how late an event may be
    max_advance: timedelta  # `max_watermark_advance`

    @property
    def watermark(self) -> datetime | None:
        """Windows ending at or before this are closed for the batch; None: none is."""
        return self.previous - self.delay if self.previous is not None else None

    def contribution(self, newest: datetime | None) -> datetime | None:
        """The watermark time the batch records, from the newest watermark time of its accepted events
        (None: it has none): never past the clock, nor more than `max_advance` past `previous`."""
        if newest is None:
            return None
        capped = min(newest, self.planned_at)
        if self.previous is not None:
            capped = min(capped, self.previous + self.max_advance)
        return capped
