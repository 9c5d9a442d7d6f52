"""A/B of the one-rank training step: this tree's Trainer against the Trainer of a git revision,
in one process, on the same compiled module, steps interleaved (so a noisy machine slows both
alike). Prints the median ms/step of each and their ratio.

    python tools/ab_step.py --config small --precision bf16 --rev 320288c --steps 20

The old trainer is ``runtime/trainer.py`` at REV, loaded as a module of its own; it must still
import against this tree (it uses dlrm_tvm.graphs, dlrm_tvm.runtime.memory/params).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def old_trainer(rev: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:runtime/trainer.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_trainer.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("old_trainer", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.Trainer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="small")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--rev", required=True, help="git revision of the old runtime/trainer.py")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))  # as the CLI does

    from dlrm_tvm.config import apply_overrides, load_config
    from dlrm_tvm.data import SyntheticData
    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.runtime.trainer import Trainer
    from dlrm_tvm.targets import resolve_target

    cfg = apply_overrides(load_config(args.config), precision=args.precision)
    t0 = time.perf_counter()
    vm = load_vm(compile_dlrm(cfg, resolve_target("host")).executable)
    print(f"compiled {cfg.name} {args.precision} in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    Old = old_trainer(args.rev)
    new, old = Trainer(cfg, vm), Old(cfg, vm)
    data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, 0)
    batches = [data.next_batch() for _ in range(4)]
    times = {"new": [], "old": []}
    for i in range(args.steps + 2):
        for name, tr in (("new", new), ("old", old)) if i % 2 else (("old", old), ("new", new)):
            b = batches[i % len(batches)]
            t = time.perf_counter()
            tr.step(b)
            if i >= 2:
                times[name].append(time.perf_counter() - t)
    med = {k: 1e3 * float(np.median(v)) for k, v in times.items()}
    res = {"config": cfg.name, "precision": args.precision, "rev": args.rev,
           "steps": args.steps, "ms_new": med["new"], "ms_old": med["old"],
           "new_over_old": med["new"] / med["old"]}
    print(f"{cfg.name} {args.precision}: this tree {med['new']:.2f} ms/step, {args.rev} "
          f"{med['old']:.2f} ms/step (median of {args.steps}, interleaved): ratio "
          f"{res['new_over_old']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
