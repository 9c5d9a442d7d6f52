"""The schedule-rule interface (as TVM's dlight ``ScheduleRule``), the attributes rules match
on, and small shared helpers.

A rule's ``apply(func, target, tunable)`` returns a ``Schedule`` for a PrimFunc it handles, or
None for "not mine". It never raises for a function it does not handle. ``requires`` names the
target features it needs (``rules_for`` lists it only for targets that have them all).

The ``dlrm.*`` attribute contract
---------------------------------
What a rule may match on, besides the IR itself. Set on each kernel by graphs/ops.py and its
neighbours ops_interaction.py and ops_optim.py (graphs/common.py's ``tag_op(func, op,
**attrs)``: ``dlrm.op`` and one ``dlrm.<key>`` per keyword) and by
graphs/embedding_update.py (the end of ``embedding_bag_update``). graphs/dlrm.py sets none
itself: it picks the factory arguments they come from (precision -> dtypes, storage "rows" for
bf16 tables, the optimizer) and names each kernel (the global symbol, which no rule reads).
Read them with ``op_of(func)`` and ``attr(func, key, default)`` (ints come back as int, strings
as str). "bench" below is dlrm_tvm/kernels.py (``dlrm-tvm kernels bench``), which reads them too.

``dlrm.op``: str, on every kernel (and on dlrm_tvm/bench/peaks.py's probe, "peak_probe"): the op kind.
  Every rule's ``ops`` is matched against it (``Rule.matches_op``); ``schedule_module`` records it.

gemm (``ops.gemm``) and gemm_vnni (``ops.gemm_vnni``):
  ``m``, ``k``, ``n``: int. Y[M, N] = epilogue(A(M, K) B(K, N)). Read by gemv_vector,
      gemm_packed_fp32 and gemm_tiled_fp32 (m, n), gemm_bf16_avx512_dpbf16ps,
      gemm_vnni_avx512_dpbf16ps (also its tuning key), bench.
  ``a_layout``: str. gemm: "mk" (A is [M, K]) or "km" (A is [K, M]: the weight gradient);
      gemm_vnni: "mk" or "vnni" (A packed by pack_vnni). Read by gemv_vector,
      gemm_packed_fp32, both dpbf16ps rules, bench.
  ``b_layout``: str. gemm: "kn" (B is [K, N]) or "nk" (B is [N, K]: the input gradient);
      gemm_vnni: always "vnni". Read by gemm_packed_fp32, gemm_bf16_avx512_dpbf16ps, bench.
  ``epilogue``: str, one of ``ops.GEMM_EPILOGUES`` ("none", "bias", "bias_relu",
      "relu_mask"): what block "Y" applies to the sum. Read by bench only.
  ``in_dtype``, ``out_dtype``: str, "float32" or "bfloat16": of A, B, bias and mask (gemm_vnni:
      always bfloat16); of Y. Sums are fp32. in_dtype read by gemm_bf16_avx512_dpbf16ps
      (bf16 only) and bench; out_dtype by bench only.
pack_vnni (``ops.pack_vnni``):
  ``rows``, ``cols``: int (the input [rows, cols]); ``transpose``: int 0/1 (the input is M^T);
  ``k_pad``: int (K padded to this even length). Read by bench only (pack_vnni_vector reads
      the loop nest).
embedding_bag_fwd (``ops.embedding_bag_fwd``):
  ``batch``, ``tables``, ``d``: int (B, T, D of pooled [B, T, D]); ``table_dtype``: str,
  "float32" or "bfloat16" (the Split-SGD high half); ``row_width``: int (a stored row's width:
  2D for "rows" tables, else D). All read by embedding_bag_balanced_prefetch and
  embedding_bag_parallel_bags.
embedding_bag_update (``graphs/embedding_update.embedding_bag_update``):
  ``batch``, ``tables``, ``d``: int (as above); ``optimizer``: str, "sgd", "rwsadagrad" or
  "adagrad" (its eps follows from it: config.OPTIMIZER_EPS); ``storage``: str, "fp32",
  "split" or "rows". All read by embedding_update_bucketed_lookups (which declines both
  Adagrads) and embedding_update_bucketed.
adagrad_update (``ops_optim.adagrad_update``):
  ``split``: int 0/1 (hi/lo halves, or fp32). Read by no rule.
cross_fwd, cross_bwd (``graphs/ops_dcn.py``, the DCN cross layers' elementwise kernels):
  ``act``: str, "float32" or "bfloat16" (the dtype of the GEMM-operand output); cross_fwd
  ``keep_f32``: int 0/1 (an fp32 output too); cross_bwd ``has_g``, ``has_acc``: int 0/1
  (which optional inputs it takes). Read by no rule (dcn_elementwise_rows reads the loop
  nests); cross_input_bwd carries ``dlrm.op`` only.

Every other op carries ``dlrm.op`` only: colsum, sgd_update, split_sgd_update, relu_bwd, cast
(also ``ops.cast_pad``), sigmoid, bce_loss, stack_features, interaction_dot_fwd,
interaction_dot_bwd, interaction_cat_fwd, interaction_cat_bwd. Rules that schedule by
primitives also rely on the block names the ops give: "C" and "Y" (gemm,
gemm_vnni), "Y" (colsum), "update" (sgd_update, split_sgd_update, adagrad_update), "P"
(pack_vnni), "Z" and "R" (interaction_dot_fwd), "G0", "dx" and "demb" (interaction_dot_bwd,
and cross_input_bwd).
A new attribute goes into its op's factory and into this list.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.script import tirx as T
from tvm.target import Target, codegen


class Rule:
    """One way to schedule one kind of kernel. Subclasses set ``name`` and ``ops``."""

    name: str = "rule"
    ops: tuple[str, ...] = ()  # the dlrm.op kinds this rule may match; () = any
    requires: tuple[str, ...] = ()  # target features it needs (LLVM names); () = any CPU

    def matches_op(self, func: tirx.PrimFunc) -> bool:
        return not self.ops or op_of(func) in self.ops

    def applies(self, target: Target) -> bool:
        """Whether the target has every feature in ``requires`` (gates ``rules_for``)."""
        return all(has_feature(target, f) for f in self.requires)

    def tuned(self, params: dict) -> Rule:
        """This rule with a tuning record's {kernel key: params}; rules without tunables: self."""
        return self

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False):
        raise NotImplementedError

    def describe(self, func: tirx.PrimFunc, target: Target) -> dict:
        """The parameters this rule chose for ``func`` (recorded in the artifact); {} if none."""
        return {}

    def __repr__(self) -> str:
        return f"<rule {self.name}>"


