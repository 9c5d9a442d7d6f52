"""HOW each kernel runs: one ordered rule list per target; the first rule that matches wins.

``rules_for(target)`` is the single place that says which schedule an op gets on a target.
Every list ends in ``Fallback``, which is correct on any x86-64. A user can put a rule of their
own first with ``prefer=[...]`` (by rule name), from the command line or the config.
"""

from __future__ import annotations

import logging

from tvm import IRModule, tirx
from tvm.target import Target

from .base import Rule, has_feature, op_of
from .embedding import (
    EmbeddingBagBalancedPrefetch,
    EmbeddingBagParallelBags,
    EmbeddingUpdateBucketed,
    EmbeddingUpdateLookupOrder,
)
from .fallback import Fallback
from .gemm import GemmPacked, GemmTiled
from .gemv import GemvVector
from .interaction import InteractionDotBwd, InteractionDotFwd
from .pack import PackVnniVector
from .reduction import ColsumVectorBlocks, SplitSgdParallel
from .x86.gemm_bf16 import GemmBF16Dpbf16ps, GemmVnniDpbf16ps

log = logging.getLogger("dlrm_tvm.schedules")

ALL_RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        GemmVnniDpbf16ps(),
        GemvVector(),
        PackVnniVector(),
        GemmBF16Dpbf16ps(),
        GemmPacked(),
        GemmTiled(),
        ColsumVectorBlocks(),
        SplitSgdParallel(),
        EmbeddingBagBalancedPrefetch(),
        EmbeddingBagParallelBags(),
        EmbeddingUpdateLookupOrder(),
        EmbeddingUpdateBucketed(),
        InteractionDotFwd(),
        InteractionDotBwd(),
        Fallback(),
    )
}


def rules_for(target: Target, prefer: list[str] | tuple[str, ...] = (),
              tuning: dict | None = None) -> list[Rule]:
    """The ordered rule list for ``target``: preferred rules first, Fallback last.

    The BF16 microkernel rules are listed only for targets with avx512bf16 (and check again
    themselves); the GEMV rule takes the 1-wide layer's GEMMs first; then the fp32 rules, whose tile sizes come from the target (AVX2 or AVX-512).
    """
    unknown = [p for p in prefer if p not in ALL_RULES]
    if unknown:
        raise ValueError(f"unknown schedule rule(s) {unknown}; known: {sorted(ALL_RULES)}")
    bf16 = has_feature(target, "avx512bf16")
    base = [
        *([ALL_RULES["gemm_vnni_avx512_dpbf16ps"]] if bf16 else []),
        ALL_RULES["gemv_vector"],
        ALL_RULES["pack_vnni_vector"],
        *([ALL_RULES["gemm_bf16_avx512_dpbf16ps"]] if bf16 else []),
        ALL_RULES["gemm_packed_fp32"],
        ALL_RULES["gemm_tiled_fp32"],
        ALL_RULES["colsum_vector_blocks"],
        ALL_RULES["split_sgd_parallel_chunks"],
        ALL_RULES["embedding_bag_balanced_prefetch"],
        ALL_RULES["embedding_bag_parallel_bags"],
        ALL_RULES["embedding_update_bucketed_lookups"],
        ALL_RULES["embedding_update_bucketed"],
        ALL_RULES["interaction_dot_fwd_rfactor"],
        ALL_RULES["interaction_dot_bwd_batched_gemm"],
    ]
    chosen = [ALL_RULES[p] for p in prefer]
    out = chosen + [r for r in base if r not in chosen] + [ALL_RULES["fallback"]]
    if tuning:  # a tuning record's per-kernel parameters (dlrm-tvm kernels tune)
        params = tuning_params(tuning, target)
        out = [GemmVnniDpbf16ps(params=params) if r.name == GemmVnniDpbf16ps.name else r
               for r in out]
    return out


def tuning_params(tuning: dict, target: Target) -> dict:
    """{kernel key: params} of a tuning record made for this target (same mcpu and features);
    a record for another target is refused with both named."""
    from dlrm_tvm.targets import target_signature

    want = tuning.get("target_signature")
    have = target_signature(target)
    if want != have:
        raise ValueError(f"this tuning record was made for {want}, not for this target ({have}): "
                         "run dlrm-tvm kernels tune for it")
    return {k: v["params"] for k, v in tuning.get("kernels", {}).items()}


def schedule_func(func: tirx.PrimFunc, target: Target, rules: list[Rule], record=None):
    """(scheduled func, rule name) from the first rule in ``rules`` that takes ``func``;
    ``record`` (a dict), if given, receives the rule's chosen parameters (``describe``).

    A rule must return None for what it does not handle; one that raises instead is logged
    and skipped, so a faulty rule costs speed, never the build."""
    for rule in rules:
        if not rule.matches_op(func):
            continue
        try:
            sch = rule.apply(func, target, False)
        except Exception as e:  # noqa: BLE001 - see docstring
            log.warning("schedule rule %s raised on a %s kernel (%s: %s); trying the next rule",
                        rule.name, op_of(func), type(e).__name__, str(e).splitlines()[0][:200]
                        if str(e) else "")
            continue
        if sch is not None:
            if record is not None:
                record.update(rule.describe(func, target))
            return sch.mod["main"], rule.name
    raise RuntimeError("no schedule rule matched (the list must end in Fallback)")


def schedule_module(
    mod: IRModule, target: Target, prefer: list[str] | tuple[str, ...] = (),
    tuning: dict | None = None,
) -> tuple[IRModule, dict[str, dict]]:
    """Schedule every PrimFunc of ``mod``; returns the module and {func: {op, rule[, params]}}
    (params: what a tunable rule chose, e.g. the register tile)."""
    rules = rules_for(target, prefer, tuning)
    chosen: dict[str, dict] = {}
    out = IRModule(dict(mod.functions_items()), attrs=mod.attrs)
    for gv, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc):
            continue
        params: dict = {}
        new, rule = schedule_func(func, target, rules, params)
        out[gv] = new
        chosen[gv.name_hint] = {"op": op_of(func) or "?", "rule": rule}
        if params:
            chosen[gv.name_hint]["params"] = params
    return out, chosen


__all__ = ["ALL_RULES", "Rule", "rules_for", "schedule_func", "schedule_module"]
