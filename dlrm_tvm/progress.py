"""A dependency-free progress line: a bar on a terminal, a log line every 10% otherwise."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, label: str = "train", stream=None):
        self.total, self.label = max(1, total), label
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.t0 = time.perf_counter()
        self._next_log = 0

    def update(self, done: int, **info) -> None:
        extra = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in info.items())
        frac = done / self.total
        if self.tty:
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total}  {extra}")
            if done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        elif done >= self._next_log or done >= self.total:
            el = time.perf_counter() - self.t0
            self.stream.write(f"{self.label} {done}/{self.total} ({100 * frac:.0f}%)  {extra}  "
                              f"[{el:.1f}s]\n")
            self.stream.flush()
            self._next_log = done + max(1, self.total // 10)
