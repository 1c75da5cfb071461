"""A progress line on stderr for long runs: messages sent so far and the recent rate."""

from __future__ import annotations

import sys
import threading
import time

PROGRESS_INTERVAL_SECONDS = 2.0


class ProgressLine:
    """Prints `sum(counter)` every few seconds from a background thread while in a `with` block."""

    def __init__(self, counter, enabled: bool, interval: float = PROGRESS_INTERVAL_SECONDS):
        self.counter, self.enabled, self.interval = counter, enabled, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._report, name="simulator-progress", daemon=True)

    def __enter__(self) -> "ProgressLine":
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()

    def _report(self) -> None:
        started = last_time = time.monotonic()
        last_count = 0
        while not self._done.wait(self.interval):
            now, count = time.monotonic(), sum(self.counter)
            rate = (count - last_count) / (now - last_time)
            print(f"simulate: {count:,} messages sent, {rate:,.0f} msg/s now, "
                  f"{count / (now - started):,.0f} msg/s overall", file=sys.stderr, flush=True)
            last_time, last_count = now, count
