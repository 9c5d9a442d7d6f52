"""``dlrm-tvm kernels``: see which rule schedules each kernel, and race candidate rules.

``list``: for every kernel of a config's training step on a target, built and scheduled as
``dlrm-tvm compile`` does (``pipeline.build_step`` and ``schedules.schedule_module``, with the
same preferred rules and tuning record), the rule chosen with its parameters, and the other rules
of the ordered list that would take it. ``bench``: one op at one shape, every candidate rule (or
those named) checked against the NumPy oracle on random data with poisoned outputs, timed, and
compared with torch's matmul (fp32 and bf16) in the same process, as GFLOP/s and as a fraction
of the machine's measured fp32 peak; with ``--config``, every GEMM and pack of the config's step
(``sweep_gemms``). ``tune``: dlrm_tvm/tuning.py.

To try a rule of your own: write a ``Rule`` subclass in a file under ``schedules/``, add one
line to ``RULES`` in ``schedules/__init__.py``, and select it with ``--rule NAME`` here, in
``dlrm-tvm compile/train --rule NAME``, or leave it in the target's list.
"""

from __future__ import annotations

import os
import time

import numpy as np

from dlrm_tvm.bench.timing import time_call
from dlrm_tvm.config import Config
from dlrm_tvm.tuning import read_tuning as read_tuning  # re-exported: its old home
from dlrm_tvm.tuning import tune_gemms as tune_gemms  # re-exported: its old home

TIME_BUDGET_S = 3.0  # seconds of timed runs per candidate before fewer than --reps are taken


def list_kernels(cfg: Config, target_name: str = "host", prefer: tuple[str, ...] = (),
                 tuning: dict | None = None) -> dict:
    """Per kernel of ``cfg``'s step for ``target_name`` (any target, on any host): the rule
    compile chooses (and its parameters, e.g. a tuned register tile), every rule of the list
    that would take it, in order (the chosen one first), and any rule that raised on it."""
    from tvm import tirx

    from dlrm_tvm.pipeline import build_step
    from dlrm_tvm.schedules import rules_for, schedule_module
    from dlrm_tvm.targets import resolve_target

    ti = resolve_target(target_name)
    target = ti.tvm_target()
    mod = build_step(cfg, target)  # compile's graph: precision, optimizer, batch, layouts
    _, chosen = schedule_module(mod, target, prefer, tuning)  # compile's selection
    rules = rules_for(target, prefer, tuning)
    rows = []
    for gv, func in sorted(mod.functions_items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc):
            continue
        ok, raised = [], []
        for r in rules:
            if not r.matches_op(func):
                continue
            try:
                if r.apply(func, target, False) is not None:
                    ok.append(r.name)
            except Exception as e:  # noqa: BLE001 - a rule that raises is reported, not fatal
                raised.append(f"{r.name} ({type(e).__name__})")
        c = chosen[gv.name_hint]
        rows.append({"kernel": gv.name_hint, "op": c["op"], "chosen": c["rule"],
                     "params": c.get("params", {}), "applicable": ok, "raised": raised})
    return {"config": cfg.name, "precision": cfg.train.precision,
            "optimizer": cfg.train.optimizer, "batch_size": cfg.train.batch_size,
            "target": ti.to_dict(), "prefer": list(prefer), "tuned": tuning is not None,
            "rule_order": [r.name for r in rules], "kernels": rows}


def format_list(r: dict) -> str:
    out = [f"config {r['config']} ({r['precision']}, {r['optimizer']}, batch "
           f"{r['batch_size']})  target {r['target']['name']} (mcpu {r['target']['mcpu']}, "
           f"features {','.join(r['target']['features']) or '-'})"
           + ("  with a tuning record" if r.get("tuned") else ""),
           f"rule order: {' > '.join(r['rule_order'])}", ""]
    w = max(len(k["kernel"]) for k in r["kernels"]) + 2
    out.append(f"{'kernel':<{w}}{'op':<26}{'chosen':<34}other applicable rules")
    for k in r["kernels"]:
        others = [x for x in k["applicable"] if x != k["chosen"]]
        others += [f"{x} raised" for x in k.get("raised", ())]
        params = k.get("params") or {}
        chosen = k["chosen"] + (" (tuned)" if params.get("tuned") else "")
        out.append(f"{k['kernel']:<{w}}{k['op'] or '?':<26}{chosen:<34}{', '.join(others)}")
    return "\n".join(out)


