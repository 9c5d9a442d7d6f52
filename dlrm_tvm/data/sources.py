"""Where training batches come from, with a position that checkpoints save and restore.

A source gives ``next_batch()`` (the global batch, or with ``local = True`` this rank's slice
of it), ``eval_batches(n)`` (the held-out split as (global batch, real rows) pairs: every row
once, the last batch possibly short), ``state()`` / ``restore(state)`` (JSON-able: the
synthetic RNG, or the next row of a file) and ``describe()`` for the run summary.
"""

from __future__ import annotations

import json
from pathlib import Path

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


class BinarySource:
    """Criteo rows from MLPerf binary files (dlrm_tvm.data.criteo.BinaryDataset), memory-mapped.
    Each rank reads only its slice of every global batch (``local``); at the end of the
    training rows the next epoch starts from the first row. The held-out rows are read whole,
    every row once (the last batch short)."""

    def __init__(self, cfg: Config, train, held_out, rank: int = 0, ranks: int = 1,
                 describe: dict | None = None):
        self.cfg, self.train, self.held_out = cfg, train, held_out
        self.rank, self.ranks = rank, ranks
        self.local = ranks > 1
        self.B = cfg.train.batch_size
        self.table_rows = cfg.model.table_rows
        self.train_ok = train.rows >= self.B
        self.epoch = 0
        self._desc = describe or {}
        self._open(0)

    def _open(self, row: int) -> None:
        if not self.train_ok:
            return  # evaluation only
        self.stream = self.train.batches(self.B, self.table_rows, start_row=row,
                                         rank=self.rank, ranks=self.ranks, drop_last=True)

    def next_batch(self):
        if not self.train_ok:
            raise ValueError(f"the training data has {self.train.rows} rows, fewer than one "
                             f"batch of {self.B}: lower --mini-batch-size")
        try:
            return next(self.stream)
        except StopIteration:
            self.epoch += 1
            self._open(0)
            return next(self.stream)

    def eval_batches(self, n: int | None = None):
        if self.held_out is None:
            return
        stream = self.held_out.batches(self.B, self.table_rows, drop_last=False)
        for batch in stream:
            yield batch, batch.dense.shape[0]

    def state(self) -> dict:
        return {"kind": "binary", "next_row": int(self.stream.next_row) if self.train_ok else 0,
                "epoch": self.epoch}

    def restore(self, state: dict) -> None:
        if state.get("kind") != "binary":
            raise ValueError(f"the checkpoint's data position is for {state.get('kind')!r} "
                             f"data, not a binary/Criteo file")
        self.epoch = int(state["epoch"])
        self._open(int(state["next_row"]))

    def describe(self) -> dict:
        return {**self._desc, "train_rows": self.train.rows,
                "held_out_rows": self.held_out.rows if self.held_out is not None else 0,
                "epoch": self.epoch}


def check_criteo_model(cfg: Config) -> None:
    m = cfg.model
    if m.num_dense != 13 or m.num_tables != 26:
        from dlrm_tvm.config import ConfigError

        raise ConfigError(f"Criteo rows have 13 dense and 26 categorical features; the model "
                          f"of config {cfg.name!r} takes {m.num_dense} and {m.num_tables}: use "
                          f"--config tiny or mlperf, or --arch-mlp-bot 13-... with 26 tables")


def needs_preprocess(cfg: Config) -> bool:
    """Whether ``cfg.data`` names raw Criteo file(s) (preprocessed into the run directory)
    rather than a ``dlrm-tvm preprocess`` directory (its meta.json: used as is)."""
    d = cfg.data
    return d.kind in ("criteo-kaggle", "criteo-terabyte") and not (
        Path(d.path) / "meta.json").is_file()


def _raw_inputs(cfg: Config) -> list[str]:
    """The raw files of ``cfg.data.path``, each an existing readable file (else DataError)."""
    from dlrm_tvm.data.criteo import DataError, check_input_file

    d = cfg.data
    inputs = [p for p in d.path.split(",") if p]
    if not inputs:
        raise DataError(d.path, None, f"--data {d.kind} needs raw Criteo file(s) or a "
                                      "`dlrm-tvm preprocess` directory as --data-path")
    for p in inputs:
        if Path(p).is_dir():
            why = ("a `dlrm-tvm preprocess` directory is given alone" if
                   (Path(p) / "meta.json").is_file() else "it has no meta.json, so it is not "
                   "a `dlrm-tvm preprocess` output")
            raise DataError(p, None, f"is a directory, and {why}: --data {d.kind} takes raw "
                                     "Criteo file(s) (comma-separated) or one preprocess "
                                     "directory")
        check_input_file(p, f"--data {d.kind} takes raw Criteo file(s) or a `dlrm-tvm "
                            "preprocess` directory")
    return inputs


PREPROCESS_DAYS = 7  # the reference's Kaggle days (preprocess_for_run never changes it)


