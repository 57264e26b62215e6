"""A plain stderr progress bar: count, percentage, rate, ETA and a running figure (no dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar", "format_duration"]


def format_duration(seconds: float) -> str:
    """``1h02m``, ``3m07s`` or ``42s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressBar:
    """``label [#####.....] 12/424  3%  0.8 it/s  ETA 8m31s  acc 47.9%`` on one line of ``stream``.

    On a terminal the line is redrawn in place; elsewhere (logs, CI) a line is printed at most every
    ``log_interval`` seconds and at the end. ``initial`` items (resumed from a previous run) do not count
    towards the rate.
    """

    def __init__(
        self,
        total: int,
        *,
        label: str = "",
        initial: int = 0,
        stream: TextIO | None = None,
        width: int = 24,
        log_interval: float = 10.0,
    ) -> None:
        self.total, self.done, self.initial = total, initial, initial
        self.label, self.width, self.log_interval = label, width, log_interval
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.perf_counter()
        self._last_log = float("-inf")
        self.extra = ""

    def line(self) -> str:
        """The current progress line."""
        fraction = self.done / self.total if self.total else 1.0
        filled = int(self.width * fraction)
        elapsed = time.perf_counter() - self.started
        new = self.done - self.initial
        rate = new / elapsed if elapsed > 0 and new > 0 else 0.0
        eta = format_duration((self.total - self.done) / rate) if rate > 0 else "?"
        parts = [
            f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}",
            f"{fraction * 100:3.0f}%",
            f"{rate:.2f} it/s",
            f"ETA {eta}",
        ]
        if self.extra:
            parts.append(self.extra)
        return "  ".join(parts).strip()

    def update(self, count: int = 1, extra: str | None = None) -> None:
        """Count ``count`` more items done; ``extra`` replaces the running figure shown at the end of the line."""
        self.done += count
        if extra is not None:
            self.extra = extra
        self._draw(final=self.done >= self.total)

    def _draw(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
            self.stream.flush()
            return
        now = time.perf_counter()
        if final or now - self._last_log >= self.log_interval:
            self._last_log = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Finish the line (draws the final state if the last update did not)."""
        if self.done < self.total:
            self._draw(final=True)
