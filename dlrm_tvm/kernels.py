"""``dlrm-tvm kernels``: see which rule schedules each kernel, and race candidate rules.

``list``: for every kernel of a config's training step on a target, the rules that accept it
and the one the ordered list picks. ``bench``: one op at one shape, every candidate rule (or
those named) checked against the NumPy oracle on random data with poisoned outputs, timed, and
compared with torch's matmul (fp32 and bf16) in the same process, as GFLOP/s and as a fraction
of the machine's measured fp32 peak.

To try a rule of your own: write a ``Rule`` subclass in a file under ``schedules/``, add it to
``ALL_RULES`` in ``schedules/__init__.py``, and select it with ``--rule NAME`` here, in
``dlrm-tvm compile/train --rule NAME``, or leave it in the target's list.
"""

from __future__ import annotations

import os
import time

import numpy as np

from dlrm_tvm.config import Config


def list_kernels(cfg: Config, target_name: str = "host") -> dict:
    from tvm import tirx

    from dlrm_tvm.graphs.dlrm import DLRMGraph
    from dlrm_tvm.schedules import rules_for
    from dlrm_tvm.schedules.base import op_of
    from dlrm_tvm.targets import resolve_target

    ti = resolve_target(target_name)
    target = ti.tvm_target()
    rules = rules_for(target)
    mod = DLRMGraph(cfg.model, cfg.train.batch_size).build()
    rows = []
    for gv, func in sorted(mod.functions_items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc):
            continue
        ok = []
        for r in rules:
            if not r.matches_op(func):
                continue
            try:
                if r.apply(func, target, False) is not None:
                    ok.append(r.name)
            except Exception as e:  # noqa: BLE001 - a rule that raises is reported, not fatal
                ok.append(f"{r.name} (raised {type(e).__name__})")
        rows.append({"kernel": gv.name_hint, "op": op_of(func), "applicable": ok,
                     "chosen": ok[0] if ok else None})
    return {"config": cfg.name, "target": ti.to_dict(),
            "rule_order": [r.name for r in rules], "kernels": rows}


def format_list(r: dict) -> str:
    out = [f"config {r['config']}  target {r['target']['name']} (mcpu {r['target']['mcpu']}, "
           f"features {','.join(r['target']['features']) or '-'})",
           f"rule order: {' > '.join(r['rule_order'])}", ""]
    w = max(len(k["kernel"]) for k in r["kernels"]) + 2
    out.append(f"{'kernel':<{w}}{'op':<26}{'chosen':<34}other applicable rules")
    for k in r["kernels"]:
        others = ", ".join(x for x in k["applicable"][1:])
        out.append(f"{k['kernel']:<{w}}{k['op'] or '?':<26}{k['chosen'] or '-':<34}{others}")
    return "\n".join(out)


def check_and_time(sch, target, ins, want: np.ndarray, reps: int) -> tuple[float, bool, float]:
    """Compile ``sch``, run it once on ``ins`` with a NaN-poisoned output, and time it:
    (relative Frobenius error vs ``want``, any output left unwritten, median seconds)."""
    import tvm

    from dlrm_tvm.pipeline import compile_primfunc

    lib = compile_primfunc(sch, target)
    out = tvm.runtime.tensor(np.full(want.shape, np.nan, np.float32))
    lib["main"](*ins, out)
    got = out.numpy()
    err = float(np.linalg.norm(got - want) / max(1e-30, np.linalg.norm(want)))
    return err, bool(np.isnan(got).any()), _time(lambda: lib["main"](*ins, out), reps)


