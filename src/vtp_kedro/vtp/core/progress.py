"""Progress of a long loop over items (images encoded, samples drawn): a bar on a terminal, log lines elsewhere.

On a terminal, tqdm shows items/s and the ETA. When stderr is not a terminal (CI, a
scheduler's log file, a Kedro run piped to a file) a bar would print control characters
into the log, so one plain record is logged every ``log_every_s`` seconds and one at the end::

    encoding train: 2500/5000 img (50%) | 410.2 img/s | ETA 6 s
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, description: str, unit: str = "img", *, log_every_s: float = 30.0,
                 logger: logging.Logger | None = None, enabled: bool = True) -> None:
        self.total, self.description, self.unit = total, description, unit
        self.log_every_s = log_every_s
        self.log = logger or logging.getLogger(__name__)
        self.done = 0
        self.logged = -1  # the count of the last log line
        self.enabled = enabled
        self.start = self.last_log = time.perf_counter()
        terminal = enabled and sys.stderr.isatty()
        self.bar = tqdm(total=total, desc=description, unit=unit, dynamic_ncols=True) if terminal else None

    def update(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.enabled and time.perf_counter() - self.last_log >= self.log_every_s:
            self._log_line()

    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def _log_line(self) -> None:
        self.last_log, self.logged = time.perf_counter(), self.done
        rate = self.rate()
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        share = self.done / self.total if self.total else 1.0
        self.log.info("%s: %d/%d %s (%.0f%%) | %.1f %s/s | ETA %.0f s", self.description, self.done, self.total,
                      self.unit, 100 * share, rate, self.unit, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled and self.logged != self.done:
            self._log_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
