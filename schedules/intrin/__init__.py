"""Microkernels: each a registered TensorIntrin pair (a plain TIR description, which is also the
oracle in tests, and an implementation on one instruction) under one name constant."""

from .x86_bf16 import DPBF16_16X2, DPBF16_16X2_DESC, DPBF16_LLVM_IR, register

__all__ = ["DPBF16_16X2", "DPBF16_16X2_DESC", "DPBF16_LLVM_IR", "register"]
