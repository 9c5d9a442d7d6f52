"""``dlrm-tvm kernels tune``: search the register tiles of a config's packed bf16 GEMMs on this
host, and read the record it writes.

``tune_gemms`` times, for every packed bf16 GEMM (``gemm_vnni``) of the config's step as compile
builds it, the default register tile and loop order, then other tiles that fit the registers and
the shape (``_tile_candidates``), each checked against the NumPy oracle, within a time budget;
the best per kernel goes into a JSON record. ``read_tuning`` reads and validates such a record
for ``compile``/``train``/``bench``/``kernels list --tuning`` (schedules.rules_for applies it).
"""

from __future__ import annotations

import json
import os
import time

from dlrm_tvm.config import Config, ConfigError


def _tile_candidates(m: int, n: int, regs: int = 32, k: int = 1024) -> list[dict]:
    """Register tiles that fit the vector registers (MI x NJ/16 accumulators plus the B
    vectors and one broadcast) and divide the shape, each with both loop orders and a few row
    blocks (row tiles per task)."""
    from dlrm_tvm.schedules.x86.gemm_bf16 import row_block_for

    out = []
    for nj in (16, 32, 48, 64):
        if n % nj:
            continue
        per_row = nj // 16
        limit = (regs - per_row - 1) // per_row
        mis = sorted({mi for mi in range(1, limit + 1) if m % mi == 0 and mi >= min(4, m)},
                     reverse=True)[:4]
        for mi in mis:
            rbs = sorted({1, row_block_for(m, n, mi, nj, k)} | {rb for rb in (4, 16)
                                                                 if (m // mi) % rb == 0})
            for po in (False, True):
                for rb in rbs:
                    out.append({"mi": mi, "nj": nj, "panel_outer": po, "row_block": rb})
    return out


def tune_gemms(cfg: Config, target_name: str = "host", budget_s: float = 300.0, reps: int = 5,
               log=print) -> dict:
    """Search the register tile and loop order of every packed bf16 GEMM of ``cfg``'s step on
    this host, within ``budget_s`` (shared evenly by the kernels; the default parameters are
    always measured first). Returns a tuning record (JSON-able) for compile/train --tuning."""
    from tvm import tirx

    from dlrm_tvm.kernels import time_vnni
    from dlrm_tvm.pipeline import build_step
    from dlrm_tvm.schedules.base import attr, op_of, vector_registers
    from dlrm_tvm.schedules.x86.gemm_amx import GemmVnniAmx, amx_fits
    from dlrm_tvm.schedules.x86.gemm_bf16 import GemmVnniDpbf16ps, gemm_vnni_schedule
    from dlrm_tvm.targets import runnable_target, target_signature

    if cfg.train.precision != "bf16":
        raise ValueError("kernels tune searches the bf16 microkernel GEMMs: pass --precision bf16 "
                         "(or a bf16 config)")
    ti = runnable_target(target_name, "tune")
    target = ti.tvm_target()
    rule = GemmVnniDpbf16ps()
    if "avx512bf16" not in ti.features:
        raise ValueError(f"target {ti.name} has no avx512bf16: there is no bf16 microkernel "
                         "GEMM to tune")
    mod = build_step(cfg, target)  # the step compile builds
    funcs = [(gv.name_hint, f) for gv, f in sorted(mod.functions_items(),
                                                   key=lambda kv: kv[0].name_hint)
             if isinstance(f, tirx.PrimFunc) and op_of(f) == "gemm_vnni"]
    if GemmVnniAmx().applies(target):  # those run on AMX tiles, which have no tile to tune
        on_amx = [n for n, f in funcs if amx_fits(attr(f, "m"), attr(f, "k"), attr(f, "n"))]
        if on_amx:
            log(f"  {len(on_amx)} GEMMs run on AMX tiles on {ti.name} (gemm_vnni_amx_bf16): "
                "not tuned")
        funcs = [(n, f) for n, f in funcs if n not in on_amx]
    t_start = time.perf_counter()
    kernels: dict[str, dict] = {}
    for i, (name, func) in enumerate(funcs):
        key = rule.key_of(func)
        if key in kernels:
            continue
        deadline = time.perf_counter() + (budget_s - (time.perf_counter() - t_start)) / \
            max(1, len(funcs) - i)
        m, n, kk = attr(func, "m"), attr(func, "n"), attr(func, "k")
        default = rule.choose(func, target)
        tried = []
        for p in [default] + [c for c in _tile_candidates(m, n, vector_registers(target), kk)
                              if c != default]:
            if tried and time.perf_counter() > deadline:
                break
            sch = gemm_vnni_schedule(func, target, p["mi"], p["nj"], p["panel_outer"],
                                     row_block=p.get("row_block", 1))
            r = time_vnni(func, sch, target, reps)
            if r["status"] != "ok":
                raise RuntimeError(f"{name} with {p} gave a wrong result (rel err "
                                   f"{r['rel_err']:.1e}): a schedule bug, not a tuning choice")
            tried.append((r["gflops"], p))
        best_g, best = max(tried, key=lambda t: t[0])
        kernels[key] = {"kernel": name, "params": best, "gflops": round(best_g, 1),
                        "default_params": default, "default_gflops": round(tried[0][0], 1),
                        "candidates_tried": len(tried)}
        log(f"  {name:<44} {len(tried):>3} tried  default {tried[0][0]:7.1f} -> best "
            f"{best_g:7.1f} GFLOP/s  mi={best['mi']} nj={best['nj']} "
            f"panel_outer={best['panel_outer']} row_block={best.get('row_block', 1)}")
    return {"format": "dlrm-tvm-tuning", "version": 1, "config": cfg.name,
            "precision": cfg.train.precision, "batch_size": cfg.train.batch_size,
            "target": ti.to_dict(), "target_signature": target_signature(target),
            "threads": int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1)),
            "budget_s": budget_s, "seconds": round(time.perf_counter() - t_start, 1),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "kernels": kernels}


def read_tuning(path) -> dict:
    """A tuning record from ``dlrm-tvm kernels tune`` (plain JSON, validated; never pickle)."""
    from dlrm_tvm.config_io import read_small_file

    if not os.path.lexists(path):
        raise ConfigError(f"tuning record {path} does not exist")
    try:
        rec = json.loads(read_small_file(path, "tuning record").decode())
    except (OSError, ValueError) as e:
        raise ConfigError(f"tuning record {path} is not readable JSON: {e}") from None
    if not isinstance(rec, dict) or rec.get("format") != "dlrm-tvm-tuning" or \
            not isinstance(rec.get("kernels"), dict) or "target_signature" not in rec:
        raise ConfigError(f"{path} is not a dlrm-tvm tuning record (kernels tune writes one)")
    for key, v in rec["kernels"].items():
        p = v.get("params") if isinstance(v, dict) else None
        ok = isinstance(p, dict) and all(isinstance(p.get(f), int) and p[f] > 0
                                         for f in ("mi", "nj")) and \
            isinstance(p.get("panel_outer", False), bool) and p["nj"] % 16 == 0 and \
            p["mi"] <= 32 and isinstance(p.get("row_block", 1), int) and p.get("row_block", 1) > 0
        if not ok:
            raise ConfigError(f"tuning record {path}: kernel {key} has invalid params {p!r}")
    return rec