def op_of(func: tirx.PrimFunc) -> str | None:
    attrs = func.attrs
    if attrs is None or "dlrm.op" not in attrs:
        return None
    return str(attrs["dlrm.op"])


def attr(func: tirx.PrimFunc, key: str, default=None):
    attrs = func.attrs
    if attrs is None or f"dlrm.{key}" not in attrs:
        return default
    v = attrs[f"dlrm.{key}"]
    if isinstance(v, (int, float)):
        return v
    return v.value if hasattr(v, "value") else str(v)


def has_feature(target: Target, feature: str) -> bool:
    return bool(codegen.target_has_features(feature, target))


def fp32_lanes(target: Target) -> int:
    """fp32 lanes in the target's widest vector register (derived, not assumed)."""
    if has_feature(target, "avx512f"):
        return 16
    if has_feature(target, "avx2") or has_feature(target, "avx"):
        return 8
    return 4


def vector_registers(target: Target) -> int:
    return 32 if has_feature(target, "avx512f") else 16


def top_level_blocks(sch: s_tir.Schedule) -> list:
    root = sch.get_sblock("root")
    return list(sch.get_child_blocks(root))


def is_spatial_block(sch: s_tir.Schedule, block) -> bool:
    return all(int(iv.iter_type) == 0 for iv in sch.get(block).iter_vars)


def const_extent(sch: s_tir.Schedule, loop) -> int | None:
    ext = sch.get(loop).extent
    return int(ext.value) if hasattr(ext, "value") else None


def substitute(func: tirx.PrimFunc, impl: tirx.PrimFunc) -> s_tir.Schedule:
    """Schedule by substitution: a Schedule of ``impl``, a hand-written implementation of
    ``func`` with the same signature and arithmetic, carrying ``func``'s attributes."""
    if len(impl.params) != len(func.params):
        raise AssertionError("implementation signature differs from the kernel's")
    return s_tir.Schedule(impl.with_attrs(func.attrs) if func.attrs else impl)


def prefetch(buf, row, col, write: int):
    """In TVMScript: a software prefetch of buf[row, col]'s cache line (never faults);
    ``write`` 1 for a line about to be written."""
    return T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", T.address_of(buf[row, col]),
                                         T.int32(write), T.int32(3), T.int32(1)))
