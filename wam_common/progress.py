"""A progress line with ETA for long CLI runs (demo, eval, collect).

On a terminal it redraws one line (``\\r``) at most twice a second; in a log (CI, a pipe) it
prints a plain line only when the count moves by ≥ 10 % of the total, so logs stay short.
"""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str, unit: str = "", base: int = 0, stream=None):
        self.total, self.label, self.unit, self.base = max(int(total), 0), label, unit, base
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._last_n = None

    def line(self, n: int) -> str:
        total = max(self.total, 1)
        frac = min(max(n, 0) / total, 1.0)
        elapsed = time.monotonic() - self.started
        new = n - self.base
        eta = f"{elapsed / new * (self.total - n):.0f}s" if new > 0 and n < self.total else ("0s" if n >= self.total else "?")
        return (f"[{self.label}] [{'#' * int(30 * frac):<30}] {n}/{self.total}{(' ' + self.unit) if self.unit else ''}"
                f"  {elapsed:.0f}s elapsed  ETA {eta}")

    def update(self, n: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.tty:
            if force or now - self._last_draw >= 0.5:
                print("\r" + self.line(n) + "   ", end="", file=self.stream, flush=True)
                self._last_draw = now
            return
        step = max(1, self.total // 10)
        if force or self._last_n is None or n - self._last_n >= step or (n != self._last_n and n >= self.total):
            print(self.line(n), file=self.stream, flush=True)
            self._last_n = n

    def close(self, n: int) -> None:
        self.update(n, force=True)
        if self.tty:
            print(file=self.stream, flush=True)
