"""The Linux permission a process needs before its first AMX tile instruction.

Linux (5.16 and later) keeps the 8 KB AMX tile-data register state out of a process until the
process asks for it with ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``; a tile
instruction executed before that kills the process with SIGILL. ``request_amx`` asks once per
process (the grant covers every thread, present and future) and raises ``AmxUnavailable`` with
the reason when the kernel refuses: a CPU without AMX, a kernel older than 5.16, or a
sandbox that filters the call. Called when a module that needs AMX is loaded (an artifact
compiled for sapphirerapids and later, or a step compiled for such a host), never at import.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18


class AmxUnavailable(RuntimeError):
    """This process may not execute AMX tile instructions; the message says why and what to
    do instead (exit status 2, like any artifact this host cannot run)."""

    exit_code = 2


_granted = False


def _libc_syscall():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    return fn


def request_amx(syscall=None) -> None:
    """Ask the kernel for the AMX tile-data state once; raise ``AmxUnavailable`` if refused.
    ``syscall``: a stand-in for libc's ``syscall`` (tests)."""
    global _granted
    if _granted and syscall is None:
        return
    if platform.machine() not in ("x86_64", "AMD64"):
        raise AmxUnavailable(f"AMX needs an x86-64 CPU; this machine is {platform.machine()}")
    call = syscall or _libc_syscall()
    ctypes.set_errno(0)
    L = ctypes.c_long  # syscall(2) takes longs: no 32-bit variadic ints
    rc = call(L(SYS_ARCH_PRCTL), L(ARCH_REQ_XCOMP_PERM), L(XFEATURE_XTILEDATA))
    if rc != 0:
        err = ctypes.get_errno() or errno.EINVAL
        raise AmxUnavailable(_why(err))
    mask = ctypes.c_uint64(0)
    rc = call(L(SYS_ARCH_PRCTL), L(ARCH_GET_XCOMP_PERM), ctypes.byref(mask))
    if rc != 0 or not mask.value & (1 << XFEATURE_XTILEDATA):
        raise AmxUnavailable("the kernel accepted the AMX request but does not report the tile-"
                             f"data permission (mask {mask.value:#x}); AMX kernels cannot run")
    if syscall is None:
        _granted = True


def _why(err: int) -> str:
    release = platform.release()
    base = (f"the Linux kernel refused this process the AMX tile-data state "
            f"(arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA): {os.strerror(err)}; "
            f"kernel {release}). ")
    if err == errno.EOPNOTSUPP:
        why = "This CPU (or the virtual machine's view of it) has no AMX. "
    elif err == errno.EINVAL:
        why = ("Either this CPU has no AMX (check the amx_tile flag in /proc/cpuinfo) or the "
               "kernel is older than 5.16 and cannot hand AMX to processes. ")
    elif err in (errno.EPERM, errno.ENOSYS):
        why = "A sandbox or seccomp filter blocks the request. "
    else:
        why = ""
    return base + why + ("Compile for a target without AMX instead (e.g. `dlrm-tvm compile "
                         "--target cooperlake`, whose bf16 GEMMs use vdpbf16ps).")


_tried_host = False


def request_if_host_has_amx() -> bool:
    """On a host whose CPU reports amx_tile, ask for the permission once (quietly: a refusal
    is only an error where AMX code is about to run, ``request_amx``); True if granted. Every
    place that runs compiled code calls this, so a module compiled for the host (AMX kernels
    included) never meets a tile instruction before the grant."""
    global _tried_host
    if _granted:
        return True
    if _tried_host:
        return False
    _tried_host = True
    from dlrm_tvm.targets import host_cpu_flags

    if "amx_tile" not in host_cpu_flags():
        return False
    try:
        request_amx()
    except AmxUnavailable as e:
        import logging

        logging.getLogger("dlrm_tvm.runtime").warning("%s", e)
        return False
    return True


def needs_amx(tvm_target) -> bool:
    """Whether code compiled for ``tvm_target`` may contain AMX tile instructions."""
    from tvm.target import codegen

    return bool(codegen.target_has_features("amx-tile", tvm_target))
