"""Checkpoints: the whole training state, written atomically, readable at any rank count.

Layout of ``RUNDIR/checkpoints/``::

    step_000100/
        manifest.json        step, config, rank count, shards, data position, and the size
                             and SHA-256 of every other file (verified on every load)
        t3_0_1000.npy        fp32 master rows [row_start, row_stop) of table 3 (one file per
        ...                  shard: a rank writes its own shards; 1 rank: one per table)
        acc_t3_0_1000.npy    that shard's optimizer state (if any): rwsadagrad's row
                             accumulators [rows], adagrad's state [rows, D]
        mlp.npz              fp32 MLP parameters (masters: bf16 runs rebuild them exactly)
        mlp_acc.npz          dense Adagrad accumulators (if any)
    latest                   the name of the newest complete checkpoint

Atomicity: everything is written into ``step_000100.tmp-<token>/`` first (files fsynced), the
directory is renamed to its final name (atomic on one filesystem), and only then ``latest``
is replaced (write + fsync + rename). A kill at any point leaves ``latest`` naming the
previous complete checkpoint; stale ``.tmp-`` directories are removed by the next write (and
by ``clean_stale`` when a run starts). Pruning keeps the newest ``keep`` checkpoints by the
order they were written (never the one just written), not by step number, so a resumed run's
new checkpoints are never deleted in favour of an older run's higher steps.

Trust: every file a checkpoint holds is listed in its manifest with its byte size and SHA-256;
loading verifies a file before its first use and names it on a mismatch. ``latest`` must name
a ``step_NNNNNN`` directory inside its root. Arrays are read with ``allow_pickle=False``.

Reading: ``load_rows(ckpt, table, start, stop)`` assembles any row range of a table from the
shard files that overlap it (memory-mapped), so a run with another rank count reshards by
reading exactly the rows its new shards need.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np

FORMAT = 2  # 2: per-file sizes and SHA-256 in the manifest; 1 (no digests) is still read
LATEST = "latest"
_STEP_DIR = re.compile(r"step_\d{6,}")

log = logging.getLogger("dlrm_tvm")


class CheckpointError(RuntimeError):
    pass


def file_digest(path: Path, chunk: int = 1 << 24) -> dict:
    """{"bytes": size, "sha256": hex digest} of the file at ``path``."""
    h = hashlib.sha256()
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
            n += len(b)
    return {"bytes": n, "sha256": h.hexdigest()}


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


def write_array(dirpath: Path, name: str, arr: np.ndarray) -> dict:
    """Write ``arr`` as ``dirpath/name`` (.npy, fsynced); returns its digest entry."""
    p = dirpath / name
    with open(p, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return file_digest(p)


def write_npz(dirpath: Path, name: str, arrays: dict[str, np.ndarray]) -> dict:
    p = dirpath / name
    with open(p, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return file_digest(p)


def non_finite(arr: np.ndarray) -> int:
    """How many entries of ``arr`` are NaN or infinite (0 for integer arrays)."""
    a = np.asarray(arr)
    if a.dtype.kind != "f":
        return 0
    return int(a.size - np.count_nonzero(np.isfinite(a)))


def discard(tmp: Path) -> None:
    """Remove a checkpoint directory that will not be committed."""
    shutil.rmtree(tmp, ignore_errors=True)


def clean_stale(root: str | Path) -> list[str]:
    """Remove leftovers of interrupted writes under ``root`` (``step_*.tmp-*`` directories,
    ``latest.tmp``); returns their names. Call only while holding the run directory."""
    root = Path(root)
    gone = []
    if not root.is_dir():
        return gone
    for stale in root.glob("step_*.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
        gone.append(stale.name)
    lt = root / f"{LATEST}.tmp"
    if os.path.lexists(lt):
        lt.unlink(missing_ok=True)
        gone.append(lt.name)
    return gone


def _written_order(path: Path) -> tuple[int, int]:
    """Sort key: (write time in ns from the manifest, step); unreadable manifests sort first."""
    step = int(path.name.split("_")[1]) if _STEP_DIR.fullmatch(path.name) else -1
    try:
        m = json.loads((path / "manifest.json").read_text())
        return int(m.get("written_ns", 0)), step
    except (OSError, ValueError, TypeError):
        return -1, step


def commit(root: str | Path, tmp: Path, step: int, manifest: dict, keep: int = 2) -> Path:
    """Write the manifest, move ``tmp`` into place and point ``latest`` at it; then drop all
    but the newest ``keep`` checkpoints and any stale temporary directories."""
    root = Path(root)
    manifest = {"format": FORMAT, "step": step, "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "written_ns": time.time_ns(), **manifest}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    _fsync_file(tmp / "manifest.json")
    _fsync_dir(tmp)
    final = root / step_name(step)
    if final.exists():  # a checkpoint of this step already (a re-run): replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    lt = root / f"{LATEST}.tmp"
    lt.unlink(missing_ok=True)  # a leftover (or a link planted there): never written through
    fd = os.open(lt, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(final.name + "\n")
    _fsync_file(lt)
    os.replace(lt, root / LATEST)
    _fsync_dir(root)
    # the newest `keep` by the order they were written; the one just written is always kept
    done = sorted((p for p in root.glob("step_*") if p.is_dir() and _STEP_DIR.fullmatch(p.name)
                   and p != final), key=_written_order)
    for old in done[:-(keep - 1)] if keep > 1 else done:
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
    if not p.exists():
        raise CheckpointError(f"no checkpoint at {p}: it does not exist")
    for root in (p, p / "checkpoints"):
        if (root / LATEST).is_file():
            try:
                name = (root / LATEST).read_text().strip()
            except (OSError, UnicodeDecodeError) as e:
                raise CheckpointError(f"{root / LATEST}: unreadable ({e})") from e
            # only a step directory inside this root: never a path elsewhere (../x, /abs)
            if not _STEP_DIR.fullmatch(name):
                raise CheckpointError(f"{root / LATEST} names {name[:80]!r}, which is not a "
                                      f"checkpoint directory of {root} (step_NNNNNN)")
            c = root / name
            if not (c / "manifest.json").is_file():
                raise CheckpointError(f"{root / LATEST} names {name}, which is incomplete")
            return c
    hint = ""
    if (p / "summary.json").exists():
        hint = (" (a run directory without checkpoints: it finished before runs wrote a final "
                "checkpoint, or ran with --no-final-checkpoint)")
    raise CheckpointError(f"no checkpoint at {p} (expected manifest.json, or checkpoints/latest)"
                          + hint)


_MANIFEST_KEYS = {"format": int, "step": int, "config": dict, "shards": list}


def read_manifest(ckpt: str | Path) -> dict:
    c = find(ckpt)
    mp = c / "manifest.json"
    try:
        m = json.loads(mp.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{mp}: not a valid manifest ({e})") from e
    if not isinstance(m, dict):
        raise CheckpointError(f"{mp}: not a valid manifest (a JSON object is expected)")
    if m.get("format") not in (1, FORMAT):
        raise CheckpointError(f"{mp}: checkpoint format {m.get('format')!r} is not {FORMAT}")
    for k, typ in _MANIFEST_KEYS.items():
        if not isinstance(m.get(k), typ) or isinstance(m.get(k), bool):
            raise CheckpointError(f"{mp}: {k!r} is missing or not a {typ.__name__}")
    for s in m["shards"]:
        if not (isinstance(s, dict) and all(isinstance(s.get(k), int) and not
                                            isinstance(s.get(k), bool) and s.get(k) >= 0
                                            for k in ("table", "row_start", "row_stop"))):
            raise CheckpointError(f"{mp}: a shard entry is malformed: {str(s)[:120]}")
    files = m.get("files")
    if m["format"] >= 2 and not isinstance(files, dict):
        raise CheckpointError(f"{mp}: 'files' (sizes and digests) is missing")
    if m["format"] == 1:
        log.warning("%s: a format-1 checkpoint (no digests): its files cannot be verified", c)
    m["_dir"] = str(c)
    m["_verified"] = set()
    return m


def verify_file(manifest: dict, name: str) -> Path:
    """The path of ``name`` in the checkpoint after checking it against the manifest's size and
    SHA-256 (once per manifest); CheckpointError naming the file otherwise."""
    c = Path(manifest["_dir"])
    path = c / name
    if name in manifest.get("_verified", ()):
        return path
    if not path.is_file():
        raise CheckpointError(f"{path}: missing from the checkpoint")
    files = manifest.get("files")
    if files is not None:
        want = files.get(name)
        if not isinstance(want, dict):
            raise CheckpointError(f"{path}: not listed in {c / 'manifest.json'}")
        size = path.stat().st_size
        if size != want.get("bytes"):
            raise CheckpointError(f"{path}: {size} bytes, but the manifest recorded "
                                  f"{want.get('bytes')}: the file is truncated or replaced")
        got = file_digest(path)
        if got["sha256"] != want.get("sha256"):
            raise CheckpointError(f"{path}: its SHA-256 does not match the manifest: the file "
                                  f"is corrupted (changed after it was written)")
    manifest.setdefault("_verified", set()).add(name)
    return path


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable .npy array ({e})") from e


def load_rows(manifest: dict, table: int, start: int, stop: int, dim: int,
              acc: bool = False, acc_cols: int | None = None) -> np.ndarray:
    """Rows [start, stop) of ``table`` (or of its optimizer state: ``acc``, [rows], or
    [rows, acc_cols] with ``acc_cols``) from whichever shard files hold them."""
    c = Path(manifest["_dir"])
    cols = (dim,) if not acc else (() if acc_cols is None else (acc_cols,))
    out = np.empty((stop - start, *cols), np.float32)
    filled = 0
    for s in manifest["shards"]:
        if s["table"] != table or s["row_stop"] <= start or s["row_start"] >= stop:
            continue
        a, b = max(start, s["row_start"]), min(stop, s["row_stop"])
        path = verify_file(manifest, shard_file(table, s["row_start"], s["row_stop"], acc))
        arr = _load_npy(path)
        want = (s["row_stop"] - s["row_start"], *cols)
        if arr.shape != want or arr.dtype != np.float32:
            raise CheckpointError(f"{path}: holds {arr.dtype}{list(arr.shape)}, expected "
                                  f"float32{list(want)}")
        out[a - start:b - start] = arr[a - s["row_start"]:b - s["row_start"]]
        filled += b - a
    if filled != stop - start:
        raise CheckpointError(f"{c}: rows {start}:{stop} of table {table} are not all in the "
                              f"checkpoint ({filled} found)")
    return out


def load_npz(manifest: dict, name: str) -> dict[str, np.ndarray]:
    path = verify_file(manifest, name)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"{path}: not a readable .npz archive ({e})") from e
