"""A dependency-free progress line: a bar on a terminal, a plain line every 10% otherwise (as
under MPI or when logging to a file); both show the rate and the time left."""

from __future__ import annotations

import sys
import time


def _dur(s: float) -> str:
    s = max(0.0, s)
    if s < 90:
        return f"{s:.0f}s"
    if s < 5400:
        return f"{s / 60:.0f}m{s % 60:02.0f}s"
    return f"{s / 3600:.0f}h{s % 3600 / 60:02.0f}m"


def _num(v: float) -> str:
    """A count as people read it: 950, 12.3k, 4.56M."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.3g}{suffix}"
    return f"{v:.3g}"


class Progress:
    def __init__(self, total: int, label: str = "train", stream=None, unit: str = "step",
                 also=None, show: bool = True, scale: float = 1.0, delay: float = 0.0,
                 rate_of: str | None = None, start: int = 0):
        """``also``: called with each plain 10% line too (e.g. a run's log file); ``show``:
        write to ``stream`` (default stderr) at all. ``scale``: ``done``/``total`` are shown
        divided by it, in ``unit`` (bytes as MiB: ``unit="MiB", scale=2**20``). ``delay``:
        nothing is shown before that many seconds have passed (a short task stays silent;
        the last line still shows once the delay has passed). ``rate_of``: the name of a
        count passed to ``update`` (``rows=...``) whose rate is shown too (``rows/s``).
        ``start``: the units done before this Progress began (a resumed run): ``done`` counts
        from it, and the rate and time left count only what is done since."""
        self.total, self.label, self.unit, self.also = max(1, total), label, unit, also
        self.stream = stream or sys.stderr
        self.show = show
        self.tty = show and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.scale, self.delay, self.rate_of = scale, delay, rate_of
        self.t0 = time.perf_counter()
        self.start = start
        self._next_log = start

    def rate_eta(self, done: int) -> tuple[float, float]:
        """(units per second so far, seconds left at that rate)."""
        el = time.perf_counter() - self.t0
        rate = (done - self.start) / el if el > 0 else 0.0
        return rate, (self.total - done) / rate if rate > 0 else float("inf")

    def _amount(self, x: float) -> str:
        return str(x) if self.scale == 1 else f"{x / self.scale:.1f}"

    def update(self, done: int, **info) -> None:
        el = time.perf_counter() - self.t0
        if el < self.delay:
            return
        if self.rate_of is not None and self.rate_of in info and el > 0:
            info = {**info, f"{self.rate_of}/s": _num(info[self.rate_of] / el)}
        extra = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in info.items())
        frac = min(1.0, done / self.total)
        rate, eta = self.rate_eta(done)
        speed = (f"{rate / self.scale:.3g} {self.unit}/s  "
                 f"ETA {_dur(eta) if eta != float('inf') else '?'}")
        amount = f"{self._amount(done)}/{self._amount(self.total)}" + (
            f" {self.unit}" if self.scale != 1 else "")
        if self.tty:
            bar = "#" * int(30 * frac) + "." * (30 - int(30 * frac))
            self.stream.write(f"\r{self.label} [{bar}] {amount}  {extra}  {speed} ")
            if done >= self.total:
                self.stream.write("\n")
            self.stream.flush()
        if done >= self._next_log or done >= self.total:
            line = (f"{self.label} {amount} ({100 * frac:.0f}%)  {extra}  {speed}  "
                    f"[{_dur(el)}]")
            if self.show and not self.tty:
                self.stream.write(line + "\n")
                self.stream.flush()
            if self.also is not None:
                self.also(line)
            self._next_log = done + max(1, self.total // 10)
