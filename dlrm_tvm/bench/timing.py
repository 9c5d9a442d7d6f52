"""How every benchmark here times code: one untimed warm-up, repeated timed runs, one summary.

``time_call``: seconds of one call of a function, the median (a typical value: kernels, torch
baselines) or the minimum (a ceiling: ``peaks.py``) of repeated runs, optionally cut short by a
time budget. ``time_each``: seconds of each call over a sequence of inputs (training steps),
warm-up calls left out. ``median_ms``: the median of such a list in milliseconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np


def time_call(f: Callable[[], Any], reps: int, budget_s: float | None = None,
              best: bool = False) -> float:
    """Seconds of one call of ``f``: one untimed call first, then ``reps`` timed calls (fewer,
    but at least 2, once ``budget_s`` seconds are spent); their median, or with ``best`` their
    minimum."""
    f()
    ts: list[float] = []
    while len(ts) < reps and (budget_s is None or len(ts) < 2 or sum(ts) < budget_s):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(min(ts) if best else np.median(ts))


def time_each(f: Callable[[Any], Any], items: Iterable[Any], skip: int = 0) -> list[float]:
    """Seconds of ``f(item)`` for each item in order; the first ``skip`` calls (warm-up) run
    but are not returned."""
    ts: list[float] = []
    for i, x in enumerate(items):
        t = time.perf_counter()
        f(x)
        if i >= skip:
            ts.append(time.perf_counter() - t)
    return ts


def median_ms(ts: Iterable[float]) -> float:
    """The median of ``ts`` (seconds) in milliseconds."""
    return float(np.median(list(ts)) * 1e3)
