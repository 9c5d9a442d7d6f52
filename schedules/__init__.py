"""HOW each kernel runs: one ordered rule list per target; the first rule that matches wins.

``RULES`` below is the single place that says which schedule an op gets: every rule in
priority order; ``rules_for(target)`` keeps those whose ``requires`` the target has. Every list
ends in ``Fallback``, which is correct on any x86-64. A user can put a rule of their own first
with ``prefer=[...]`` (by rule name), from the command line or the config.

To add a rule: write its class in the module of its op kind (or a new module here, imported
below; one that needs an instruction only some x86 CPUs have goes in ``x86/`` and lists the
features in ``requires``), then add one line to ``RULES`` at its priority. What a rule may match
on (the ``dlrm.*`` function attributes) is documented in ``base.py``.
"""

from __future__ import annotations

import logging

from tvm import IRModule, tirx
from tvm.target import Target

from . import dcn, embedding, embedding_update, fallback, gemm, gemv, interaction, pack, reduction
from .base import Rule, op_of
from .x86 import gemm_amx, gemm_bf16

log = logging.getLogger("dlrm_tvm.schedules")

# Every rule, one line each, in priority order: for an op, the first rule in this list that
# matches it wins. A rule that needs target features says so itself (``Rule.requires``, e.g. the
# BF16 microkernel rules: avx512bf16); ``rules_for`` drops those the target lacks. The GEMV rule
# takes the 1-wide layer's GEMMs before the GEMM rules; the fp32 rules' tile sizes come from the
# target (AVX2 or AVX-512). Fallback, correct on any CPU, is last.
RULES: tuple[Rule, ...] = (
    gemm_amx.GemmVnniAmx(),
    gemm_bf16.GemmVnniDpbf16ps(),
    gemv.GemvVector(),
    pack.PackVnniVector(),
    gemm_bf16.GemmBF16Dpbf16ps(),
    gemm.GemmPacked(),
    gemm.GemmTiled(),
    reduction.ColsumVectorBlocks(),
    reduction.SplitSgdParallel(),
    embedding.EmbeddingBagBalancedPrefetch(),
    embedding.EmbeddingBagParallelBags(),
    embedding_update.EmbeddingUpdateLookupOrder(),
    embedding_update.EmbeddingUpdateBucketed(),
    interaction.InteractionDotFwd(),
    interaction.InteractionDotBwd(),
    dcn.DcnElementwiseRows(),
    fallback.Fallback(),
)
ALL_RULES: dict[str, Rule] = {r.name: r for r in RULES}  # by name, in RULES order


def rules_for(target: Target, prefer: list[str] | tuple[str, ...] = (),
              tuning: dict | None = None) -> list[Rule]:
    """The ordered rule list for ``target``: the rules named in ``prefer`` first (even where the
    target lacks a feature they need: they decline themselves), then the rules of ``RULES`` that
    apply to the target (``Rule.applies``), Fallback last. ``tuning``: a tuning record whose
    parameters go to the rules that take them (``Rule.tuned``)."""
    unknown = [p for p in prefer if p not in ALL_RULES]
    if unknown:
        raise ValueError(f"unknown schedule rule(s) {unknown}; known: {sorted(ALL_RULES)}")
    *ordered, last = RULES
    chosen = [ALL_RULES[p] for p in prefer]
    out = chosen + [r for r in ordered if r not in chosen and r.applies(target)] + [last]
    if tuning:  # a tuning record's per-kernel parameters (dlrm-tvm kernels tune)
        params = tuning_params(tuning, target)
        out = [r.tuned(params) for r in out]
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


__all__ = ["ALL_RULES", "RULES", "Rule", "rules_for", "schedule_func", "schedule_module"]
