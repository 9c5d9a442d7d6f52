"""The Linux permission a process needs before its first AMX tile instruction, where code runs.

The request itself lives in the base layer (``dlrm_tvm/targets.py``, its AMX permission section: the kernel's
numbers, ``request_amx``, ``supported_xfeatures``, ``AmxUnavailable`` and the reason for each
refusal), because resolving the ``host`` target asks it too: the host keeps its AMX features
only where the request is granted. Here: the quiet request every load of compiled code makes,
and whether a target's code may contain tile instructions. ``request_amx`` is called when a
module that needs AMX is loaded (an artifact compiled for sapphirerapids and later, or a step
compiled for such a host), never at import.
"""

from __future__ import annotations

from dlrm_tvm.targets import (  # noqa: F401 - re-exported: the runtime's AMX face
    ARCH_GET_XCOMP_PERM,
    ARCH_GET_XCOMP_SUPP,
    ARCH_REQ_XCOMP_PERM,
    SYS_ARCH_PRCTL,
    XFEATURE_XTILEDATA,
    AmxUnavailable,
    emulated,
    host_amx_refusal,
    host_cpu_flags,
    request_amx,
    set_emulated,
    supported_xfeatures,
)


def enable_emulation() -> None:
    """``--emulate-amx``: install the software tile executor (runtime/amx_emulator.py) before
    any module loads, and never ask Linux for the AMX permission in this process, so every
    tile instruction traps to the executor (#UD on a CPU without AMX; on an AMX CPU the
    kernel's trap for a process without the grant). Process-wide, like the signal handler;
    raises ``AmxEmulatorError`` (exit status 2) where it cannot be built."""
    from dlrm_tvm.runtime import amx_emulator

    amx_emulator.install()
    set_emulated()


def emulated_instructions() -> dict[str, int] | None:
    """Under ``enable_emulation``: the tile instructions the executor ran so far, per mnemonic
    (those it ran at least once) and their ``total``; else None. On an AMX CPU the
    configuration instructions (ldtilecfg, tilerelease) run natively and are not counted."""
    if not emulated():
        return None
    from dlrm_tvm.runtime import amx_emulator

    counts = {k: int(v) for k, v in amx_emulator.counts().items() if v}
    return {**counts, "total": sum(counts.values())}


def request_if_host_has_amx() -> bool:
    """On a host whose CPU reports amx_tile, ask for the permission once (quietly: a refusal
    is only an error where AMX code is about to run, ``request_amx``; it is logged once, by
    ``host_amx_refusal``); True if granted. Every place that runs compiled code calls this, so a
    module compiled for the host (AMX kernels included) never meets a tile instruction before
    the grant."""
    if emulated():
        return True
    if "amx_tile" not in host_cpu_flags():
        return False
    return host_amx_refusal() is None


def needs_amx(tvm_target) -> bool:
    """Whether code compiled for ``tvm_target`` may contain AMX tile instructions."""
    from tvm.target import codegen

    return bool(codegen.target_has_features("amx-tile", tvm_target))
