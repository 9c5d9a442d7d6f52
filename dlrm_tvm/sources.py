"""Where training batches come from, with a position that checkpoints save and restore.

A source gives ``next_batch()`` (the global batch, or with ``local = True`` this rank's slice
of it), ``eval_batches(n)`` (the held-out split as (global batch, real rows) pairs: every row
once, the last batch possibly short), ``state()`` / ``restore(state)`` (JSON-able: the
synthetic RNG, or the next row of a file) and ``describe()`` for the run summary.
"""

from __future__ import annotations

import numpy as np

from dlrm_tvm.config import Config
from dlrm_tvm.data import SyntheticData

EVAL_STREAM = 0xE7A1


class SyntheticSource:
    """The reference's random generator (dlrm_tvm.data.SyntheticData); the held-out split is a
    second stream of the same generator (same teacher labels, other samples)."""

    local = False

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.gen = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, cfg.train.seed)

    def next_batch(self):
        return self.gen.next_batch()

    def eval_batches(self, n: int):
        g = SyntheticData(self.cfg.model, self.cfg.data, self.cfg.train.batch_size,
                          self.cfg.train.seed)
        g.rng = np.random.default_rng([self.cfg.train.seed, EVAL_STREAM])
        for _ in range(n):
            yield g.next_batch(), self.cfg.train.batch_size

    def state(self) -> dict:
        return {"kind": "synthetic", "rng": self.gen.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        if state.get("kind") != "synthetic":
            raise ValueError(f"the checkpoint's data position is for {state.get('kind')!r} "
                             f"data, not synthetic")
        self.gen.rng.bit_generator.state = state["rng"]

    def describe(self) -> dict:
        return {"kind": "synthetic", "labels": self.cfg.data.labels,
                "index_distribution": self.cfg.data.index_distribution}
