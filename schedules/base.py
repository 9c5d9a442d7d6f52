"""The schedule-rule interface (as TVM's dlight ``ScheduleRule``) and small shared helpers.

A rule's ``apply(func, target, tunable)`` returns a ``Schedule`` for a PrimFunc it handles, or
None for "not mine". It never raises for a function it does not handle.
"""

from __future__ import annotations

from tvm import s_tir, tirx
from tvm.target import Target, codegen


class Rule:
    """One way to schedule one kind of kernel. Subclasses set ``name`` and ``ops``."""

    name: str = "rule"
    ops: tuple[str, ...] = ()  # the dlrm.op kinds this rule may match; () = any

    def matches_op(self, func: tirx.PrimFunc) -> bool:
        return not self.ops or op_of(func) in self.ops

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
