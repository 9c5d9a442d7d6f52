"""The order an epoch reads training rows in: the reference's ``--data-randomize`` modes and
its ``--mlperf-bin-shuffle``, without materialising a permutation.

* ``none``: rows in file order;
* ``day``: rows shuffled within each day (a Kaggle day of ``train.bin``, a Terabyte
  ``day_N.bin``, an MLPerf ``.bin`` file), the days in order;
* ``total``: every training row shuffled across days;
* ``shuffle_batches``: the order of the epoch's whole batches shuffled (the reference's
  ``--mlperf-bin-shuffle``), on top of any of the three.

A permutation of N rows as an array costs 8N bytes (32 GB for the 4.4 billion Terabyte
rows), so none is stored: ``Permutation`` computes where position i goes, a keyed 4-round
Feistel network over the smallest even number of bits that holds N, walking the cycle until
the value falls below N (a bijection of 0..N-1; fewer than 4 rounds of walking on average).
Every epoch has its own key (the train seed, the epoch, the mode, the day), so each epoch
reads another order, the same on every rank and after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlrm_tvm.config import SHUFFLES as SHUFFLE_MODES

_ROUNDS = 4
_TAG_ROWS, _TAG_BATCHES = 0x5F1E, 0xBA7C
_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), \
    np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a uint64 -> uint64 bijection that spreads every bit."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


class Permutation:
    """A pseudo-random bijection of 0..n-1 keyed by ``key`` (integers), computed per index."""

    def __init__(self, n: int, key: Sequence[int]):
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.n = int(n)
        bits = max(2, int(self.n - 1).bit_length() if self.n > 1 else 2)
        self.half = np.uint64((bits + 1) // 2)
        self.mask = np.uint64((1 << int(self.half)) - 1)
        seq = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in key])
        self.keys = seq.generate_state(_ROUNDS, np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        left, right = x >> self.half, x & self.mask
        with np.errstate(over="ignore"):
            for k in self.keys:
                left, right = right, left ^ (_mix((right + k) * _GOLD) & self.mask)
        return (left << self.half) | right

    def __call__(self, i: np.ndarray) -> np.ndarray:
        """Where each position of ``i`` (int, 0 <= i < n) goes, as int64."""
        x = np.asarray(i, np.uint64)
        if self.n <= 1:
            return x.astype(np.int64)
        x = self._encrypt(x)
        n = np.uint64(self.n)
        out = x >= n
        while out.any():  # cycle-walking: a bijection of the domain restricted to 0..n-1
            x[out] = self._encrypt(x[out])
            out = x >= n
        return x.astype(np.int64)


class RowOrder:
    """Which training row each position of one epoch reads (module docstring).

    ``rows``: the training rows; ``day_rows``: rows per day, in order (summing to ``rows``);
    ``batch_size``: the batch grid ``shuffle_batches`` permutes (only whole batches move; the
    rows past the last whole batch, which a training epoch drops, stay in place)."""

    def __init__(self, rows: int, mode: str = "none", day_rows: Sequence[int] | None = None,
                 seed: int = 0, epoch: int = 0, batch_size: int = 1,
                 shuffle_batches: bool = False):
        if mode not in SHUFFLE_MODES:
            raise ValueError(f"shuffle mode must be one of {SHUFFLE_MODES}, got {mode!r}")
        self.rows, self.mode, self.B = int(rows), mode, int(batch_size)
        days = [int(d) for d in (day_rows if day_rows else [rows])]
        if sum(days) != self.rows or any(d < 0 for d in days):
            raise ValueError(f"day rows {days} do not add up to the {rows} rows")
        self.day_starts = np.cumsum([0] + days)
        base = [int(seed), int(epoch)]
        self._total = Permutation(self.rows, base + [_TAG_ROWS]) if mode == "total" else None
        self._days = ([Permutation(d, base + [_TAG_ROWS, k]) for k, d in enumerate(days)]
                      if mode == "day" else None)
        nb = self.rows // max(1, self.B)
        self._batches = Permutation(nb, base + [_TAG_BATCHES]) if shuffle_batches and nb else None
        self._cache: tuple[int, np.ndarray] | None = None

    @property
    def identity(self) -> bool:
        return self.mode == "none" and self._batches is None

    def __call__(self, start: int, stop: int) -> np.ndarray:
        """The rows (int64) read at positions [start, stop) of the epoch (computed a block of
        ``BLOCK`` positions at a time: numpy's per-call cost, amortised)."""
        if not 0 <= start <= stop <= self.rows:
            raise IndexError(f"positions {start}..{stop} outside 0..{self.rows}")
        parts = []
        at = start
        while at < stop:
            k = at // self.BLOCK
            if self._cache is None or self._cache[0] != k:
                a = k * self.BLOCK
                self._cache = (k, self._rows(a, min(a + self.BLOCK, self.rows)))
            a = k * self.BLOCK
            end = min(stop, a + self.BLOCK)
            parts.append(self._cache[1][at - a:end - a])
            at = end
        if len(parts) == 1:
            return parts[0].copy()
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    BLOCK = 1 << 16

    def _rows(self, start: int, stop: int) -> np.ndarray:
        p = np.arange(start, stop, dtype=np.int64)
        if self._batches is not None:
            k, o = np.divmod(p, self.B)
            whole = k < self._batches.n
            p = np.where(whole, self._batches(np.where(whole, k, 0)) * self.B + o, p)
        if self._total is not None:
            return self._total(p)
        if self._days is not None:
            day = np.searchsorted(self.day_starts, p, side="right") - 1
            out = np.empty_like(p)
            for d in np.unique(day):
                sel = day == d
                a = self.day_starts[d]
                out[sel] = a + self._days[d](p[sel] - a)
            return out
        return p
