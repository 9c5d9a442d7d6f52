"""The ``remap`` id mode of preprocessing: per column, raw category value -> contiguous id."""

from __future__ import annotations

import numpy as np

from dlrm_tvm.data.criteo.layout import NUM_CAT, PathLike


class CategoryMap:
    """Per column, raw category value -> contiguous id: 1, 2, ... in order of first appearance;
    0 for the value 0 (an empty field) and, when not adding, for unseen values.

    Each column is a few sorted runs of (key, id), merged as they grow (the logarithmic method),
    so a chunk costs O(chunk log) plus amortised merges, never a Python loop over values.
    ``save``/``load`` keep it in an ``.npz`` (``counts``, ``keys_{j}`` sorted uint32,
    ``ids_{j}`` int32) so other files can be mapped the same way.
    """

    def __init__(self, columns: int = NUM_CAT):
        self.counts = np.zeros(columns, np.int64)  # distinct non-zero values per column
        self._runs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(columns)]

    @property
    def table_sizes(self) -> list[int]:
        return [int(c) + 1 for c in self.counts]

    def map(self, cats: np.ndarray, add: bool = True) -> np.ndarray:
        """int64 ids [n, columns] for raw values ``cats`` [n, columns]; ``add`` learns new ones."""
        out = np.empty(cats.shape, np.int64)
        for j in range(cats.shape[1]):
            out[:, j] = self._map_column(j, cats[:, j], add)
        return out

    def learn_column(self, j: int, values: np.ndarray) -> np.ndarray:
        """int64 ids of column ``j``'s ``values``, the new ones numbered in the order given
        (merging another map's ``keys_in_order`` keeps the order of first appearance)."""
        return self._map_column(j, np.asarray(values), True)

    def keys_in_order(self, j: int) -> np.ndarray:
        """Column ``j``'s values (uint32) in the order of their ids 1, 2, ...: the order in
        which they first appeared."""
        keys, ids = self._merged(j)
        return keys[np.argsort(ids, kind="stable")]

    def _map_column(self, j: int, x: np.ndarray, add: bool) -> np.ndarray:
        u, first, inv = np.unique(x, return_index=True, return_inverse=True)
        u = u.astype(np.uint32)
        ids = np.zeros(u.shape[0], np.int64)
        unknown = u != 0
        for keys, vals in self._runs[j]:
            if not unknown.any():
                break
            where = np.flatnonzero(unknown)
            p = np.minimum(np.searchsorted(keys, u[where]), keys.shape[0] - 1)
            hit = keys[p] == u[where]
            ids[where[hit]] = vals[p[hit]]
            unknown[where[hit]] = False
        if add and unknown.any():
            new = np.flatnonzero(unknown)  # sorted by value
            by_first = new[np.argsort(first[new], kind="stable")]
            ids[by_first] = self.counts[j] + 1 + np.arange(by_first.shape[0])
            self.counts[j] += by_first.shape[0]
            runs = self._runs[j]
            runs.append((u[new], ids[new].astype(np.int32)))
            while len(runs) > 1 and runs[-2][0].shape[0] <= 2 * runs[-1][0].shape[0]:
                (k1, v1), (k2, v2) = runs.pop(), runs.pop()
                keys, vals = np.concatenate([k2, k1]), np.concatenate([v2, v1])
                order = np.argsort(keys, kind="stable")
                runs.append((keys[order], vals[order]))
        return ids[inv.reshape(-1)]

    def _merged(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        runs = self._runs[j]
        if not runs:
            return np.zeros(0, np.uint32), np.zeros(0, np.int32)
        keys = np.concatenate([k for k, _ in runs])
        vals = np.concatenate([v for _, v in runs])
        order = np.argsort(keys, kind="stable")
        self._runs[j] = [(keys[order], vals[order])]
        return self._runs[j][0]

    def save(self, path: PathLike) -> None:
        arrays = {"counts": self.counts}
        for j in range(self.counts.shape[0]):
            arrays[f"keys_{j}"], arrays[f"ids_{j}"] = self._merged(j)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: PathLike) -> CategoryMap:
        with np.load(path) as z:
            m = cls(int(z["counts"].shape[0]))
            m.counts = z["counts"].astype(np.int64)
            for j in range(m.counts.shape[0]):
                if z[f"keys_{j}"].shape[0]:
                    m._runs[j] = [(z[f"keys_{j}"], z[f"ids_{j}"])]
        return m
