"""Synthetic raw Criteo files: realistic text lines for tests, the loader benchmark and demos."""

from __future__ import annotations

import numpy as np

from dlrm_tvm.data.criteo.layout import MIN_FIELDS, NUM_CAT, NUM_DENSE, PathLike


def write_synthetic_raw(path: PathLike, rows: int, seed: int = 0,
                        terabyte_style: bool = True) -> None:
    """Write ``rows`` realistic raw lines: ~25% positives, empty counts and categories at
    per-column rates, negative counts (-1..-3) in I2 as in Criteo, skewed 8-hex categories.

    ``terabyte_style``: every line has all 40 fields (Terabyte ``day_N``, Kaggle ``train.txt``);
    otherwise trailing empty categorical fields are stripped (down to 14 fields), as in some
    Kaggle copies. The file ends with a newline.
    """
    rng = np.random.default_rng([seed, 0xC817E0])
    vocab_sizes = [min(r, 4096) for r in (
        1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
        27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)]
    vocabs = [np.array([f"{h:08x}" for h in rng.integers(1, 2**32, v)]) for v in vocab_sizes]
    dense_empty = rng.uniform(0.0, 0.45, NUM_DENSE)
    cat_empty = np.where(np.arange(NUM_CAT) >= 18, rng.uniform(0.0, 0.5, NUM_CAT), 0.0)
    step = 1 << 15
    with open(path, "w") as f:
        for at in range(0, rows, step):
            n = min(step, rows - at)
            cols = [np.where(rng.random(n) < 0.25, "1", "0")]
            for j in range(NUM_DENSE):
                v = np.floor(np.exp(rng.normal(1.5, 1.6, n))).astype(np.int64)
                if j == 1:
                    v = np.where(rng.random(n) < 0.08, -rng.integers(1, 4, n), v)
                cols.append(np.where(rng.random(n) < dense_empty[j], "", v.astype(str)))
            empty_cat = np.empty((n, NUM_CAT), bool)
            for j in range(NUM_CAT):
                pick = (vocab_sizes[j] * rng.random(n) ** 3).astype(np.int64)
                empty_cat[:, j] = rng.random(n) < cat_empty[j]
                cols.append(np.where(empty_cat[:, j], "", vocabs[j][pick]))
            lines = list(map("\t".join, zip(*(c.tolist() for c in cols), strict=True)))
            if not terabyte_style:
                nonempty = ~empty_cat
                keep = np.where(nonempty.any(1), NUM_CAT - np.argmax(nonempty[:, ::-1], 1), 0)
                for i in np.flatnonzero(keep < NUM_CAT):
                    lines[i] = "\t".join(lines[i].split("\t")[: MIN_FIELDS + keep[i]])
            f.write("\n".join(lines) + "\n")
