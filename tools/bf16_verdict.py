"""The bf16 goals, checked on benchmark JSON: prints one PASS/MISS line per goal.

    dlrm-tvm kernels bench --config mlperf --precision bf16 --json gemms-mlperf.json
    dlrm-tvm kernels bench --config small --precision bf16 --json gemms-small.json
    dlrm-tvm bench --config mlperf --steps 5 --warmup 1 --precisions fp32,bf16 --json bench-mlperf.json
    dlrm-tvm bench --config small --steps 5 --warmup 1 --precisions fp32,bf16 --json bench-small.json
    python tools/bf16_verdict.py gemms-mlperf.json gemms-small.json bench-mlperf.json bench-small.json

The per-GEMM goals hold on any host with avx512_bf16; the ms goals were set for a 2-core Zen 5
(1,075 GFLOP/s vdpbf16ps peak): on another host compare "% floor" and the ratios instead.
"""

from __future__ import annotations

import json
import sys


def _line(ok: bool, what: str, got: str) -> str:
    return f"{'PASS' if ok else 'MISS'}  {what}: {got}"


def gemm_goals(r: dict) -> list[str]:
    out = []
    name = r["config"]
    big = [x for x in r["rows"] if min(x["shape"]) >= 128 and x["frac_peak"] is not None]
    low = [f"{x['kernel']} {100 * x['frac_peak']:.0f}%" for x in big if x["frac_peak"] < 0.8]
    out.append(_line(not low, f"{name}: GEMMs with all dims >= 128 at >= 80% of the bf16 peak",
                     f"{len(big) - len(low)} of {len(big)}" + (f" (below: {', '.join(low)})"
                                                                 if low else "")))
    rated = [x for x in r["rows"] if x.get("x_best_torch") is not None]
    behind = [f"{x['kernel']} {x['x_best_torch']:.2f}x" for x in rated if x["x_best_torch"] < 1]
    if rated:
        out.append(_line(not behind, f"{name}: no GEMM behind torch's matmul",
                         "none behind" if not behind else ", ".join(behind)))
    slow = [f"{p['kernel']} {100 * p['frac_copy']:.0f}%" for p in r.get("packs", [])
            if p["frac_copy"] < 0.7]
    if r.get("packs"):
        out.append(_line(not slow, f"{name}: packs at >= 70% of copy bandwidth",
                         "all" if not slow else ", ".join(slow)))
    return out


def bench_goals(r: dict) -> list[str]:
    ms = {row["name"]: row["ms_per_step"] for row in r["rows"]}
    name = r["config"]
    out = []
    ours, comp, f32 = ms.get("dlrm-tvm bf16"), ms.get("torch.compile bf16"), ms.get(
        "dlrm-tvm fp32")
    goals = {"mlperf": (45.0, 1.4), "small": (70.0, 4.0)}
    if ours is None:
        return [f"{name}: no dlrm-tvm bf16 row (run with --precisions fp32,bf16)"]
    if name in goals:
        limit, ratio = goals[name]
        out.append(_line(ours <= limit, f"{name}: bf16 <= {limit:.0f} ms/step (2-core Zen 5 goal)",
                         f"{ours:.1f} ms; bf16 floor here {r.get('floor_bf16_ms', 0):.1f} ms"))
        if comp:
            out.append(_line(comp / ours >= ratio, f"{name}: >= {ratio}x torch.compile bf16",
                             f"{comp / ours:.2f}x ({comp:.1f} vs {ours:.1f} ms)"))
    if name == "mlperf" and f32:
        out.append(_line(f32 / ours >= 1.6, "mlperf: bf16 >= 1.6x our fp32",
                         f"{f32 / ours:.2f}x ({f32:.1f} vs {ours:.1f} ms)"))
    fn = r.get("functions_ms", {})
    if name == "small" and "bf16" in fn and "fp32" in fn:
        u16, u32 = fn["bf16"]["embedding_update"], fn["fp32"]["embedding_update"]
        out.append(_line(u16 <= u32, "small: bf16 embedding update <= fp32's",
                         f"{u16:.1f} vs {u32:.1f} ms"))
    return out


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    lines = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        lines += gemm_goals(r) if "packs" in r or "shape" in (r.get("rows") or [{}])[0] \
            else bench_goals(r)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
