"""Progress of a conversion: a one-line bar on stderr (when it is a terminal) and log lines.

The bar shows percent, rows, rows/s, GB/s of input and the ETA, redrawn at most every
:data:`REDRAW_S` seconds; it is drawn only when ``enabled`` and stderr is a TTY (the CLI disables
it for ``--format json`` and ``quiet``). Whatever the bar does, a log line (logger
``gpuquant.engine``, INFO) records the progress every :data:`LOG_EVERY_S` seconds.
No dependency beyond the standard library.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from typing import TextIO

log = logging.getLogger("gpuquant.engine")

REDRAW_S = 0.2
LOG_EVERY_S = 10.0
WIDTH = 24


def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


class Progress:
    """Counts rows done out of ``total`` (starting at ``start`` when resuming)."""

    def __init__(self, total: int, row_bytes: int, *, start: int = 0, enabled: bool = True,
                 stream: TextIO | None = None, label: str = "converting") -> None:
        self.total, self.row_bytes, self.start = total, row_bytes, start
        self.done = start
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(enabled) and bool(getattr(self.stream, "isatty", lambda: False)())
        self.label = label
        self.t0 = time.perf_counter()
        self._drawn = self._logged = self.t0
        self._lock = threading.Lock()
        self._visible = False

    def rate(self) -> tuple[float, float]:
        """(rows/s, bytes/s of input) since this run started."""
        dt = max(time.perf_counter() - self.t0, 1e-9)
        rows = (self.done - self.start) / dt
        return rows, rows * self.row_bytes

    def line(self) -> str:
        frac = self.done / self.total if self.total else 1.0
        rows_s, bytes_s = self.rate()
        eta = (self.total - self.done) / rows_s if rows_s > 0 else float("inf")
        fill = int(frac * WIDTH)
        return (f"{self.label} [{'#' * fill}{'.' * (WIDTH - fill)}] {100 * frac:5.1f}% "
                f"{self.done:,}/{self.total:,} rows "
                f"{rows_s:,.0f} rows/s {bytes_s / 1e9:.2f} GB/s ETA {_eta(eta)}")

    def update(self, done: int) -> None:
        with self._lock:
            self.done = done
            now = time.perf_counter()
            if self.tty and (now - self._drawn >= REDRAW_S or done >= self.total):
                self.stream.write("\r" + self.line() + "\033[K")
                self.stream.flush()
                self._drawn, self._visible = now, True
            if now - self._logged >= LOG_EVERY_S:
                self._logged = now
                if not self._visible:
                    log.info("%s", self.line())

    def close(self) -> None:
        with self._lock:
            if self._visible:
                self.stream.write("\r" + self.line() + "\033[K\n")
                self.stream.flush()
                self._visible = False
