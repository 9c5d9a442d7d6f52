#!/usr/bin/env python
"""Kernel lab: one GEMM, several schedules, checked against NumPy and timed against torch.

    python tools/kernel_lab.py --shape 2048,1024,1024 --layout mk
    python tools/kernel_lab.py --shape 1024,2048,1024 --layout km --variants v1,v2

Each variant is a function (func, target) -> Schedule, numbered as it was tried; the best one
is promoted into schedules/gemm.py. Prints ms, GFLOP/s and the ratio to torch fp32 (median of
--reps). Outputs are poisoned (NaN) before the run and checked fully written.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))
os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")

import numpy as np  # noqa: E402
import tvm  # noqa: E402
from dlrm_tvm.graphs import ops  # noqa: E402
from dlrm_tvm.graphs import reference as ref  # noqa: E402
from dlrm_tvm.schedules import ALL_RULES  # noqa: E402
from dlrm_tvm.schedules.gemm import gemm_packed_schedule  # noqa: E402

from dlrm_tvm.kernels import check_and_time  # noqa: E402
from dlrm_tvm.targets import resolve_target  # noqa: E402


def v1_tiled(func, target):
    """v1: register tile, no packing (the first rule)."""
    return ALL_RULES["gemm_tiled_fp32"].apply(func, target)


def v2_packed(func, target):
    """v2: pack B (and A when read as [K, M]) into contiguous panels; column panel outer."""
    return gemm_packed_schedule(func, target, pack_a="auto", panel_outer=True)


def v5_packed_default(func, target):
    """v5: the promoted rule: v2 for the [K, M] layout, v4 for [M, K]."""
    return gemm_packed_schedule(func, target)


def v3_packed_a(func, target):
    """v3: pack both A and B always."""
    return gemm_packed_schedule(func, target, pack_a="always", panel_outer=True)


def v4_packed_row_outer(func, target):
    """v4: like v2, row tile outer."""
    return gemm_packed_schedule(func, target, pack_a="auto", panel_outer=False)


VARIANTS = {"v1": v1_tiled, "v2": v2_packed, "v3": v3_packed_a, "v4": v4_packed_row_outer,
            "v5": v5_packed_default}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="2048,1024,1024", help="M,K,N")
    p.add_argument("--layout", default="mk", choices=("mk", "km"))
    p.add_argument("--b-layout", default="kn", choices=("kn", "nk"))
    p.add_argument("--epilogue", default="bias_relu", choices=ops.GEMM_EPILOGUES)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--target", default="host")
    p.add_argument("--reps", type=int, default=10)
    a = p.parse_args()
    m, k, n = (int(x) for x in a.shape.split(","))
    target = resolve_target(a.target).tvm_target()
    rng = np.random.default_rng(0)
    A = rng.standard_normal((m, k) if a.layout == "mk" else (k, m), dtype=np.float32)
    B = rng.standard_normal((k, n) if a.b_layout == "kn" else (n, k), dtype=np.float32)
    extra = None
    if a.epilogue in ("bias", "bias_relu"):
        extra = rng.standard_normal(n, dtype=np.float32)
    elif a.epilogue == "relu_mask":
        extra = rng.standard_normal((m, n), dtype=np.float32)
    want = ref.gemm(A, B, a.layout, a.epilogue, extra, a.b_layout)
    flop = 2 * m * n * k
    func = ops.gemm(m, k, n, a.layout, a.epilogue, a.b_layout)
    rows = []
    dev = tvm.cpu()
    ins = [tvm.runtime.tensor(x, dev) for x in (A, B, extra) if x is not None]
    for name in a.variants.split(","):
        sch = VARIANTS[name](func, target)
        if sch is None:
            print(f"{name}: rule declined")
            continue
        err, unwritten, secs = check_and_time(sch, target, ins, want, a.reps)
        ms = secs * 1e3
        rows.append((name, ms, flop / ms / 1e6, err, unwritten))
    try:
        import torch

        torch.set_num_threads(int(os.environ["TVM_NUM_THREADS"]))
        tA, tB = torch.from_numpy(A), torch.from_numpy(B)
        tB = tB if a.b_layout == "kn" else tB.T
        f = (lambda: tA @ tB) if a.layout == "mk" else (lambda: tA.T @ tB)
        for _ in range(3):
            f()
        ts = []
        for _ in range(a.reps):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        tms = float(np.median(ts)) * 1e3
    except ImportError:
        tms = None
    print(f"gemm {a.layout} M,K,N={m},{k},{n} epilogue {a.epilogue}  "
          f"torch fp32 matmul: {tms:.2f} ms ({flop / tms / 1e6:.1f} GFLOP/s)" if tms else "")
    print(f"{'variant':<8}{'ms':>9}{'GFLOP/s':>10}{'x torch':>9}{'rel err':>10}")
    for name, ms, gf, err, nan in rows:
        ratio = f"{tms / ms:.2f}" if tms else "-"
        print(f"{name:<8}{ms:>9.2f}{gf:>10.1f}{ratio:>9}{err:>10.1e}{'  NaN!' if nan else ''}")


if __name__ == "__main__":
    main()
