"""The rule registry, the dlrm.* attribute contract, and the WHAT/HOW split of the embedding
update. Structural only: nothing is compiled, any x86-64 host."""

from __future__ import annotations

import re

import pytest
from dlrm_tvm.graphs import embedding_update as eu
from dlrm_tvm.graphs import ops
from dlrm_tvm.schedules import ALL_RULES, RULES, base, rules_for
from dlrm_tvm.schedules.embedding_update import embedding_bag_sgd_lookup_order, parallel_hooks
from dlrm_tvm.schedules.intrin.split_sgd import SPLIT_SGD_LLVM_IR, SPLIT_SGD_SHUFFLE_IR

from dlrm_tvm.targets import resolve_target, target_signature

TARGETS = ["host", "skylake-avx512", "cascadelake", "cooperlake", "znver3", "x86-64-v3"]


def test_registry_names_are_unique_and_fallback_is_last():
    assert len(ALL_RULES) == len(RULES)
    assert list(ALL_RULES) == [r.name for r in RULES]
    assert RULES[-1].name == "fallback" and not RULES[-1].requires and not RULES[-1].ops


@pytest.mark.parametrize("target_name", TARGETS)
def test_rules_for_is_the_registry_filtered_by_features(target_name):
    target = resolve_target(target_name).tvm_target()
    names = [r.name for r in rules_for(target)]
    assert names == [r.name for r in RULES if r.applies(target)]
    for r in RULES:
        if r.name not in names:
            assert not all(base.has_feature(target, f) for f in r.requires)


def test_prefer_puts_rules_first_even_without_their_feature():
    target = resolve_target("znver3").tvm_target()  # no avx512bf16
    names = [r.name for r in rules_for(target, prefer=["gemm_bf16_avx512_dpbf16ps",
                                                        "gemm_tiled_fp32"])]
    assert names[:2] == ["gemm_bf16_avx512_dpbf16ps", "gemm_tiled_fp32"]
    assert names.count("gemm_tiled_fp32") == 1 and names[-1] == "fallback"
    with pytest.raises(ValueError, match="unknown schedule rule"):
        rules_for(target, prefer=["no_such_rule"])


def test_tuning_reaches_only_the_tunable_rule():
    target = resolve_target("cooperlake").tvm_target()
    params = {"64x32x64_mk": {"mi": 4, "nj": 16}}
    record = {"target_signature": target_signature(target),
              "kernels": {k: {"params": v} for k, v in params.items()}}
    plain, tuned = rules_for(target), rules_for(target, tuning=record)
    assert [r.name for r in plain] == [r.name for r in tuned]
    for a, b in zip(plain, tuned, strict=True):
        if a.name == "gemm_vnni_avx512_dpbf16ps":
            assert b is not a and b.params == params
        else:
            assert b is a


def _one_of_each_kernel():
    w = 16  # interaction width, padded
    return [
        ops.gemm(16, 8, 16), ops.gemm_vnni(16, 8, 16), ops.pack_vnni(8, 16), ops.colsum(4, 8),
        ops.sgd_update((4,)), ops.split_sgd_update((4,)), ops.adagrad_update((4,), True),
        ops.relu_bwd(4, 8), ops.cast((4,), "float32", "bfloat16"), ops.cast_pad(4, 3, 4),
        ops.sigmoid(4), ops.bce_loss(4), ops.stack_features(4, 1, 8),
        ops.interaction_dot_fwd(4, 2, 8, False, w), ops.interaction_dot_bwd(4, 2, 8, False, w),
        ops.interaction_cat_fwd(4, 1, 8, w), ops.interaction_cat_bwd(4, 1, 8, w),
        ops.embedding_bag_fwd(4, (0, 10), 8), eu.embedding_bag_update(4, 2, 8),
    ]


def test_every_dlrm_attribute_is_in_the_contract():
    """schedules/base.py's docstring names every op kind and every dlrm.* key the graph sets."""
    doc = base.__doc__
    for func in _one_of_each_kernel():
        op = base.op_of(func)
        assert re.search(rf"\b{op}\b", doc), f"op {op} missing from the contract"
        for key in func.attrs.keys():
            if key.startswith("dlrm.") and key != "dlrm.op":
                assert f"``{key[5:]}``" in doc, f"{op}: {key} missing from the contract"


def test_rules_read_only_documented_keys():
    """Every attr(func, "key") in a rule module is a documented key."""
    import pathlib

    doc = base.__doc__
    root = pathlib.Path(base.__file__).parent
    for path in root.rglob("*.py"):
        for key in re.findall(r"attr\(func, ['\"](\w+)['\"]", path.read_text()):
            assert f"``{key}``" in doc, f"{path.name} reads undocumented dlrm.{key}"


@pytest.mark.parametrize("storage", eu.STORAGES)
@pytest.mark.parametrize("optimizer", eu.OPTIMIZERS)
def test_update_definition_is_serial_and_its_schedule_is_not(optimizer, storage):
    plain = eu.embedding_bag_update(8, 2, 40, optimizer, storage).script()
    for how in ("T.parallel", "T.vectorized", "llvm.prefetch", "call_extern"):
        assert how not in plain
    fast = eu.embedding_bag_update(8, 2, 40, optimizer, storage,
                                   how=parallel_hooks(40, storage)).script()
    assert "T.parallel" in fast and "llvm.prefetch" in fast
    assert ("dlrm_split_sgd" in fast) == (storage != "fp32")


@pytest.mark.parametrize("storage", eu.STORAGES)
def test_both_update_implementations_share_the_signature(storage):
    plain = eu.embedding_bag_update(8, 2, 24, "sgd", storage)
    other = embedding_bag_sgd_lookup_order(8, 2, 24, storage)
    assert [p.name for p in plain.params] == [p.name for p in other.params]


def test_split_sgd_llvm_functions():
    for name in ("dlrm_split_sgd8(", "dlrm_split_sgd16("):
        assert name in SPLIT_SGD_LLVM_IR
    assert "dlrm_split_sgd32s(" in SPLIT_SGD_SHUFFLE_IR
    assert SPLIT_SGD_SHUFFLE_IR.count("@llvm.fma.v16f32(") == 3  # declared once, called twice
