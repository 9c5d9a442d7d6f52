"""Checkpoints: the whole training state, written atomically, readable at any rank count.

Layout of ``RUNDIR/checkpoints/``::

    step_000100/
        manifest.json        step, config, rank count, shards, data position, RNG, metrics
        t3_0_1000.npy        fp32 master rows [row_start, row_stop) of table 3 (one file per
        ...                  shard: a rank writes its own shards; 1 rank: one per table)
        acc_t3_0_1000.npy    rwsadagrad's row accumulators of that shard (if any)
        mlp.npz              fp32 MLP parameters (masters: bf16 runs rebuild them exactly)
        mlp_acc.npz          dense Adagrad accumulators (if any)
    latest                   the name of the newest complete checkpoint

Atomicity: everything is written into ``step_000100.tmp-<token>/`` first (files fsynced), the
directory is renamed to its final name (atomic on one filesystem), and only then ``latest``
is replaced (write + fsync + rename). A kill at any point leaves ``latest`` naming the
previous complete checkpoint; stale ``.tmp-`` directories are removed by the next write.

Reading: ``load_rows(ckpt, table, start, stop)`` assembles any row range of a table from the
shard files that overlap it (memory-mapped), so a run with another rank count reshards by
reading exactly the rows its new shards need.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np

FORMAT = 1
LATEST = "latest"


class CheckpointError(RuntimeError):
    pass


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def step_name(step: int) -> str:
    return f"step_{step:06d}"


def shard_file(table: int, start: int, stop: int, acc: bool = False) -> str:
    return f"{'acc_' if acc else ''}t{table}_{start}_{stop}.npy"


def begin(root: str | Path, step: int, token: str) -> Path:
    """The temporary directory a checkpoint of ``step`` is written into (created; stale ones
    of earlier attempts removed). ``token`` must be the same on every rank."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{step_name(step)}.tmp-{token}"
    tmp.mkdir(exist_ok=True)
    return tmp


def write_array(dirpath: Path, name: str, arr: np.ndarray) -> None:
    p = dirpath / name
    with open(p, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))
        f.flush()
        os.fsync(f.fileno())


def write_npz(dirpath: Path, name: str, arrays: dict[str, np.ndarray]) -> None:
    p = dirpath / name
    with open(p, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())


def commit(root: str | Path, tmp: Path, step: int, manifest: dict, keep: int = 2) -> Path:
    """Write the manifest, move ``tmp`` into place and point ``latest`` at it; then drop all
    but the newest ``keep`` checkpoints and any stale temporary directories."""
    root = Path(root)
    manifest = {"format": FORMAT, "step": step, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                **manifest}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync_file(tmp / "manifest.json")
    _fsync_dir(tmp)
    final = root / step_name(step)
    if final.exists():  # a checkpoint of this step already (a re-run): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    lt = root / f"{LATEST}.tmp"
    lt.write_text(final.name + "\n")
    _fsync_file(lt)
    os.replace(lt, root / LATEST)
    _fsync_dir(root)
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and ".tmp-" not in p.name)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob("step_*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return final


def find(path: str | Path) -> Path:
    """A checkpoint directory from: itself, a checkpoints/ root (its ``latest``), or a run
    directory holding checkpoints/."""
    p = Path(path)
    if (p / "manifest.json").exists():
        return p
    for root in (p, p / "checkpoints"):
        if (root / LATEST).exists():
            name = (root / LATEST).read_text().strip()
            c = root / name
            if not (c / "manifest.json").exists():
                raise CheckpointError(f"{root / LATEST} names {name}, which is incomplete")
            return c
    raise CheckpointError(f"no checkpoint at {p} (expected manifest.json, or checkpoints/latest)")


def read_manifest(ckpt: str | Path) -> dict:
    c = find(ckpt)
    m = json.loads((c / "manifest.json").read_text())
    if m.get("format") != FORMAT:
        raise CheckpointError(f"{c}: checkpoint format {m.get('format')} is not {FORMAT}")
    m["_dir"] = str(c)
    return m


def load_rows(manifest: dict, table: int, start: int, stop: int, dim: int,
              acc: bool = False) -> np.ndarray:
    """Rows [start, stop) of ``table`` (or of its row accumulators) from whichever shard files
    hold them."""
    c = Path(manifest["_dir"])
    out = np.empty((stop - start, dim) if not acc else (stop - start,), np.float32)
    filled = 0
    for s in manifest["shards"]:
        if s["table"] != table or s["row_stop"] <= start or s["row_start"] >= stop:
            continue
        a, b = max(start, s["row_start"]), min(stop, s["row_stop"])
        arr = np.load(c / shard_file(table, s["row_start"], s["row_stop"], acc), mmap_mode="r")
        out[a - start:b - start] = arr[a - s["row_start"]:b - s["row_start"]]
        filled += b - a
    if filled != stop - start:
        raise CheckpointError(f"{c}: rows {start}:{stop} of table {table} are not all in the "
                              f"checkpoint ({filled} found)")
    return out


def load_npz(manifest: dict, name: str) -> dict[str, np.ndarray]:
    with np.load(Path(manifest["_dir"]) / name) as z:
        return {k: z[k] for k in z.files}