def check_and_time(sch, target, ins, want: np.ndarray, reps: int,
                   out_dtype: str = "float32") -> tuple[float, bool, float]:
    """Compile ``sch``, run it once on ``ins`` with a NaN-poisoned output, and time it:
    (relative Frobenius error vs ``want``, any output left unwritten, median seconds)."""
    import tvm

    from dlrm_tvm.pipeline import compile_primfunc

    lib = compile_primfunc(sch, target)
    poison = np.full(want.shape, np.nan, np.float32)
    if out_dtype == "bfloat16":
        import ml_dtypes

        poison = poison.astype(ml_dtypes.bfloat16)
    out = tvm.runtime.tensor(poison)
    lib["main"](*ins, out)
    got = out.numpy().astype(np.float32)
    if out_dtype == "bfloat16":  # the output's own rounding: compare with the rounded oracle
        import ml_dtypes

        want = want.astype(ml_dtypes.bfloat16).astype(np.float32)
    err = float(np.linalg.norm(got - want) / max(1e-30, np.linalg.norm(want)))
    secs = time_call(lambda: lib["main"](*ins, out), reps, TIME_BUDGET_S)
    return err, bool(np.isnan(got).any()), secs


def bench_gemm(shape: tuple[int, int, int], a_layout: str = "mk", b_layout: str = "kn",
               epilogue: str = "none", rules: list[str] | None = None,
               target_name: str = "host", reps: int = 10, torch_baseline: bool = True,
               dtype: str = "float32", peaks: tuple[float, float | None] | None = None) -> dict:
    import tvm

    from dlrm_tvm.bench.peaks import bf16_peak_gflops, fp32_peak_gflops
    from dlrm_tvm.graphs import ops
    from dlrm_tvm.graphs import reference as ref
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
            secs = _torch_matmul_seconds(a if a_layout == "mk" else np.asarray(a).T,
                                         b if b_layout == "kn" else np.asarray(b).T, reps)
            for prec, s in secs.items():
                rows.append({"name": f"torch matmul {prec}", "status": "baseline",
                             "ms": s * 1e3, "gflops": flop / s / 1e9,
                             "frac_fp32_peak": flop / s / 1e9 / peak})
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


def _vnni_inputs(func, seed: int = 0):
    """Random packed operands (bf16) for a gemm_vnni kernel, its oracle, and the logical
    (A [M, K], B [K, N]) the torch baseline multiplies."""
    import ml_dtypes

    from dlrm_tvm.graphs import reference as ref
    from dlrm_tvm.schedules.base import attr

    m, k, n = attr(func, "m"), attr(func, "k"), attr(func, "n")
    al, epi = attr(func, "a_layout"), attr(func, "epilogue")
    bf = ml_dtypes.bfloat16
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, k) if al == "mk" else (k, m)).astype(bf)
    a = x if al == "mk" else ref.pack_vnni(x)
    b = rng.standard_normal((k, n)).astype(bf)
    ins = [a, ref.pack_vnni(b)]
    extra = None
    if epi in ("bias", "bias_relu"):
        extra = rng.standard_normal(n).astype(bf)
    elif epi == "relu_mask":
        extra = rng.standard_normal((m, n)).astype(bf)
    if extra is not None:
        ins.append(extra)
    want = ref.gemm_vnni(a.astype(np.float32), ins[1].astype(np.float32), m, k, n, al, epi,
                         None if extra is None else extra.astype(np.float32))
    logical_a = x if al == "mk" else x.T
    return ins, want, (logical_a, b)


def time_vnni(func, sch, target, reps: int, seed: int = 0) -> dict:
    """Check a scheduled gemm_vnni against its oracle (poisoned output) and time it."""
    import tvm

    from dlrm_tvm.schedules.base import attr

    ins, want, _ = _vnni_inputs(func, seed)
    tins = [tvm.runtime.tensor(x) for x in ins]
    err, unwritten, s = check_and_time(sch, target, tins, want, reps,
                                       out_dtype=attr(func, "out_dtype"))
    flop = 2.0 * attr(func, "m") * attr(func, "k") * attr(func, "n")
    # fp32 out: only the sum order differs from the float64 oracle; bf16 out: a sum on either
    # side of a rounding boundary lands one bf16 step (2^-8) apart
    tol = 1e-5 if attr(func, "out_dtype") == "float32" else 2.0 ** -8
    return {"status": "ok" if (not unwritten and err < tol) else "WRONG", "rel_err": err,
            "ms": s * 1e3, "gflops": flop / s / 1e9}


