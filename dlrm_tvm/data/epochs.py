"""The epoch and read position of a source that streams training rows from files (binary
Criteo rows, MLPerf's multi-hot days): the row order of each epoch, the roll-over to the next
epoch, and the position a checkpoint saves and a resumed run restores."""

from __future__ import annotations

import logging

log = logging.getLogger("dlrm_tvm")


class EpochRows:
    """Mixin. The class sets ``kind`` (the checkpoint's data-position kind) and ``what`` (the
    data, for messages), holds ``cfg``, ``rank``, ``B``, ``train`` (``rows``, ``day_rows``),
    ``train_ok`` and ``epoch``, and makes a batch stream from a start row and an order
    (``_stream``); the stream has ``next_row``."""

    kind = ""
    what = ""

    def _stream(self, row: int, order):
        raise NotImplementedError

    def _too_small(self) -> str:
        return (f"the training data has {self.train.rows} rows, fewer than one batch of "
                f"{self.B}: lower --mini-batch-size")

    def _order(self, epoch: int):
        from dlrm_tvm.data.criteo.shuffle import RowOrder

        d = self.cfg.data
        return RowOrder(self.train.rows, d.shuffle, self.train.day_rows, self.cfg.train.seed,
                        epoch, self.B, d.shuffle_batches)

    def _open(self, row: int) -> None:
        if self.train_ok:  # else: evaluation only
            self.stream = self._stream(row, self._order(self.epoch))

    def _next_train(self):
        """The next training batch; at the end of an epoch the next one starts, in a new
        order."""
        if not self.train_ok:
            raise ValueError(self._too_small())
        try:
            return next(self.stream)
        except StopIteration:
            self.epoch += 1
            self._open(0)
            return next(self.stream)

    def position(self) -> dict:
        d = self.cfg.data
        return {"kind": self.kind, "next_row": int(self.stream.next_row) if self.train_ok
                else 0, "epoch": self.epoch, "shuffle": d.shuffle,
                "shuffle_batches": d.shuffle_batches}

    def restore(self, state: dict) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"the checkpoint's data position is for {state.get('kind')!r} "
                             f"data, not {self.what}")
        d = self.cfg.data
        was = (state.get("shuffle", "none"), bool(state.get("shuffle_batches", False)))
        if was != (d.shuffle, d.shuffle_batches) and self.rank == 0:
            log.warning("the checkpoint's run read its rows with shuffle %s (batches shuffled: "
                        "%s); this one reads them with %s (%s): the resumed run continues at "
                        "the same position of the epoch in another order", *was, d.shuffle,
                        d.shuffle_batches)
        self.epoch = int(state["epoch"])
        self._open(int(state["next_row"]))
