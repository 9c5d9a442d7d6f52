"""``preprocess`` in worker processes, with the serial run's output byte for byte.

Every input is cut into byte ranges at line starts (``raw.line_ranges``: a Terabyte day is
several ranges, a Kaggle ``train.txt`` too), and two passes run over them:

1. parse every range into a part file of binary rows (``RawReader`` over the range, its lines
   numbered from 1). With ``remap`` each worker numbers its range's categories in order of
   first appearance (a local ``CategoryMap``) and returns them in that order; the parent,
   taking the ranges in file order, adds them to the global map, which numbers them exactly
   as a serial pass over the whole file would (in order of first appearance), and keeps per
   range the table local id -> global id;
2. write each part into the output file at its row offset, translating local ids to global
   ones (a gather per column), and delete it.

The parent takes the results in file order, so it knows how many lines precede each range:
the first bad line of the file is the error raised, and the skip reasons are kept, with
their global ``file:line`` (as serially).

``workers`` counts processes in all: this one takes tasks too, beside ``workers - 1`` fresh
interpreters (``python -m dlrm_tvm.data.criteo.parallel``, tasks and results pickled over
their stdin and stdout): nothing of the parent is inherited (TVM's thread pool, MPI) and,
unlike multiprocessing's spawn, the caller's main module is never re-imported, so any script
may call ``preprocess(workers=N)``.
"""

from __future__ import annotations

import math
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from dlrm_tvm.data.criteo.category_map import CategoryMap
from dlrm_tvm.data.criteo.layout import MIN_FIELDS, NUM_CAT, ROW_BYTES, DataError, PathLike
from dlrm_tvm.data.criteo.raw import MAX_REASONS, RawReader, line_ranges

RANGE_BYTES = 64 << 20  # a range of the input a worker parses at a time (at most)
RANGES_PER_WORKER = 8  # at least, over all the inputs: the ranges are shared out evenly
MIN_RANGE_BYTES = 1 << 20
MIN_BYTES = 8 << 20  # inputs smaller than this in all are preprocessed serially
WORKER_MEMORY = 1 << 29  # about what a worker holds: its chunk's parse temporaries and part
# lines a worker parses at a time: the parser's temporaries (about 5 KB a line) then stay near
# the caches; at the serial default (32768 lines, ~170 MB) two parsers share the memory
# bandwidth and each runs a quarter slower (the output does not depend on it)
CHUNK_ROWS = 4096


