"""Where training batches come from, with a position that checkpoints save and restore.

A source gives ``next_batch()`` (the global batch, or with ``local = True`` this rank's slice
of it), ``eval_batches(n)`` (the held-out split as (global batch, real rows) pairs: every row
once, the last batch possibly short; ``len()`` of it is the number of batches), ``state()`` /
``restore(state)`` (JSON-able: the synthetic RNG, or the position in a file's epoch) and
``describe()`` for the run summary.

Criteo training rows are read in the order ``cfg.data.shuffle`` says (the reference's
``--data-randomize``: none, day, total; ``shuffle_batches``: its ``--mlperf-bin-shuffle``),
a new order every epoch (criteo/shuffle.py); held-out rows always in file order.

Table sizes: with ``cfg.data.table_sizes == "data"`` (the default) a run on Criteo data takes
its tables' rows from the data's meta.json (``sized_for_data``); whenever the data's ids do not
fit the model's tables they are folded (``id % rows``) and rank 0 logs a warning once, also
recorded in the summary (``describe()["folded"]``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config
from dlrm_tvm.data import SyntheticData
from dlrm_tvm.data.epochs import EpochRows

EVAL_STREAM = 0xE7A1
log = logging.getLogger("dlrm_tvm")


class Batches:
    """An iterable of (batch, real rows) with a known length (for progress lines)."""

    def __init__(self, make: Callable[[], Iterator], count: int):
        self._make, self.count = make, int(count)

    def __iter__(self) -> Iterator:
        return self._make()

    def __len__(self) -> int:
        return self.count


class SyntheticSource:
    """The reference's random generator (dlrm_tvm.data.SyntheticData); the held-out split is a
    second stream of the same generator (same teacher labels, other samples)."""

    local = False

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.gen = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, cfg.train.seed)

    def next_batch(self):
        return self.gen.next_batch()

    def eval_batches(self, n: int) -> Batches:
        def gen():
            g = SyntheticData(self.cfg.model, self.cfg.data, self.cfg.train.batch_size,
                              self.cfg.train.seed)
            g.rng = np.random.default_rng([self.cfg.train.seed, EVAL_STREAM])
            for _ in range(n):
                yield g.next_batch(), self.cfg.train.batch_size

        return Batches(gen, n)

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


class BinarySource(EpochRows):
    """Criteo rows from MLPerf binary files (dlrm_tvm.data.criteo.BinaryDataset), memory-mapped.
    Each rank reads only its slice of every global batch (``local``); an epoch reads the
    training rows in ``cfg.data.shuffle`` order (module docstring), and at its end the next
    epoch starts over in a new order. The held-out rows are read whole, every row once, in
    file order (the last batch short).

    ``meta``: the meta.json that describes the ids (None: unknown, as a bare MLPerf file: the
    largest ids are then watched batch by batch to tell when they are folded)."""

    kind, what = "binary", "a binary/Criteo file"

    def __init__(self, cfg: Config, train, held_out, rank: int = 0, ranks: int = 1,
                 describe: dict | None = None, meta: dict | None = None):
        self.cfg, self.train, self.held_out = cfg, train, held_out
        self.rank, self.ranks = rank, ranks
        self.local = ranks > 1
        self.B = cfg.train.batch_size
        self.table_rows = cfg.model.table_rows
        self.train_ok = train.rows >= self.B
        self.epoch = 0
        self.meta = meta
        self._desc = describe or {}
        self._ids = ids_of(meta)
        self._seen = None if meta is not None else np.zeros(len(self.table_rows), np.uint64)
        self._warned = False
        self.folded = folded_tables(meta, self.table_rows) if meta is not None else []
        if self.folded:
            self._warn(self.folded)
        self._open(0)

    def _stream(self, row: int, order):
        return self.train.batches(self.B, self.table_rows, start_row=row, rank=self.rank,
                                  ranks=self.ranks, drop_last=True, order=order,
                                  track_ids=self._seen is not None)

    def _warn(self, folds: list[dict]) -> None:
        if self.rank == 0 and not self._warned:
            log.warning("%s", fold_message(folds, self.cfg))
        self._warned = True

    def _watch(self, max_ids: np.ndarray | None) -> None:
        """Ids past a table's rows seen in batches of a source without meta.json."""
        if self._seen is None or max_ids is None:
            return
        np.maximum(self._seen, max_ids.astype(np.uint64), out=self._seen)
        rows = np.asarray(self.table_rows, np.uint64)
        if (self._seen >= rows).any():
            self.folded = [{"table": int(t), "rows": int(rows[t]),
                            "data_rows": int(self._seen[t]) + 1, "id_mode": "seen"}
                           for t in np.flatnonzero(self._seen >= rows)]
            if not self._warned:
                self._warn(self.folded)

    def next_batch(self):
        batch = self._next_train()
        self._watch(self.stream.max_ids)
        return batch

    def eval_batches(self, n: int | None = None) -> Batches:
        held = self.held_out
        count = 0 if held is None else -(-held.rows // self.B)

        def gen():
            if held is None:
                return
            stream = held.batches(self.B, self.table_rows, drop_last=False,
                                  track_ids=self._seen is not None)
            for batch in stream:
                self._watch(stream.max_ids)
                yield batch, batch.dense.shape[0]

        return Batches(gen, count)

    def state(self) -> dict:
        return {**self.position(), "ids": self._ids}

    def describe(self) -> dict:
        d = self.cfg.data
        return {**self._desc, "train_rows": self.train.rows,
                "held_out_rows": self.held_out.rows if self.held_out is not None else 0,
                "epoch": self.epoch, "shuffle": d.shuffle, "shuffle_batches": d.shuffle_batches,
                "table_sizes": d.table_sizes, "ids": self._ids, "folded": self.folded}


# ------------------------------------------------------------------ ids and table sizes


def ids_of(meta: dict | None) -> dict | None:
    """How the ids of a preprocess output were made: ``id_mode`` (remap, hash_mod, hash32),
    ``max_ind_range`` and the ``mapping`` file (absolute; remap only): what evaluating other
    raw files with a model trained on these ids must repeat. None without a meta.json."""
    if not isinstance(meta, dict) or "id_mode" not in meta:
        return None
    mapping = None
    if meta.get("id_mode") == "remap":
        params = meta.get("params") or {}
        given = params.get("mapping") if isinstance(params, dict) else None
        if isinstance(given, dict) and given.get("path"):
            mapping = given["path"]  # an applied mapping: its resolved path
        elif meta.get("_dir") and meta.get("mapping"):
            mapping = str((Path(meta["_dir"]) / meta["mapping"]).resolve())
    return {"id_mode": meta.get("id_mode"), "max_ind_range": meta.get("max_ind_range"),
            "mapping": mapping}


def data_table_sizes(meta: dict | None) -> list[int] | None:
    """The rows each table needs so that every id of the data fits (meta.json's
    ``table_sizes``), or None when unknown or unbounded (the raw 32-bit hash)."""
    if not isinstance(meta, dict) or meta.get("id_mode") == "hash32":
        return None
    sizes = meta.get("table_sizes")
    return [int(x) for x in sizes] if isinstance(sizes, list) else None


def folded_tables(meta: dict | None, table_rows) -> list[dict]:
    """The tables whose data ids do not fit the model's rows (so are folded ``% rows``):
    ``{"table", "rows": the model's, "data_rows": the rows the ids need, "id_mode"}``."""
    if not isinstance(meta, dict):
        return []
    sizes = meta.get("table_sizes")
    if not isinstance(sizes, list) or len(sizes) != len(table_rows):
        return []
    mode = meta.get("id_mode")
    return [{"table": t, "rows": int(r), "data_rows": int(n), "id_mode": mode}
            for t, (n, r) in enumerate(zip(sizes, table_rows, strict=True)) if n > r]


def fold_message(folds: list[dict], cfg: Config | None = None) -> str:
    """The warning for folded ids: how many tables, each table's ids into its rows, and the fix
    that fits where the rows came from (``cfg``): tables given by --arch-embedding-size, tables
    capped by --max-ind-range below ids the data was preprocessed with, or otherwise."""
    def one(f: dict) -> str:
        t, rows, n, mode = f["table"], f["rows"], f["data_rows"], f.get("id_mode")
        if mode == "seen":
            return f"table {t}: ids up to {n - 1:,} seen, folded into {rows:,} rows"
        if mode == "hash32":
            return f"table {t}: raw 32-bit hashes folded into {rows:,} rows"
        if mode == "remap":  # id 0 is the empty field's
            return f"table {t}: {n - 1:,} distinct ids folded into {rows:,} rows"
        return f"table {t}: ids 0..{n - 1:,} folded into {rows:,} rows"

    shown = "; ".join(one(f) for f in folds[:8])
    more = f"; and {len(folds) - 8} more (summary.json: data.folded)" if len(folds) > 8 else ""
    mir = cfg.data.max_ind_range if cfg is not None else 0
    if cfg is not None and cfg.data.table_sizes == "config":
        fix = ("Take the table sizes from the data (drop --arch-embedding-size; table_sizes = "
               "\"data\") or give larger tables to avoid it")
    elif mir and all(f["rows"] <= mir < f["data_rows"] for f in folds):
        fix = (f"The tables are capped by --max-ind-range {mir:,}, but the data's ids were made "
               f"with a larger one: preprocess again with --max-ind-range {mir:,} (then every "
               f"id fits its table), or drop --max-ind-range to take the sizes from the data")
    else:
        fix = "Give larger tables (--arch-embedding-size) or take their sizes from the data"
    return (f"ids folded: {len(folds)} of the model's {'tables' if len(folds) > 1 else 'table'} "
            f"{'have' if len(folds) > 1 else 'has'} fewer rows than the data has ids, so ids "
            f"are taken modulo the rows (several categories share a row): {shown}{more}. {fix}")


def data_meta(cfg: Config, data_dir: Path | None = None) -> dict | None:
    """The meta.json that describes ``cfg.data``'s ids (with ``_dir``, its directory): a
    preprocess directory's (``data_dir``, where raw files were preprocessed, else
    ``cfg.data.path``), or for mlperf-bin files the one beside the first file that lists it;
    None if there is none."""
    from dlrm_tvm.data.criteo import DataError, load_meta

    d = cfg.data
    if d.kind == "synthetic":
        return None
    if d.kind == "mlperf-bin":
        first = next((p for p in d.path.split(",") if p), None)
        if first is None or not (Path(first).parent / "meta.json").is_file():
            return None
        try:
            meta = load_meta(Path(first).parent)
        except DataError:
            return None
        if Path(first).name not in meta["files"]:
            return None
        return {**meta, "_dir": str(Path(first).parent)}
    src = Path(data_dir) if data_dir is not None else Path(d.path)
    if not (src / "meta.json").is_file():
        return None
    return {**load_meta(src), "_dir": str(src)}


def sized_for_data(cfg: Config, data_dir: Path | None = None, say=None) -> Config:
    """``cfg`` with its tables' rows taken from the data (meta.json's ``table_sizes``: the
    remapped ids' counts, or ``max_ind_range``), capped at ``cfg.data.max_ind_range`` when set
    (as the reference caps its counts), when ``cfg.data.table_sizes == "data"`` and the data
    has a meta.json with bounded ids; otherwise ``cfg`` as it is (its ids folded into the
    config's rows, with a warning when they do not fit: ``BinarySource``)."""
    d = cfg.data
    if d.kind == "criteo-multihot":  # its bag sizes (and our writer's table rows)
        from dlrm_tvm.data.criteo.multihot import sized_for_multihot

        return sized_for_multihot(cfg, say)
    if d.kind == "synthetic" or d.table_sizes != "data":
        return cfg
    check_criteo_model(cfg)
    meta = data_meta(cfg, data_dir)
    sizes = data_table_sizes(meta)
    if sizes is None or len(sizes) != cfg.model.num_tables:
        return cfg
    if d.max_ind_range:
        sizes = [min(x, d.max_ind_range) for x in sizes]
    if tuple(sizes) == cfg.model.table_rows:
        return cfg
    if say is not None:
        say(f"table sizes from the data ({meta.get('id_mode')} ids, {meta['_dir']}/meta.json"
            f"{f', capped at --max-ind-range {d.max_ind_range}' if d.max_ind_range else ''}): "
            f"{sum(sizes):,} rows in all, largest {max(sizes):,} (the config had "
            f"{cfg.model.total_rows:,}); --arch-embedding-size or table_sizes = \"config\" "
            f"keeps the config's")
    return cfg.replace(model=dataclasses.replace(cfg.model, table_rows=tuple(sizes)))


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


def preprocess_for_run(cfg: Config, out_dir: Path, log=print, remap: bool = True,
                       mapping: str | Path | None = None, max_ind_range: int | None = None,
                       progress: bool = False, workers: int | None = None,
                       dest: Path | None = None) -> Path:
    """Raw Criteo file(s) in cfg.data.path (a file, or several separated by commas) into
    ``dest`` (default ``cfg.data.processed_path``, else OUT/data); returns that directory. A
    complete output there (its meta.json) is reused only when it was made from the same files
    (resolved path, size, mtime, a digest of the first and last MiB) with the same parameters;
    otherwise (other or changed inputs, other parameters, a meta.json without that record) it
    is preprocessed again, saying why.

    The ids: ``remap`` (training's default, as the reference's dictionaries): contiguous per
    column in order of first appearance, after ``% max_ind_range`` when one is given, so the
    table sizes of the data are finite (``sized_for_data``); ``mapping``: an earlier run's
    ``mapping.npz`` applied as is (evaluating with the ids a model was trained on); neither:
    ``int(hex, 16) % max_ind_range``, or the raw 32-bit hash. ``max_ind_range``: default
    ``cfg.data.max_ind_range`` (0: none). ``progress``: rate and ETA lines on stderr;
    ``workers``: processes (default: ``preprocess``'s)."""
    from dlrm_tvm.data.criteo import (
        DataError,
        meta_member,
        preprocess,
        preprocess_mismatch,
        preprocess_params,
    )

    d = cfg.data
    if dest is None:
        dest = Path(d.processed_path) if d.processed_path else Path(out_dir) / "data"
    dest = Path(dest)
    inputs = _raw_inputs(cfg)
    fmt = "kaggle" if d.kind == "criteo-kaggle" else "terabyte"
    mir = (d.max_ind_range if max_ind_range is None else max_ind_range) or None
    learn = remap and mapping is None
    params = preprocess_params(fmt, mir, learn, d.skip_bad_lines, PREPROCESS_DAYS, mapping)
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
    ids = ("remapped" if learn else f"mapped by {mapping}" if mapping else
           f"% {mir}" if mir else "raw 32-bit hash")
    log(f"preprocessing {len(inputs)} raw file(s) ({fmt}, ids {ids}) into {dest} ...")
    meta = preprocess(inputs, dest, fmt=fmt, max_ind_range=mir, remap=learn,
                      skip_bad_lines=d.skip_bad_lines, days=PREPROCESS_DAYS, mapping=mapping,
                      workers=workers, progress=progress)
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
                eval_split: str | None = None):
    """The training source of ``cfg.data`` (``data_dir``: where raw files were preprocessed;
    ``eval_split``: the held-out rows: test, val, train or all; default the data's own:
    "test" for Criteo (the reference's), "val" for MLPerf DCNv2's multi-hot days (its
    reference validates on day 23's first half during training))."""
    d = cfg.data
    if d.kind == "synthetic":
        return SyntheticSource(cfg)
    if d.kind == "criteo-multihot":  # MLPerf DCNv2's multi-hot days, memory-mapped
        from dlrm_tvm.data.criteo.multihot import MultiHotSource

        return MultiHotSource(cfg, rank, ranks, eval_split or "val")
    eval_split = eval_split or "test"
    from dlrm_tvm.data.criteo import BinaryDataset

    check_criteo_model(cfg)
    if d.kind == "mlperf-bin":
        paths = _data_files(d.path, "--data-path", d.kind)
        ev = _data_files(d.eval_path, "--eval-data-path", d.kind)
        train = BinaryDataset(paths if len(paths) > 1 else paths[0])
        held = BinaryDataset(ev if len(ev) > 1 else ev[0]) if ev else (
            train if eval_split == "all" else None)
        return BinarySource(cfg, train, held, rank, ranks,
                            {"kind": d.kind, "path": d.path, "eval_path": d.eval_path},
                            meta=data_meta(cfg))
    src = Path(data_dir) if data_dir is not None else Path(d.path)
    train = BinaryDataset(src, split="train")
    held = BinaryDataset(src, split=eval_split)
    meta = train.meta or {}
    return BinarySource(cfg, train, held, rank, ranks,
                        {"kind": d.kind, "path": d.path, "preprocessed": str(src),
                         "skipped_lines": meta.get("total_skipped", meta.get("skipped")),
                         "padded_lines": meta.get("total_padded", meta.get("padded"))},
                        meta={**meta, "_dir": str(src)})