def _time(f, reps: int, budget_s: float = 3.0) -> float:
    """Median of up to ``reps`` runs, fewer (at least 2) once ``budget_s`` is spent."""
    f()
    ts: list[float] = []
    while len(ts) < reps and (len(ts) < 2 or sum(ts) < budget_s):
        t = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def bench_gemm(shape: tuple[int, int, int], a_layout: str = "mk", b_layout: str = "kn",
               epilogue: str = "none", rules: list[str] | None = None,
               target_name: str = "host", reps: int = 10, torch_baseline: bool = True,
               dtype: str = "float32", peaks: tuple[float, float | None] | None = None) -> dict:
    import tvm

    from dlrm_tvm.graphs import ops
    from dlrm_tvm.graphs import reference as ref
    from dlrm_tvm.peaks import bf16_peak_gflops, fp32_peak_gflops
    from dlrm_tvm.schedules import ALL_RULES
    from dlrm_tvm.targets import runnable_target

    m, k, n = shape
    ti = runnable_target(target_name)
    target = ti.tvm_target()
    func = ops.gemm(m, k, n, a_layout, epilogue, b_layout, in_dtype=dtype)
    # default: the rules written for this op (the generic fallback only when named: it is slow)
    names = rules or [r for r, rule in ALL_RULES.items() if rule.ops and rule.matches_op(func)]
    rng = np.random.default_rng(0)
    if dtype == "bfloat16":
        import ml_dtypes

        np_dt = ml_dtypes.bfloat16
    else:
        np_dt = np.float32
    a = rng.standard_normal((m, k) if a_layout == "mk" else (k, m)).astype(np_dt)
    b = rng.standard_normal((k, n) if b_layout == "kn" else (n, k)).astype(np_dt)
    extra = None
    if epilogue in ("bias", "bias_relu"):
        extra = rng.standard_normal(n).astype(np_dt)
    elif epilogue == "relu_mask":
        extra = rng.standard_normal((m, n)).astype(np_dt)
    want = ref.gemm(a, b, a_layout, epilogue, extra, b_layout)
    dev = tvm.cpu()
    ins = [tvm.runtime.tensor(x, dev) for x in (a, b, extra) if x is not None]
    flop = 2.0 * m * n * k
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    if peaks is None:
        peaks = (fp32_peak_gflops(target, threads),
                 bf16_peak_gflops(target, threads) if dtype == "bfloat16" else None)
    peak, bf16_peak = peaks
    # fp32 sums of exact products: the bf16 case is only rounded by its inputs (already in the
    # reference), so the same 1e-5 bound applies to the sum order
    tol = 1e-5
    rows = []
    for name in names:
        if name not in ALL_RULES:
            raise ValueError(f"unknown rule {name!r}; known: {sorted(ALL_RULES)}")
        rule = ALL_RULES[name]
        sch = rule.apply(func, target, False) if rule.matches_op(func) else None
        if sch is None:
            rows.append({"name": name, "status": "does not apply"})
            continue
        err, unwritten, s = check_and_time(sch, target, ins, want, reps)
        ok = not unwritten and err < tol
        rows.append({"name": name, "status": "ok" if ok else "WRONG", "rel_err": err,
                     "ms": s * 1e3, "gflops": flop / s / 1e9, "frac_fp32_peak": flop / s / 1e9
                     / peak})
    if torch_baseline:
        try:
            import torch
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(threads)
            time.sleep(0.3)
            for dt, label in ((torch.float32, "torch matmul fp32"),
                              (torch.bfloat16, "torch matmul bf16")):
                ta = torch.from_numpy(np.asarray(a, np.float32)).to(dt)
                tb = torch.from_numpy(np.asarray(b, np.float32)).to(dt)
                ta = ta if a_layout == "mk" else ta.T
                tb = tb if b_layout == "kn" else tb.T
                s = _time(lambda ta=ta, tb=tb: ta @ tb, reps)
                rows.append({"name": label, "status": "baseline", "ms": s * 1e3,
                             "gflops": flop / s / 1e9, "frac_fp32_peak": flop / s / 1e9 / peak})
    return {"op": "gemm", "shape": [m, k, n], "a_layout": a_layout, "b_layout": b_layout,
            "epilogue": epilogue, "dtype": dtype, "target": ti.to_dict(), "threads": threads,
            "fp32_peak_gflops": peak, "bf16_peak_gflops": bf16_peak,
            "rows": [dict(r, frac_bf16_peak=r["gflops"] / bf16_peak)
                     if bf16_peak and "gflops" in r else r for r in rows]}


