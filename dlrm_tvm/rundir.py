"""A run directory held by one run at a time: refusal of an existing run, a lock, clean-up.

``RUNDIR/.lock`` is held with ``flock`` for the whole run (the kernel drops it when the
process dies, so a killed run never leaves a stale lock); it records the holder's pid and host
for the message a second run gets. A directory that already holds a run (config.json,
summary.json, metrics.jsonl or checkpoints/) is refused unless the new run resumes
(``--resume``) or asks to replace it (``--overwrite``, which removes that run's metrics,
summary, config, params and checkpoints; preprocessed data and the artifact are kept, both
are checked against what the new run needs before reuse).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from dlrm_tvm.config import ConfigError

RUN_FILES = ("config.json", "summary.json", "metrics.jsonl", "params.npz", "train.log")
LOCK = ".lock"


def holds_run(out: Path) -> list[str]:
    """The files of an earlier run in ``out``."""
    found = [n for n in RUN_FILES if (out / n).exists()]
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        found.append("checkpoints/")
    return found


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
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
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
            for n in found:
                p = out / n.rstrip("/")
                if p.is_dir():
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
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    os.replace(tmp, path)
    return dropped


class RunLog:
    """``with RunLog(out):`` every log line of the run (and the progress lines) also goes to
    ``RUNDIR/train.log``, with the time, flushed per line."""

    def __init__(self, out: Path):
        import logging

        self.handler = logging.FileHandler(Path(out) / "train.log", mode="a")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                                    "%Y-%m-%d %H:%M:%S"))
        self.log = logging.getLogger("dlrm_tvm")

    def line(self, text: str) -> None:
        """A line that is not a log record (a progress line)."""
        import logging

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
