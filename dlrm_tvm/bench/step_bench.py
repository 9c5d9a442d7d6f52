"""``dlrm-tvm bench``: our compiled step against PyTorch, side by side in one process.

Contenders start from the same weights and see the same pre-generated batches (data generation
is not timed). Each runs ``warmup`` untimed steps, then ``steps`` timed ones; we report medians.
TVM and torch run in separate blocks with a pause between, because TVM's idle workers spin after
a parallel call and would slow torch if interleaved step by step.

Work counted per step: MLP FLOPs (forward, input gradient except the first bottom layer's,
weight gradient), interaction FLOPs, and embedding bytes (rows read in the forward, read and
written in the update). The machine's ceilings are measured in the same run (``peaks.py``: an
FMA loop for fp32 FLOP/s, a random row gather for embedding bytes). The step's floor is
FLOPs / peak FLOP/s + embedding bytes / gather bandwidth; "% floor" = floor / measured time.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import re
import time
from collections import defaultdict

import numpy as np

from dlrm_tvm.bench.timing import median_ms, time_each
from dlrm_tvm.config import Config

log = logging.getLogger("dlrm_tvm")


def step_work(cfg: Config) -> dict[str, float]:
    m, B = cfg.model, cfg.train.batch_size
    layers = m.bot_layers + m.top_layers
    fwd = sum(2 * B * k * n for k, n in layers)
    dw = fwd
    dx = fwd - 2 * B * m.bot_layers[0][0] * m.bot_layers[0][1]
    F, D = m.num_features, m.embedding_dim
    inter = (2 * B * m.num_pairs * D + 2 * B * F * F * D) if m.interaction == "dot" else 0
    # dcn: per cross layer 2 forward GEMMs (B x N x r each way) and 4 backward (dv, du_l, du,
    # x_l's gradient): 12 B N r (docs/dcn.md)
    inter += 12 * B * m.interaction_width * m.dcn_low_rank_dim * m.num_cross_layers
    # each table's mean bag size (multi-hot: its size; else the bag size, at most its rows)
    lookups = B * sum(cfg.data.mean_bag_sizes(m.table_rows))
    # fp32: the forward reads a row, the update reads and writes it (4 bytes an element each);
    # bf16 Split-SGD rows: the forward reads the 2-byte high half, the update both halves;
    # adagrad: the update also reads and writes the row's fp32 state
    state = 4 + 4 if cfg.train.optimizer == "adagrad" else 0
    return {"mlp_flop": fwd + dw + dx, "interaction_flop": inter,
            "embedding_bytes": lookups * D * (4 * 3 + state),
            "embedding_bytes_bf16": lookups * D * (2 + 4 + 4 + state)}


def _time_kernels(vm, fn_calls) -> dict[str, float]:
    """Per-kernel median ms inside the given VM calls, via the VM's instrument hook."""
    acc: dict[str, list[float]] = defaultdict(list)
    start: dict[str, float] = {}

    def instrument(func, name, before_run, ret_value, *args):
        if before_run:
            start[name] = time.perf_counter()
        else:
            acc[name].append(time.perf_counter() - start.pop(name, time.perf_counter()))
        return 0

    vm.set_instrument(instrument)
    try:
        for call in fn_calls:
            call()
    finally:
        vm.set_instrument(lambda *a: 0)
    return {k: float(np.sum(v) / max(1, len(fn_calls))) * 1e3 for k, v in acc.items()}, \
        {k: len(v) / max(1, len(fn_calls)) for k, v in acc.items()}


def kernel_gflop(name: str) -> float | None:
    """GFLOP of one call of a GEMM kernel, from its name (``gemm[_vnni]_<kind>_MxKxN_...``);
    None for other kernels."""
    m = re.match(r"gemm(?:_vnni)?_[a-z]+_(\d+)x(\d+)x(\d+)", name)
    return 2.0 * int(m[1]) * int(m[2]) * int(m[3]) / 1e9 if m else None


