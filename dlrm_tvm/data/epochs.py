"""Reading rows from files (binary Criteo rows, MLPerf's multi-hot days): ``RowStream``, the
global batches and each rank's slice of them, in an epoch's row order; ``EpochRows``, a
source's epochs, the roll-over to the next one, and the position a checkpoint saves and a
resumed run restores."""

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


class RowStream:
    """Global batches of ``batch_size`` rows of ``ds`` (``rows``, ``read(lo, hi)``,
    ``take(sorted_rows)``) from global position ``start_row``, in ``order`` (a
    ``shuffle.RowOrder``, or None: file order). Rank r of R reads rows [r*b/R, (r+1)*b/R) of
    each batch (b: the batch size, or a short last batch's rows, split as evenly as it can);
    with an order they are gathered from the memory maps in increasing row order, never
    copying more than the batch. ``next_row`` is the position the next batch starts at, the
    same on every rank (pass it as ``start_row`` to resume). A subclass turns what
    ``_next_rows`` read into a batch (``_batch``)."""

    def __init__(self, ds, batch_size: int, start_row: int = 0, rank: int = 0, ranks: int = 1,
                 drop_last: bool = True, order=None):
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (isinstance(ranks, int) and ranks > 0 and 0 <= rank < ranks):
            raise ValueError(f"need 0 <= rank < ranks, got rank={rank}, ranks={ranks}")
        if batch_size % ranks:
            raise ValueError(f"batch_size {batch_size} must divide by ranks {ranks}")
        if not 0 <= start_row <= ds.rows:
            raise ValueError(f"start_row {start_row} is outside 0..{ds.rows}")
        if order is not None and order.rows != ds.rows:
            raise ValueError(f"the row order covers {order.rows} rows, the data {ds.rows}")
        self.ds, self.B, self.rank, self.ranks = ds, batch_size, rank, ranks
        self.drop_last, self.next_row = drop_last, start_row
        self.order = None if order is None or order.identity else order

    def __iter__(self):
        return self

    def __len__(self) -> int:
        left = self.ds.rows - self.next_row
        return left // self.B if self.drop_last else -(-left // self.B)

    def _batch(self, read):
        raise NotImplementedError

    def __next__(self):
        import numpy as np

        left = self.ds.rows - self.next_row
        if left <= 0 or (self.drop_last and left < self.B):
            raise StopIteration
        b = min(self.B, left)
        lo, hi = self.rank * b // self.ranks, (self.rank + 1) * b // self.ranks
        if self.order is None:
            read = self.ds.read(self.next_row + lo, self.next_row + hi)
        else:
            read = self.ds.take(np.sort(self.order(self.next_row, self.next_row + b))[lo:hi])
        batch = self._batch(read)  # a refused batch leaves the position where it was
        self.next_row += b
        return batch