def _time_pack(func, sch, target, reps: int) -> dict:
    import ml_dtypes
    import tvm

    from dlrm_tvm.graphs import reference as ref
    from dlrm_tvm.pipeline import compile_primfunc
    from dlrm_tvm.schedules.base import attr

    rows, cols = attr(func, "rows"), attr(func, "cols")
    tr, kp = bool(attr(func, "transpose")), attr(func, "k_pad")
    x = np.random.default_rng(1).standard_normal((rows, cols)).astype(ml_dtypes.bfloat16)
    want = ref.pack_vnni(x, tr, kp)
    lib = compile_primfunc(sch, target)
    out = tvm.runtime.tensor(np.full(want.shape, np.nan, np.float32).astype(ml_dtypes.bfloat16))
    tx = tvm.runtime.tensor(x)
    lib["main"](tx, out)
    ok = np.array_equal(out.numpy().view(np.uint16), want.view(np.uint16))
    s = time_call(lambda: lib["main"](tx, out), reps, TIME_BUDGET_S)
    return {"status": "ok" if ok else "WRONG", "ms": s * 1e3,
            "gbs": (x.nbytes + want.nbytes) / s / 1e9}


def _torch_matmul_seconds(a, b, reps: int) -> dict[str, float]:
    """Median seconds of torch's ``a @ b`` (logical [M, K] and [K, N], possibly transposed
    views) in fp32 and bf16; {} without torch."""
    try:
        import torch
    except ImportError:
        return {}
    out = {}
    for dt, prec in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        ta = torch.from_numpy(np.asarray(a, np.float32)).to(dt)
        tb = torch.from_numpy(np.asarray(b, np.float32)).to(dt)
        out[prec] = time_call(lambda ta=ta, tb=tb: ta @ tb, reps, TIME_BUDGET_S)
    return out


def sweep_gemms(cfg: Config, target_name: str = "host", reps: int = 5,
                torch_baseline: bool = True, tuning: dict | None = None) -> dict:
    """Every distinct GEMM of ``cfg``'s training step (forward, input and weight gradients, at
    the config's precision, in the layouts compile uses), each with the rule the target's list
    picks, against torch; and every VNNI pack, as GB/s against the measured copy bandwidth."""
    from tvm import tirx

    from dlrm_tvm.bench.peaks import (amx_peak_gflops, bf16_peak_gflops, fp32_peak_gflops,
                                      memory_bandwidth_gbs)
    from dlrm_tvm.pipeline import build_step
    from dlrm_tvm.runtime.amx import needs_amx, request_amx
    from dlrm_tvm.schedules import rules_for, schedule_func
    from dlrm_tvm.schedules.base import attr, op_of
    from dlrm_tvm.targets import runnable_target

    target = runnable_target(target_name).tvm_target()
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))
    bf16 = cfg.train.precision == "bf16"
    peaks = (fp32_peak_gflops(target, threads), bf16_peak_gflops(target, threads) if bf16
             else None)
    amx_peak = amx_peak_gflops(target, threads) if bf16 else None  # None: no AMX here
    if needs_amx(target):
        request_amx()
    copy_gbs = memory_bandwidth_gbs(target)
    mod = build_step(cfg, target)  # the step compile builds
    rules = rules_for(target, tuning=tuning)
    rows, packs = [], []
    torch_rows = []
    for gv, func in sorted(mod.functions_items(), key=lambda kv: kv[0].name_hint):
        if not isinstance(func, tirx.PrimFunc):
            continue
        op = op_of(func)
        if op not in ("gemm", "gemm_vnni", "pack_vnni"):
            continue
        scheduled, rule = schedule_func(func, target, rules)
        if op == "pack_vnni":
            r = _time_pack(func, scheduled, target, reps)
            packs.append({"kernel": gv.name_hint, "rule": rule, **r,
                          "frac_copy": r["gbs"] / copy_gbs})
            continue
        shape = (attr(func, "m"), attr(func, "k"), attr(func, "n"))
        if op == "gemm":
            r = bench_gemm(shape, attr(func, "a_layout"), attr(func, "b_layout", "kn"),
                           attr(func, "epilogue"), [rule], target_name, reps, False,
                           attr(func, "in_dtype", "float32"), peaks)
            ours = r["rows"][0]
            dt = attr(func, "in_dtype", "float32")
            rng = np.random.default_rng(0)
            logical = (rng.standard_normal(shape[:2]).astype(np.float32),
                       rng.standard_normal(shape[1:]).astype(np.float32))
        else:
            ours = time_vnni(func, scheduled, target, reps)
            dt = "bfloat16"
            logical = _vnni_inputs(func)[2]
        peak = peaks[1] if dt == "bfloat16" and peaks[1] else peaks[0]
        if rule == "gemm_vnni_amx_bf16" and amx_peak:
            peak = amx_peak  # a kernel on tiles against the tile loop's peak
        rows.append({"kernel": gv.name_hint, "shape": list(shape), "rule": rule,
                     "status": ours["status"], "gflops": ours.get("gflops"),
                     "frac_peak": ours["gflops"] / peak if "gflops" in ours else None})
        torch_rows.append(logical)
    if torch_baseline:  # after all of ours: torch's OpenMP workers would slow TVM's
        time.sleep(0.3)
        for row, (a, b) in zip(rows, torch_rows, strict=True):
            flop = 2.0 * a.shape[0] * a.shape[1] * b.shape[1]
            row.update({f"torch_{prec}_gflops": flop / t / 1e9
                        for prec, t in _torch_matmul_seconds(a, b, reps).items()})
    for row in rows:
        base = [row[n] for n in ("torch_fp32_gflops", "torch_bf16_gflops") if row.get(n)]
        row["x_best_torch"] = (row["gflops"] / max(base)) if base and row["gflops"] else None
    return {"config": cfg.name, "precision": cfg.train.precision, "target": target_name,
            "threads": threads, "fp32_peak_gflops": peaks[0], "bf16_peak_gflops": peaks[1],
            "amx_bf16_peak_gflops": amx_peak, "copy_gbs": copy_gbs, "rows": rows, "packs": packs}