def run_bench(cfg: Config, steps: int = 20, warmup: int = 3, target: str = "host",
              torch_baseline: bool = True, precisions: tuple[str, ...] = ("fp32",),
              torch_compile: bool = True, tuning: dict | None = None) -> dict:
    from dlrm_tvm.bench.peaks import measure_peaks
    from dlrm_tvm.data import SyntheticData
    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.runtime.amx import needs_amx
    from dlrm_tvm.runtime.params import init_mlp, init_tables
    from dlrm_tvm.runtime.trainer import Trainer
    from dlrm_tvm.targets import runnable_target

    cfg.check_fits()
    ti = runnable_target(target, "benchmark")
    tables = init_tables(cfg.model, cfg.train.seed)
    mlp = init_mlp(cfg.model, cfg.train.seed)
    data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, cfg.train.seed)
    batches = [data.next_batch() for _ in range(warmup + steps)]
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))

    # ceilings first: after torch has run, its OpenMP workers spin and halve what we measure
    log.info("bench: measuring this CPU's peaks")
    peaks = measure_peaks(ti.tvm_target(), threads, cfg.model.embedding_dim)
    rows = []
    functions: dict[str, dict[str, float]] = {}
    kernels: dict[str, dict[str, float]] = {}
    kernel_calls: dict[str, dict[str, float]] = {}
    compile_s: dict[str, float] = {}
    for prec in precisions:
        pcfg = cfg.replace(train=dataclasses.replace(cfg.train, precision=prec))
        log.info("bench: dlrm-tvm %s: compiling, then %d+%d steps", prec, warmup, steps)
        t0 = time.perf_counter()
        vm = load_vm(compile_dlrm(pcfg, ti, tuning=tuning if prec == "bf16" else None)
                     .executable, needs_amx(ti.tvm_target()))
        compile_s[prec] = time.perf_counter() - t0
        ours = Trainer(pcfg, vm, tables=tables, mlp=mlp)
        ts = time_each(ours.step, batches, skip=warmup)
        rows.append({"name": f"dlrm-tvm {prec}", "ms_per_step": median_ms(ts)})
        log.info("bench: dlrm-tvm %s: %.2f ms/step (compiled in %.1f s)", prec,
                 rows[-1]["ms_per_step"], compile_s[prec])
        # per function and per kernel (one extra pass over a few batches)
        few = batches[warmup: warmup + min(5, steps)]
        fn_ms: dict[str, list[float]] = defaultdict(list)
        for b in few:
            ours.step(b, timings=fn_ms)
        functions[prec] = {k: median_ms(v) for k, v in fn_ms.items()}
        k_ms, k_calls = _time_kernels(vm, [ours.dense_call(b) for b in few])
        kernels[prec] = dict(sorted(k_ms.items(), key=lambda kv: -kv[1]))
        kernel_calls[prec] = k_calls
        del ours, vm
    tvm_ms = rows[0]["ms_per_step"]

    if torch_baseline:
        import torch

        from dlrm_tvm.bench.torch_ref import TorchTrainer, torch_inputs

        torch.set_num_threads(threads)
        time.sleep(0.5)  # let TVM's workers stop spinning
        state = {"tables": tables, **mlp}
        tin = [torch_inputs(b, cfg.model.num_tables) for b in batches]
        contenders = [("torch eager fp32", False, False), ("torch bf16 autocast", True, False)]
        if torch_compile:
            contenders.append(("torch.compile bf16", True, True))
        for name, bf16, comp in contenders:
            log.info("bench: %s: %s%d+%d steps", name, "compiling, then " if comp else "",
                     warmup, steps)
            tt = TorchTrainer(cfg, state, autocast_bf16=bf16, compiled=comp)
            if comp:  # compile outside the timing: two steps (forward + backward graphs)
                t0 = time.perf_counter()
                for b, x in zip(batches[:2], tin[:2], strict=True):
                    tt.step(b, x)
                compile_s[name] = time.perf_counter() - t0
            ts = time_each(lambda bx, tt=tt: tt.step(*bx), zip(batches, tin, strict=True),
                           skip=warmup)
            rows.append({"name": name, "ms_per_step": median_ms(ts)})
            log.info("bench: %s: %.2f ms/step", name, rows[-1]["ms_per_step"])
            del tt
    work = step_work(cfg)
    flop = work["mlp_flop"] + work["interaction_flop"]
    def floor(peak_gflops: float, emb_bytes: float) -> float:
        return 1e3 * (flop / (peak_gflops * 1e9) + emb_bytes / (peaks["gather_gbs"] * 1e9))

    floor_ms = floor(peaks["fp32_gflops"], work["embedding_bytes"])
    # a bf16 contender's ceiling is the bf16 FLOP rate where the CPU has one (else fp32's):
    # the AMX tile rate where the CPU has AMX (torch's oneDNN uses it too)
    bf16_peak = (peaks.get("amx_bf16_gflops") or peaks.get("bf16_gflops")
                 or peaks["fp32_gflops"])
    floor_bf16_ms = floor(bf16_peak, work["embedding_bytes_bf16"])
    for r in rows:
        bf = "bf16" in r["name"]
        r["precision"] = "bf16" if bf else "fp32"
        r["ratio_vs_tvm"] = r["ms_per_step"] / tvm_ms
        r["gflops"] = flop / (r["ms_per_step"] * 1e-3) / 1e9
        r["frac_fp32_peak"] = r["gflops"] / peaks["fp32_gflops"]
        r["frac_peak"] = r["gflops"] / (bf16_peak if bf else peaks["fp32_gflops"])
        r["frac_floor"] = (floor_bf16_ms if bf else floor_ms) / r["ms_per_step"]
        r["samples_per_s"] = cfg.train.batch_size / (r["ms_per_step"] * 1e-3)
    result = {
        "config": cfg.name, "batch_size": cfg.train.batch_size, "steps": steps,
        "precisions": list(precisions), "tuning": None if tuning is None else
        {k: tuning.get(k) for k in ("config", "target_signature", "created")},
        "target": ti.to_dict(), "threads": threads, "machine": platform.processor() or
        platform.machine(), "cpu_count": os.cpu_count(), "compile_s": compile_s,
        "work_per_step": work, "peaks": peaks, "floor_ms": floor_ms,
        "floor_bf16_ms": floor_bf16_ms, "rows": rows,
        "functions_ms": functions, "kernels_ms": kernels, "kernel_calls": kernel_calls,
    }
    result["speedups"] = _ratios(result)
    return result


