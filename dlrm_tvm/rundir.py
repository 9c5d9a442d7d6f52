"""A run directory held by one run at a time: refusal of an existing run, a lock, clean-up.

``RUNDIR/.lock`` is held with ``flock`` for the whole run (the kernel drops it when the
process dies, so a killed run never leaves a stale lock); it records the holder's pid and host
for the message a second run gets. A directory that already holds a run (summary.json,
params.npz, a metric line or checkpoints/; not a config.json or train.log alone, which a run
that failed before its first step leaves) is refused unless the new run resumes
(``--resume``) or asks to replace it (``--overwrite``, which removes that run's metrics,
summary, config, params and checkpoints; preprocessed data and the artifact are kept, both
are checked against what the new run needs before reuse).

No file of a run is written through a symbolic link: the lock, train.log and metrics.jsonl
are opened with ``O_NOFOLLOW`` (a link is refused, named), and whole files (config.json,
summary.json, params.npz) are written to a new temporary file and renamed over the name,
which replaces a link instead of following it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlrm_tvm.config import ConfigError

RUN_FILES = ("config.json", "summary.json", "metrics.jsonl", "params.npz", "train.log")
LOCK = ".lock"


def holds_run(out: Path) -> list[str]:
    """The files that show an earlier run took a step in ``out`` (a summary, params, a metric
    line, a checkpoint). A run that failed before its first step leaves at most an empty or
    short train.log and a config.json: those alone do not block the next run."""
    found = [n for n in ("summary.json", "params.npz") if os.path.lexists(out / n)]
    m = out / "metrics.jsonl"
    if m.is_symlink() or (m.is_file() and m.stat().st_size > 0):
        found.append("metrics.jsonl")
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        found.append("checkpoints/")
    return found


def _link_refused(path: Path) -> ConfigError:
    return ConfigError(f"{path} is a symbolic link: a run never writes through a link (it "
                       f"could overwrite the file it points to); remove the link")


def open_run_file(path: str | Path, append: bool = False) -> int:
    """A file descriptor of ``path`` opened for writing (created, truncated unless
    ``append``), never through a symbolic link (ConfigError naming it)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise _link_refused(Path(path)) from None
        raise ConfigError(f"{path}: cannot be written ({e.strerror})") from e


def write_file(path: str | Path, data: str | bytes | Callable) -> None:
    """Write ``path`` whole: into a new temporary file beside it (O_EXCL, no link followed),
    then renamed over it (a link at ``path`` is replaced, never followed). ``data``: text,
    bytes, or a function writing to the open binary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{time.time_ns()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _json_safe(obj, where: str, nulled: list[str]):
    """``obj`` with every non-finite float replaced by None (JSON has no NaN or infinity);
    the places replaced are appended to ``nulled``."""
    if isinstance(obj, dict):
        return {k: _json_safe(v, f"{where}.{k}" if where else str(k), nulled)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v, f"{where}[{i}]", nulled) for i, v in enumerate(obj)]
    if isinstance(obj, (float, np.floating)) and not math.isfinite(float(obj)):
        nulled.append(f"{where} ({float(obj)})")
        return None
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_summary(path: str | Path, summary: dict) -> dict:
    """Write ``summary`` as JSON (strict: no NaN or infinity; such values are written null
    and listed, with their value, under ``"null_because_not_finite"``); returns what was
    written."""
    nulled: list[str] = []
    safe = _json_safe(summary, "", nulled)
    if nulled:
        safe["null_because_not_finite"] = nulled
        logging.getLogger("dlrm_tvm").warning(
            "summary.json: %s not finite, written as null (an empty held-out split gives NaN "
            "metrics)", ", ".join(nulled))
    write_file(path, json.dumps(safe, indent=2, sort_keys=True, allow_nan=False,
                                default=float))
    return safe


class RunDir:
    """``with RunDir(out, resume=..., overwrite=...)``: the directory, created, locked and
    checked; released on exit."""

    def __init__(self, out: str | Path, resume: bool = False, overwrite: bool = False):
        self.path = Path(out)
        self.resume = resume
        self.overwrite = overwrite
        self._fd: int | None = None

    def __enter__(self) -> RunDir:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        out = self.path
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a directory: give a directory for "
                              f"the run (it is created if missing)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"--out {out}: cannot create the run directory ({e})") from e
        lock = out / LOCK
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if lock.is_symlink():
                raise _link_refused(lock) from None
            raise ConfigError(f"--out {out}: cannot write in the run directory ({e})") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, UnicodeDecodeError):
                holder = {}
            os.close(fd)
            who = (f" (pid {holder.get('pid')} on {holder.get('host')}, started "
                   f"{holder.get('started')})" if holder else "")
            raise ConfigError(f"another dlrm-tvm run is using {out}{who}: wait for it to end "
                              f"or give another --out") from None
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        found = holds_run(out)
        if found and not self.resume:
            if not self.overwrite:
                self.release()
                raise ConfigError(
                    f"{out} already holds a run ({', '.join(found)}): continue it with --resume, "
                    f"replace it with --overwrite, or give another --out")
            for n in dict.fromkeys(found + list(RUN_FILES)):
                p = out / n.rstrip("/")
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p)
                else:
                    p.unlink(missing_ok=True)
        from dlrm_tvm.runtime.checkpoint import clean_stale

        clean_stale(out / "checkpoints")

    def release(self) -> None:
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None


def truncate_metrics(path: Path, step: int) -> int:
    """Keep the metrics lines of steps before ``step`` (training) or at most ``step``
    (evaluations): what a run resumed at ``step`` has not redone. Returns lines dropped."""
    if path.is_symlink():
        raise _link_refused(path)
    if not path.exists():
        return 0
    keep, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
            s = int(rec.get("step", -1))
        except (ValueError, TypeError, AttributeError):
            dropped += 1  # a torn last line of a killed run
            continue
        if (s <= step) if rec.get("kind") == "eval" else (s < step):
            keep.append(line)
        else:
            dropped += 1
    write_file(path, "".join(x + "\n" for x in keep))
    return dropped


class RunLog:
    """``with RunLog(out):`` every log line of the run (and the progress lines) also goes to
    ``RUNDIR/train.log``, with the time, flushed per line."""

    def __init__(self, out: Path):
        self.path = Path(out) / "train.log"
        self.stream = os.fdopen(open_run_file(self.path, append=True), "a", buffering=1)
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                                    "%Y-%m-%d %H:%M:%S"))
        self.log = logging.getLogger("dlrm_tvm")

    def line(self, text: str) -> None:
        """A line that is not a log record (a progress line)."""
        self.handler.emit(logging.LogRecord("dlrm_tvm", logging.INFO, "", 0, text.rstrip(),
                                            None, None))

    def __enter__(self) -> RunLog:
        self.log.addHandler(self.handler)
        if self.log.getEffectiveLevel() > 20:
            self.log.setLevel(20)
        return self

    def __exit__(self, *exc) -> None:
        self.log.removeHandler(self.handler)
        self.handler.close()
        empty = os.fstat(self.stream.fileno()).st_size == 0
        self.stream.close()
        if empty:  # nothing was logged (a run refused at once): leave nothing behind
            with contextlib.suppress(OSError):
                self.path.unlink()