def format_sweep(r: dict) -> str:
    peak = (f"bf16 peak {r['bf16_peak_gflops']:.0f}" if r["bf16_peak_gflops"]
            else f"fp32 peak {r['fp32_peak_gflops']:.0f}")
    if r.get("amx_bf16_peak_gflops"):
        peak += (f" (vdpbf16ps), AMX peak {r['amx_bf16_peak_gflops']:.0f} (tdpbf16ps: the "
                 "peak of rows on gemm_vnni_amx_bf16)")
    out = [f"every GEMM of {r['config']} ({r['precision']}) on {r['target']}, {r['threads']} "
           f"threads; % of the measured {peak} GFLOP/s", ""]
    out.append(f"{'kernel':<40}{'rule':<28}{'GFLOP/s':>9}{'% peak':>8}{'torch32':>9}"
               f"{'torch16':>9}{'x torch':>9}")

    def f(v, fmt):
        return format(v, fmt) if v is not None else "-"

    for row in r["rows"]:
        pct = f(100 * row["frac_peak"], ".0f") if row["frac_peak"] is not None else "-"
        out.append(f"{row['kernel']:<40}{row['rule']:<28}{f(row['gflops'], '.1f'):>9}"
                   f"{pct:>8}{f(row.get('torch_fp32_gflops'), '.1f'):>9}"
                   f"{f(row.get('torch_bf16_gflops'), '.1f'):>9}"
                   f"{f(row['x_best_torch'], '.2f'):>9}")
    if r.get("packs"):
        out.append("")
        out.append(f"VNNI packs, against the measured copy bandwidth {r['copy_gbs']:.1f} GB/s:")
        out.append(f"{'kernel':<40}{'status':<8}{'ms':>8}{'GB/s':>8}{'% copy':>8}")
        for p in r["packs"]:
            out.append(f"{p['kernel']:<40}{p['status']:<8}{p['ms']:>8.3f}{p['gbs']:>8.1f}"
                       f"{100 * p['frac_copy']:>8.0f}")
    out.append("")
    out.extend(sweep_verdict(r))
    return "\n".join(out)


def sweep_verdict(r: dict) -> list[str]:
    """The per-kernel goals of the bf16 work, checked on these numbers."""
    big = [x for x in r["rows"] if min(x["shape"]) >= 128 and x["frac_peak"] is not None]
    lines = []
    if big:
        low = [x["kernel"] for x in big if x["frac_peak"] < 0.8]
        lines.append(f"GEMMs with all dims >= 128 at >= 80% of peak: {len(big) - len(low)} of "
                     f"{len(big)}" + (f" (below: {', '.join(low)})" if low else ""))
    behind = [x["kernel"] for x in r["rows"] if x["x_best_torch"] is not None
              and x["x_best_torch"] < 1.0]
    if any(x["x_best_torch"] is not None for x in r["rows"]):
        lines.append("GEMMs behind torch's best matmul: "
                     + (", ".join(behind) if behind else "none"))
    slow = [p["kernel"] for p in r.get("packs", []) if p["frac_copy"] < 0.7]
    if r.get("packs"):
        lines.append("packs below 70% of copy bandwidth: " + (", ".join(slow) if slow
                                                               else "none"))
    wrong = [x["kernel"] for x in r["rows"] + r.get("packs", []) if x["status"] != "ok"]
    if wrong:
        lines.append("WRONG results: " + ", ".join(wrong))
    return lines
