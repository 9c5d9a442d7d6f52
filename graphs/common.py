"""What the graphs' kernel factories share: dtype names, the ``dlrm.*`` tag, Adagrad's eps and
the Split-SGD-BF16 bit math (one statement each, for ops_optim.py and embedding_update.py)."""

from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from dlrm_tvm.config import OPTIMIZER_EPS

F32 = "float32"
I64 = "int64"
ADAGRAD_EPS = 1e-10  # torch's Adagrad default, and the reference's
EXACT_ADAGRAD_EPS = OPTIMIZER_EPS["adagrad"]  # --optimizer adagrad: MLPerf DLRM-DCNv2's 1e-8


def tag_op(func: tirx.PrimFunc, op: str, **attrs) -> tirx.PrimFunc:
    """``func`` with ``dlrm.op`` = op and ``dlrm.<key>`` = value for each keyword (the contract:
    schedules/base.py)."""
    func = func.with_attr("dlrm.op", op)
    for k, v in attrs.items():
        func = func.with_attr(f"dlrm.{k}", v)
    return func


# ---------------------------------------------------------------- Split-SGD-BF16 bit math
# The fp32 master w of a bf16 parameter is kept as its upper 16 bits (hi: the bf16 value) and
# its lower 16 bits (lo). These three are the only TIR statement of the split.


def fp32_of_halves(hi16, lo16):
    """The fp32 whose upper and lower 16 bits are the uint16 values ``hi16`` and ``lo16``."""
    return T.reinterpret(
        F32, T.shift_left(T.Cast("uint32", hi16), T.uint32(16)) | T.Cast("uint32", lo16))


def high_half(bits):
    """The upper 16 bits of the uint32 ``bits`` (the bf16 half, as uint16)."""
    return T.Cast("uint16", T.shift_right(bits, T.uint32(16)))


def low_half(bits):
    """The lower 16 bits of the uint32 ``bits`` (as uint16)."""
    return T.Cast("uint16", bits & T.uint32(0xFFFF))