def default_workers() -> int:
    """The CPUs this process may run on (its affinity: taskset, cgroups, an MPI rank's
    pinning), at most one per 512 MiB of available memory; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    from dlrm_tvm.config import available_memory

    mem = available_memory()
    if mem is not None:
        cpus = min(cpus, max(1, mem // WORKER_MEMORY))
    return max(1, cpus)


def plan_ranges(inputs: Sequence[PathLike], workers: int) -> list[list[tuple[int, int]]]:
    """Per input, its byte ranges: ``RANGES_PER_WORKER`` a worker over all the inputs,
    none above ``RANGE_BYTES`` nor, where the file allows, below ``MIN_RANGE_BYTES``. An
    empty file is one empty range (its worker raises the serial run's error)."""
    sizes = [os.path.getsize(p) for p in inputs]
    total = max(1, sum(sizes))
    out = []
    for p, size in zip(inputs, sizes, strict=True):
        if size == 0:
            out.append([(0, 0)])
            continue
        want = max(math.ceil(size / RANGE_BYTES), round(RANGES_PER_WORKER * workers * size /
                                                        total))
        want = max(1, min(want, size // MIN_RANGE_BYTES))
        out.append(line_ranges(p, want))
    return out


# ---------------------------------------------------------------- the workers' tasks


_FROZEN: dict[str, CategoryMap] = {}  # per worker: an applied mapping, loaded once


def _parse(task: tuple) -> dict:
    """Parse one range into ``part``; returns its stats (skip reasons as (line, reason), the
    lines counted from the range's first) and (remap) its keys in order, or the first bad
    line's error as (path, line in the range, reason)."""
    (path, a, b, max_ind_range, skip, chunk_rows, mode, mapping, part) = task
    reader = RawReader(path, skip, max_ind_range, chunk_rows, byte_range=(a, b))
    cmap = None
    if mode == "learn":
        cmap = CategoryMap()
    elif mode == "apply":
        if mapping not in _FROZEN:
            _FROZEN[mapping] = CategoryMap.load(mapping)
        cmap = _FROZEN[mapping]
    try:
        with open(part, "wb") as f:
            for chunk in reader:
                cats = None if cmap is None else cmap.map(chunk.cats, add=mode == "learn")
                chunk.to_rows(cats).astype("<i4", copy=False).tofile(f)
    except DataError as e:
        return {"error": (e.path, e.line, e.reason)}
    keys = [cmap.keys_in_order(j) for j in range(NUM_CAT)] if mode == "learn" else None
    stats = reader.stats.to_dict()
    head = len(reader.stats.path) + 1  # the reasons read "PATH:LINE: reason"
    stats["skip_reasons"] = [(int(r[head:].split(":", 1)[0]), r[head:].split(": ", 1)[1])
                             for r in stats["skip_reasons"]]
    return {"stats": stats, "keys": keys, "bytes": b - a}


def _assemble(task: tuple) -> int:
    """Write part file ``part`` into ``out`` at row ``row`` (ids through ``tables`` when
    given: per column, local id -> global id); delete the part. Returns its rows."""
    part, out, row, tables = task
    rows = np.fromfile(part, dtype="<i4").reshape(-1, MIN_FIELDS + NUM_CAT)
    if tables is not None:
        for j, t in enumerate(tables):
            rows[:, MIN_FIELDS + j] = t[rows[:, MIN_FIELDS + j]]
    fd = os.open(out, os.O_WRONLY)
    try:
        data, at = memoryview(np.ascontiguousarray(rows)).cast("B"), row * ROW_BYTES
        while data:
            n = os.pwrite(fd, data, at)
            data, at = data[n:], at + n
    finally:
        os.close(fd)
    os.unlink(part)
    return rows.shape[0]


# ---------------------------------------------------------------- the worker processes

_TASKS = {"parse": _parse, "assemble": _assemble}
_HEADER = struct.Struct("<Q")


def _send(f, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    f.write(_HEADER.pack(len(data)) + data)
    f.flush()


def _recv(f):
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise EOFError
    n = _HEADER.unpack(head)[0]
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return pickle.loads(data)


def _serve() -> None:
    """A worker: (name, task) from stdin, ("ok", result) or ("error", text) to stdout."""
    import traceback

    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the results
    while True:
        try:
            name, task = _recv(inp)
        except EOFError:
            return
        try:
            reply = ("ok", _TASKS[name](task))
        except BaseException:  # sent back: the parent raises it
            reply = ("error", traceback.format_exc())
        _send(out, reply)


class WorkerError(RuntimeError):
    """A worker process failed (its traceback is the message)."""


class Workers:
    """``n`` processes in all: this one and ``n - 1`` workers. ``map(name, tasks)`` yields the
    results in task order. A thread per worker reads its replies as they come and hands it the
    next task at once; meanwhile this process takes tasks itself, between yielding results."""

    def __init__(self, n: int):
        import threading

        import dlrm_tvm

        root = str(Path(dlrm_tvm.__file__).resolve().parents[1])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([root] + [x for x in
                                                      [env.get("PYTHONPATH")] if x])
        self.procs = [subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, env=env)
                      for _ in range(max(0, n - 1))]
        self.cond = threading.Condition()
        self.name = ""
        self.pending: deque = deque()  # (index, task) not started
        self.held: dict[int, int] = {}  # worker -> index of the task it runs
        self.done: dict[int, tuple] = {}  # index -> ("ok", result) or ("error", text)
        for w in range(len(self.procs)):
            threading.Thread(target=self._read, args=(w,), daemon=True).start()

    def _give(self, w: int) -> None:
        """Under ``cond``: worker ``w`` takes the next task, if any."""
        if self.pending:
            i, task = self.pending.popleft()
            try:
                _send(self.procs[w].stdin, (self.name, task))
            except OSError as e:  # it has ended: its reader records that
                self.done[i] = ("error", f"worker {w} cannot take a task ({e})")
                return
            self.held[w] = i

    def _read(self, w: int) -> None:
        """Worker ``w``'s replies: each recorded, and the worker given the next task. It ends
        at the worker's end (after ``close``, or a crash: the task it held fails)."""
        while True:
            try:
                reply, ended = _recv(self.procs[w].stdout), False
            except (EOFError, OSError, ValueError):
                reply = ("error", f"worker {w} ended (exit status {self.procs[w].poll()})")
                ended = True
            with self.cond:
                i = self.held.pop(w, None)
                if i is not None:
                    self.done[i] = reply
                    if not ended:
                        self._give(w)
                    self.cond.notify_all()
            if ended:
                return

    def map(self, name: str, tasks: Iterable) -> Iterator:
        with self.cond:
            self.name = name
            self.pending = deque(enumerate(tasks))
            total = len(self.pending)
            self.done.clear()
            for w in range(len(self.procs)):
                self._give(w)
        for nxt in range(total):
            while True:
                with self.cond:
                    reply = self.done.pop(nxt, None)
                    mine = None
                    if reply is None:
                        if not self.pending:
                            self.cond.wait(timeout=5)
                            continue
                        mine = self.pending.popleft()  # this process takes a task too
                if mine is not None:
                    result = _TASKS[name](mine[1])
                    with self.cond:
                        self.done[mine[0]] = ("ok", result)
                    continue
                break
            status, value = reply
            if status != "ok":
                raise WorkerError(f"a worker failed:\n{value}")
            yield value

    def close(self) -> None:
        for proc in self.procs:
            try:
                proc.stdin.close()
            except OSError:
                pass
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is not None:  # a failure: do not wait for the tasks still running
            for proc in self.procs:
                proc.kill()
        self.close()


# ---------------------------------------------------------------- the parent


def parse_parallel(inputs: Sequence[PathLike], outputs: Sequence[Path], work: Path,
                   workers: int, max_ind_range: int | None, skip_bad_lines: bool,
                   chunk_rows: int, cmap: CategoryMap | None, learn: bool,
                   mapping: PathLike | None,
                   progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """Parse ``inputs`` into binary rows: input k's rows go to ``outputs[k]`` (the same path
    for several inputs: appended in order), each written whole. ``cmap``: the map that
    ``learn`` (it is filled in file order) or that was loaded from ``mapping`` (applied);
    None: no remap. ``work``: a directory for the part files (removed). ``progress``:
    called with (bytes done, rows done). Returns the per-input stats (``RawStats.to_dict``),
    as the serial run's."""
    ranges = plan_ranges(inputs, workers)
    mode = "learn" if learn else ("apply" if cmap is not None else "none")
    work.mkdir(parents=True, exist_ok=True)
    mapped = None if mapping is None else str(Path(mapping).resolve())
    try:
        with Workers(workers) as pool:
            tasks, owner = [], []
            for i, (p, rs) in enumerate(zip(inputs, ranges, strict=True)):
                for a, b in rs:
                    tasks.append((str(p), a, b, max_ind_range, skip_bad_lines,
                                  min(chunk_rows, CHUNK_ROWS), mode,
                                  mapped, str(work / f"part_{len(tasks):06d}.bin")))
                    owner.append(i)
            per_input = [_empty_stats(p) for p in inputs]
            placed, offsets = [], {}
            done_bytes = done_rows = 0
            results = pool.map("parse", tasks)
            for t, i, r in zip(tasks, owner, results, strict=True):
                before = per_input[i]["lines"]  # lines of this input before the range
                if "error" in r:
                    path, line, reason = r["error"]
                    raise DataError(path, before + line, reason)
                s = r["stats"]
                s["skip_reasons"] = [f"{t[0]}:{before + line}: {why}"
                                     for line, why in s["skip_reasons"]]
                _add_stats(per_input[i], s)
                tables = None
                if learn:
                    tables = [np.concatenate([[0], cmap.learn_column(j, keys)]).astype(np.int32)
                              for j, keys in enumerate(r["keys"])]
                out = str(outputs[i])
                at = offsets.get(out, 0)
                offsets[out] = at + s["rows"]
                placed.append((t[8], out, at, tables))
                done_bytes += r["bytes"]
                done_rows += s["rows"]
                if progress is not None:
                    progress(done_bytes, done_rows)
            for out, rows in offsets.items():
                with open(out, "wb") as f:
                    f.truncate(rows * ROW_BYTES)
            for _ in pool.map("assemble", placed):
                pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return per_input


def _empty_stats(path: PathLike) -> dict:
    return {"path": str(path), "rows": 0, "skipped": 0, "padded": 0, "lines": 0,
            "positives": 0, "skip_reasons": []}


def _add_stats(total: dict, part: dict) -> None:
    for k in ("rows", "skipped", "padded", "lines", "positives"):
        total[k] += part[k]
    room = MAX_REASONS - len(total["skip_reasons"])
    total["skip_reasons"].extend(part["skip_reasons"][:max(0, room)])


if __name__ == "__main__":
    _serve()
