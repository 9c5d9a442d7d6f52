"""The Linux permission a process needs before its first AMX tile instruction, where code runs.

The request itself lives in the base layer (``dlrm_tvm/amx_permission.py``: the kernel's
numbers, ``request_amx``, ``supported_xfeatures``, ``AmxUnavailable`` and the reason for each
refusal), because resolving the ``host`` target asks it too: the host keeps its AMX features
only where the request is granted. Here: the quiet request every load of compiled code makes,
and whether a target's code may contain tile instructions. ``request_amx`` is called when a
module that needs AMX is loaded (an artifact compiled for sapphirerapids and later, or a step
compiled for such a host), never at import.
"""

from __future__ import annotations

from dlrm_tvm.amx_permission import (  # noqa: F401 - re-exported: the runtime's AMX face
    ARCH_GET_XCOMP_PERM,
    ARCH_GET_XCOMP_SUPP,
    ARCH_REQ_XCOMP_PERM,
    SYS_ARCH_PRCTL,
    XFEATURE_XTILEDATA,
    AmxUnavailable,
    host_amx_refusal,
    request_amx,
    supported_xfeatures,
)
from dlrm_tvm.targets import host_cpu_flags


def request_if_host_has_amx() -> bool:
    """On a host whose CPU reports amx_tile, ask for the permission once (quietly: a refusal
    is only an error where AMX code is about to run, ``request_amx``; it is logged once, by
    ``host_amx_refusal``); True if granted. Every place that runs compiled code calls this, so a
    module compiled for the host (AMX kernels included) never meets a tile instruction before
    the grant."""
    if "amx_tile" not in host_cpu_flags():
        return False
    return host_amx_refusal() is None


def needs_amx(tvm_target) -> bool:
    """Whether code compiled for ``tvm_target`` may contain AMX tile instructions."""
    from tvm.target import codegen

    return bool(codegen.target_has_features("amx-tile", tvm_target))