def _ratios(r: dict) -> list[str]:
    """The headline ratios (the bf16 goals) among the rows present."""
    ms = {row["name"]: row["ms_per_step"] for row in r["rows"]}
    out = []
    for ours, other in (("dlrm-tvm bf16", "torch.compile bf16"),
                        ("dlrm-tvm bf16", "torch bf16 autocast"),
                        ("dlrm-tvm bf16", "dlrm-tvm fp32"),
                        ("dlrm-tvm fp32", "torch eager fp32")):
        if ours in ms and other in ms:
            out.append(f"{ours} is {ms[other] / ms[ours]:.2f}x {other}")
    return out


def format_table(r: dict) -> str:
    out = [f"config {r['config']}  batch {r['batch_size']}  target {r['target']['name']} "
           f"(mcpu {r['target']['mcpu']})  threads {r['threads']}  steps {r['steps']} (median)"]
    pk, w = r["peaks"], r["work_per_step"]
    out.append(f"work/step: MLP {w['mlp_flop'] / 1e9:.2f} GFLOP, interaction "
               f"{w['interaction_flop'] / 1e9:.3f} GFLOP, embedding "
               f"{w['embedding_bytes'] / 1e6:.1f} MB")
    if pk.get("bf16_gflops"):
        out.append(f"measured bf16 peak: {pk['bf16_gflops']:.0f} GFLOP/s (vdpbf16ps loop)")
    if pk.get("amx_bf16_gflops"):
        out.append(f"measured AMX bf16 peak: {pk['amx_bf16_gflops']:.0f} GFLOP/s (tdpbf16ps "
                   "tile loop; the bf16 floor uses it)")
    out.append(f"measured peaks: fp32 {pk['fp32_gflops']:.0f} GFLOP/s (FMA loop), memory "
               f"{pk['memory_gbs']:.1f} GB/s (copy), random gather {pk['gather_gbs']:.1f} GB/s;"
               f"  step floor {r['floor_ms']:.2f} ms fp32, {r['floor_bf16_ms']:.2f} ms bf16")
    out.append("% peak, % floor: against the contender's own precision's peak (bf16 rows: the "
               "vdpbf16ps rate where the CPU has one)")
    ratios = _ratios(r)
    if ratios:
        out.append("; ".join(ratios))
    out.append("")
    out.append(f"{'contender':<22}{'ms/step':>10}{'x dlrm-tvm':>12}{'samples/s':>12}"
               f"{'GFLOP/s':>10}{'% peak':>8}{'% floor':>9}")
    for row in r["rows"]:
        out.append(f"{row['name']:<22}{row['ms_per_step']:>10.2f}{row['ratio_vs_tvm']:>12.2f}"
                   f"{row['samples_per_s']:>12.0f}{row['gflops']:>10.1f}"
                   f"{100 * row['frac_peak']:>8.0f}{100 * row['frac_floor']:>9.0f}")
    for prec in r["precisions"]:
        out.append("")
        out.append(f"dlrm-tvm {prec} per function (ms, median):")
        for k, v in r["functions_ms"][prec].items():
            out.append(f"  {k:<28}{v:>9.2f}")
        out.append(f"dlrm-tvm {prec} dense_forward_backward per kernel (ms per step over all "
                   "its calls, top 12; GEMMs with GFLOP/s):")
        calls = r.get("kernel_calls", {}).get(prec, {})
        for k, v in list(r["kernels_ms"][prec].items())[:12]:
            n = calls.get(k)
            gf = kernel_gflop(k)
            rate = f"{gf * n / (v / 1e3):>9.0f} GFLOP/s" if gf and n and v > 0 else ""
            out.append(f"  {k:<44}{v:>9.3f}" + (f"  x{n:g}" if n else "") + rate)
    return "\n".join(out)