def format_bench(r: dict) -> str:
    m, k, n = r["shape"]
    bf = r.get("bf16_peak_gflops")
    out = [f"gemm M,K,N={m},{k},{n} {r.get('dtype', 'float32')}  A {r['a_layout']}  B "
           f"{r['b_layout']}  epilogue {r['epilogue']}  target {r['target']['name']}  threads "
           f"{r['threads']}  fp32 peak {r['fp32_peak_gflops']:.0f} GFLOP/s"
           + (f", bf16 peak {bf:.0f} GFLOP/s" if bf else "") + " (measured)"]
    if r.get("dtype") == "bfloat16" and not bf:
        out.append("this CPU has no avx512_bf16: bf16 candidates run on fp32 compute here")
    out.append("")
    out.append(f"{'candidate':<28}{'status':<16}{'ms':>9}{'GFLOP/s':>10}{'% peak':>8}"
               f"{'rel err':>10}")
    for row in r["rows"]:
        if "ms" not in row:
            out.append(f"{row['name']:<28}{row['status']:<16}")
            continue
        err = f"{row['rel_err']:.1e}" if "rel_err" in row else "-"
        out.append(f"{row['name']:<28}{row['status']:<16}{row['ms']:>9.3f}{row['gflops']:>10.1f}"
                   f"{100 * row['frac_fp32_peak']:>8.0f}{err:>10}")
    return "\n".join(out)


def sweep_gemms(cfg: Config, target_name: str = "host", reps: int = 5,
                torch_baseline: bool = True) -> dict:
    """Every distinct GEMM of ``cfg``'s training step (forward, input and weight gradients, at
    the config's precision), each with the rule the target's list picks, against torch."""
    from tvm import tirx

    from dlrm_tvm.graphs.dlrm import DLRMGraph
    from dlrm_tvm.peaks import bf16_peak_gflops, fp32_peak_gflops
    from dlrm_tvm.schedules import rules_for, schedule_func
    from dlrm_tvm.schedules.base import attr, op_of
    from dlrm_tvm.targets import runnable_target

    target = runnable_target(target_name).tvm_target()
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    bf16 = cfg.train.precision == "bf16"
    peaks = (fp32_peak_gflops(target, threads), bf16_peak_gflops(target, threads) if bf16
             else None)
    mod = DLRMGraph(cfg.model, cfg.train.batch_size, precision=cfg.train.precision).build()
    rules = rules_for(target)
    rows = []
    for gv, func in sorted(mod.functions_items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc) or op_of(func) != "gemm":
            continue
        _, rule = schedule_func(func, target, rules)
        shape = (attr(func, "m"), attr(func, "k"), attr(func, "n"))
        r = bench_gemm(shape, attr(func, "a_layout"), attr(func, "b_layout", "kn"),
                       attr(func, "epilogue"), [rule], target_name, reps, torch_baseline,
                       attr(func, "in_dtype", "float32"), peaks)
        by = {row["name"]: row for row in r["rows"]}
        ours = by[rule]
        base = [by[n]["gflops"] for n in ("torch matmul fp32", "torch matmul bf16") if n in by]
        rows.append({"kernel": gv.name_hint, "shape": list(shape), "rule": rule,
                     "status": ours["status"], "gflops": ours.get("gflops"),
                     "frac_peak": (ours["gflops"] / (peaks[1] or peaks[0]))
                     if "gflops" in ours else None,
                     "torch_fp32_gflops": by.get("torch matmul fp32", {}).get("gflops"),
                     "torch_bf16_gflops": by.get("torch matmul bf16", {}).get("gflops"),
                     "x_best_torch": (ours["gflops"] / max(base)) if base and "gflops" in ours
                     else None})
    return {"config": cfg.name, "precision": cfg.train.precision, "target": target_name,
            "threads": threads, "fp32_peak_gflops": peaks[0], "bf16_peak_gflops": peaks[1],
            "rows": rows}


def format_sweep(r: dict) -> str:
    peak = (f"bf16 peak {r['bf16_peak_gflops']:.0f}" if r["bf16_peak_gflops"]
            else f"fp32 peak {r['fp32_peak_gflops']:.0f}")
    out = [f"every GEMM of {r['config']} ({r['precision']}) on {r['target']}, {r['threads']} "
           f"threads; % of the measured {peak} GFLOP/s", ""]
    out.append(f"{'kernel':<40}{'rule':<28}{'GFLOP/s':>9}{'% peak':>8}{'torch32':>9}"
               f"{'torch16':>9}{'x torch':>9}")

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    for row in r["rows"]:
        pct = f(100 * row["frac_peak"], ".0f") if row["frac_peak"] is not None else "-"
        out.append(f"{row['kernel']:<40}{row['rule']:<28}{f(row['gflops'], '.1f'):>9}"
                   f"{pct:>8}{f(row['torch_fp32_gflops'], '.1f'):>9}"
                   f"{f(row['torch_bf16_gflops'], '.1f'):>9}{f(row['x_best_torch'], '.2f'):>9}")
    return "\n".join(out)
