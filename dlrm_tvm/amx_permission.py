"""Whether this process may execute AMX tile instructions: the Linux permission, asked with
``arch_prctl`` (pure ctypes, no dependencies).

Linux (5.16 and later) keeps the 8 KB AMX tile-data register state out of a process until the
process asks for it with ``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)``; a tile
instruction executed before that kills the process with SIGILL. ``request_amx`` asks once per
process (the grant covers every thread, present and future) and raises ``AmxUnavailable`` with
the reason when the kernel refuses: a CPU without AMX, a kernel older than 5.16, a sandbox
that filters the call, or a thread whose alternate signal stack is too small for the AMX state.
``supported_xfeatures`` reads which extended states the kernel can hand out at all
(``ARCH_GET_XCOMP_SUPP``).

A base-layer module (it imports nothing of ours) because the permission decides what the
``host`` target is: ``targets.host_target`` keeps the AMX features only when
``host_amx_refusal`` says the request was granted, so the AMX schedule rule is never chosen for
a host that would die on its first tile instruction. ``runtime.amx`` asks it again before
loading code that needs AMX. Nothing is asked at import.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import platform

# The kernel's numbers (arch/x86/entry/syscalls/syscall_64.tbl, arch/x86/include/uapi/asm/prctl.h,
# arch/x86/include/asm/fpu/types.h)
SYS_ARCH_PRCTL = 158  # x86-64
ARCH_GET_XCOMP_SUPP = 0x1021
ARCH_GET_XCOMP_PERM = 0x1022
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18

log = logging.getLogger(__name__)


class AmxUnavailable(RuntimeError):
    """This process may not execute AMX tile instructions; the message says why and what to
    do instead (exit status 2, like any artifact this host cannot run). ``errno``: the kernel's
    answer, where it gave one."""

    exit_code = 2

    def __init__(self, message: str, err: int | None = None):
        super().__init__(message)
        self.errno = err


_granted = False


def _libc_syscall():
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.syscall
    fn.restype = ctypes.c_long
    return fn


def _caller(syscall):
    if platform.machine() not in ("x86_64", "AMD64"):
        raise AmxUnavailable(f"AMX needs an x86-64 CPU; this machine is {platform.machine()}")
    return syscall or _libc_syscall()


_L = ctypes.c_long  # syscall(2) takes longs: no 32-bit variadic ints


def supported_xfeatures(syscall=None) -> int:
    """The mask of extended CPU states (XFEATURE bits) the kernel can give this process:
    ``arch_prctl(ARCH_GET_XCOMP_SUPP)``; bit ``XFEATURE_XTILEDATA`` (18) is AMX tile data.
    Raises ``AmxUnavailable`` when the kernel cannot answer (EINVAL: older than 5.16).
    ``syscall``: a stand-in for libc's ``syscall`` (tests)."""
    call = _caller(syscall)
    mask = ctypes.c_uint64(0)
    ctypes.set_errno(0)
    if call(_L(SYS_ARCH_PRCTL), _L(ARCH_GET_XCOMP_SUPP), ctypes.byref(mask)) != 0:
        err = ctypes.get_errno() or errno.EINVAL
        raise AmxUnavailable(_why(err, "ARCH_GET_XCOMP_SUPP", query=True), err)
    return mask.value


_emulated = False  # the tile instructions run on the software executor: never ask


def set_emulated() -> None:
    """From now on this process runs its tile instructions on the software executor
    (``runtime.amx.enable_emulation``, ``--emulate-amx``): ``request_amx`` and
    ``host_amx_refusal`` never ask the kernel, so no tile instruction runs natively (on an
    AMX CPU without the grant each one traps to the executor)."""
    global _emulated
    _emulated = True


def emulated() -> bool:
    return _emulated


def request_amx(syscall=None) -> None:
    """Ask the kernel for the AMX tile-data state once; raise ``AmxUnavailable`` if refused.
    Under ``set_emulated``: nothing to ask. ``syscall``: a stand-in for libc's ``syscall``
    (tests)."""
    global _granted
    if (_granted or _emulated) and syscall is None:
        return
    call = _caller(syscall)
    ctypes.set_errno(0)
    if call(_L(SYS_ARCH_PRCTL), _L(ARCH_REQ_XCOMP_PERM), _L(XFEATURE_XTILEDATA)) != 0:
        err = ctypes.get_errno() or errno.EINVAL
        raise AmxUnavailable(_why(err, "ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA") + _ADVICE, err)
    mask = ctypes.c_uint64(0)
    rc = call(_L(SYS_ARCH_PRCTL), _L(ARCH_GET_XCOMP_PERM), ctypes.byref(mask))
    if rc != 0 or not mask.value & (1 << XFEATURE_XTILEDATA):
        raise AmxUnavailable("the kernel accepted the AMX request but does not report the tile-"
                             f"data permission (mask {mask.value:#x}); AMX kernels cannot run")
    if syscall is None:
        _granted = True


_ADVICE = ("Compile for a target without AMX instead (e.g. `dlrm-tvm compile --target "
           "cooperlake`, whose bf16 GEMMs use vdpbf16ps).")


def _why(err: int, call: str, query: bool = False) -> str:
    what = ("did not say which extended CPU states it supports" if query else
            "refused this process the AMX tile-data state")
    base = (f"the Linux kernel {what} (arch_prctl({call}): {os.strerror(err)}; kernel "
            f"{platform.release()}). ")
    if err == errno.EOPNOTSUPP:
        why = "This CPU (or the virtual machine's view of it) has no AMX. "
    elif err == errno.EINVAL:
        why = ("Either this CPU has no AMX (check the amx_tile flag in /proc/cpuinfo) or the "
               "kernel is older than 5.16 and cannot hand AMX to processes. ")
    elif err in (errno.EPERM, errno.ENOSYS):
        why = "A sandbox or seccomp filter blocks the request. "
    elif err == errno.ENOSPC:
        why = ("A thread of this process has an alternate signal stack (sigaltstack) too small "
               "for a signal frame holding the 8 KB AMX state. Size alternate signal stacks "
               "from getauxval(AT_MINSIGSTKSZ) rather than the constant MINSIGSTKSZ/SIGSTKSZ, "
               "or ask for AMX before such a stack is installed (the faulthandler of older "
               "Pythons, which pytest enables, installs one: try pytest -p no:faulthandler). ")
    else:
        why = ""
    return base + why


_host_answer: tuple[str | None] | None = None  # (None,) granted, (why,) refused; once asked


def host_amx_refusal() -> str | None:
    """None if this process may execute AMX tile instructions, else why not. Asks the kernel on
    the first call only (the answer holds for the process); a refusal is logged once, as a
    warning, since it changes what the host target compiles to. Callers ask only on a CPU that
    reports amx_tile."""
    global _host_answer
    if _emulated:
        return None
    if _host_answer is None:
        try:
            request_amx()
            _host_answer = (None,)
        except AmxUnavailable as e:
            why = str(e).removesuffix(_ADVICE).strip()
            _host_answer = (why,)
            log.warning("AMX left out of the host target (its bf16 GEMMs use vdpbf16ps where "
                        "the CPU has avx512_bf16): %s", why)
    return _host_answer[0]