def preprocess_for_run(cfg: Config, out_dir: Path, log=print) -> Path:
    """Raw Criteo file(s) in cfg.data.path (a file, or several separated by commas) into
    OUT/data; returns that directory. A complete OUT/data (its meta.json) is reused only when
    it was made from the same files (resolved path, size, mtime, a digest of the first and
    last MiB) with the same parameters; otherwise (other or changed inputs, other parameters,
    a meta.json without that record) it is preprocessed again, saying why."""
    from dlrm_tvm.data.criteo import (
        DataError,
        meta_member,
        preprocess,
        preprocess_mismatch,
        preprocess_params,
    )

    d = cfg.data
    dest = Path(d.processed_path) if d.processed_path else Path(out_dir) / "data"
    inputs = _raw_inputs(cfg)
    fmt = "kaggle" if d.kind == "criteo-kaggle" else "terabyte"
    mir = d.max_ind_range or None
    params = preprocess_params(fmt, mir, False, d.skip_bad_lines, PREPROCESS_DAYS)
    if dest.exists() and not dest.is_dir():
        raise DataError(dest, None, "is a file, where the run keeps its preprocessed data "
                                    "(a directory): move it or use another --out")
    old = None
    if (dest / "meta.json").exists():
        try:
            old = json.loads((dest / "meta.json").read_text())
            why = preprocess_mismatch(old, inputs, params) if isinstance(old, dict) else \
                "its meta.json is not a JSON object"
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            why = f"its meta.json cannot be read ({e})"
        if why is None:
            log(f"reusing the preprocessed data in {dest} (same input files, unchanged)")
            return dest
        log(f"preprocessing again into {dest}: {why}")
        # the old output's binary files (only names inside dest): a new one may not replace all
        files = old.get("files") if isinstance(old, dict) else None
        for name in files if isinstance(files, dict) else ():
            try:
                meta_member(dest, name, "files").unlink(missing_ok=True)
            except (DataError, OSError):
                pass
    log(f"preprocessing {len(inputs)} raw file(s) ({fmt}) into {dest} ...")
    meta = preprocess(inputs, dest, fmt=fmt, max_ind_range=mir, skip_bad_lines=d.skip_bad_lines,
                      days=PREPROCESS_DAYS)
    log(f"  {meta.get('total_rows', meta.get('rows', '?'))} rows; skipped "
        f"{meta.get('total_skipped', meta.get('skipped', 0))}, padded "
        f"{meta.get('total_padded', meta.get('padded', 0))} lines")
    return dest


def _data_files(paths: str, flag: str, kind: str) -> list[str]:
    """The comma-separated MLPerf binary files of ``flag``, each an existing readable file."""
    from dlrm_tvm.data.criteo import DataError, check_input_file

    files = [p for p in paths.split(",") if p]
    if not files and flag == "--data-path":
        raise DataError(paths, None, f"{flag} of --data {kind} names no file")
    for p in files:
        if Path(p).is_dir():
            raise DataError(p, None, f"is a directory: {flag} of --data {kind} takes MLPerf "
                                     ".bin file(s) (a `dlrm-tvm preprocess` directory goes "
                                     "with --data criteo-kaggle or criteo-terabyte)")
        check_input_file(p, f"{flag} of --data {kind} takes MLPerf .bin file(s)")
    return files


def make_source(cfg: Config, rank: int = 0, ranks: int = 1, data_dir: Path | None = None,
                eval_split: str = "test"):
    """The training source of ``cfg.data`` (``data_dir``: where raw files were preprocessed;
    ``eval_split``: the held-out rows of a preprocessed directory: test, val, train or all)."""
    d = cfg.data
    if d.kind == "synthetic":
        return SyntheticSource(cfg)
    from dlrm_tvm.data.criteo import BinaryDataset

    check_criteo_model(cfg)
    if d.kind == "mlperf-bin":
        paths = _data_files(d.path, "--data-path", d.kind)
        ev = _data_files(d.eval_path, "--eval-data-path", d.kind)
        train = BinaryDataset(paths if len(paths) > 1 else paths[0])
        held = BinaryDataset(ev if len(ev) > 1 else ev[0]) if ev else (
            train if eval_split == "all" else None)
        return BinarySource(cfg, train, held, rank, ranks,
                            {"kind": d.kind, "path": d.path, "eval_path": d.eval_path})
    src = Path(data_dir) if data_dir is not None else Path(d.path)
    train = BinaryDataset(src, split="train")
    held = BinaryDataset(src, split=eval_split)
    meta = train.meta or {}
    return BinarySource(cfg, train, held, rank, ranks,
                        {"kind": d.kind, "path": d.path, "preprocessed": str(src),
                         "skipped_lines": meta.get("total_skipped", meta.get("skipped")),
                         "padded_lines": meta.get("total_padded", meta.get("padded"))})
