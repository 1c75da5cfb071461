"""A progress line on stderr for long runs (tqdm): messages sent, the recent and the overall rate."""

from __future__ import annotations

import sys
import threading

from tqdm import tqdm

PROGRESS_INTERVAL_SECONDS = 2.0


class ProgressLine:
    """Shows `sum(counter)` every few seconds from a background thread while in a `with` block: the
    counter is shared with the producing processes, so the thread reads it rather than being told."""

    def __init__(self, counter, enabled: bool, total: int | None = None, interval: float = PROGRESS_INTERVAL_SECONDS):
        self.counter, self.enabled, self.total, self.interval = counter, enabled, total, interval
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._report, name="simulator-progress", daemon=True)
        self._bar: tqdm | None = None

    def __enter__(self) -> "ProgressLine":
        if self.enabled:
            self._bar = tqdm(total=self.total, desc="simulate", unit=" msg", unit_scale=True, file=sys.stderr,
                             mininterval=self.interval)
            self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join()
        if self._bar is not None:
            self._show()
            self._bar.close()

    def _report(self) -> None:
        while not self._done.wait(self.interval):
            self._show()

    def _show(self) -> None:
        count = sum(self.counter)
        elapsed = self._bar.format_dict["elapsed"]
        if elapsed > 0:
            self._bar.set_postfix_str(f"{count / elapsed:,.0f} msg/s overall", refresh=False)
        self._bar.update(count - self._bar.n)
