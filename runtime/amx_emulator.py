"""Software AMX: run modules compiled for AMX targets on x86-64 CPUs without AMX.

``install()`` puts a SIGILL handler (``runtime/amx_emulator.c``) in front of the process's
current one. When a tile instruction faults (#UD on a CPU without AMX; on an AMX CPU whose
process never asked for the tile-data permission, the kernel's XFD trap), the handler decodes
it, executes it on the faulting thread's software tile state and resumes after it. Other
illegal instructions are reported on stderr (bytes and address) and passed on to the previous
handler. Instructions, numerics (bit for bit against tdpbf16ps on a Xeon), the faults it
raises, and the limits: the comment at the top of the C file.

The library is compiled on first use with the system C compiler (``$CC``, else ``cc``, ``gcc``
or ``clang``) into ``$XDG_CACHE_HOME/dlrm-tvm`` (default ``~/.cache/dlrm-tvm``), under a name
keyed by a hash of the source and flags, written to a temporary file and renamed into place so
concurrent processes never load a half-written library. Nothing happens at import.

Install it after ``faulthandler.enable()`` (pytest enables it at start): the handler installed
last sees a SIGILL first, and faulthandler would end the process at the first tile instruction.
The entry points below ``install`` (``decode``, ``execute``, ``thread_state``, ``tdpbf16ps``)
call the same C code without signals, for tests.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("amx_emulator.c")
CFLAGS = ("-O2", "-shared", "-fPIC", "-fvisibility=hidden", "-pthread")
GPR_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
FAULT_UD, FAULT_GP = 1, 2


class AmxEmulatorError(RuntimeError):
    """The software AMX library cannot be built or loaded here (exit status 2, like any other
    setting this host cannot honour); the message says why and what to do."""

    exit_code = 2


class AmxFault(Exception):
    """An emulated instruction raised #UD or #GP (``execute`` only; under the signal handler the
    process dies, as on hardware). ``kind`` is "#UD" or "#GP"."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class _Insn(ctypes.Structure):
    _fields_ = [(name, ctypes.c_int32) for name in (
        "op", "length", "treg", "trm", "tvvvv", "has_mem", "base", "index", "scale",
        "rip_relative", "addr32", "seg")] + [("disp", ctypes.c_int64)]


@dataclass(frozen=True)
class Decoded:
    """One AMX instruction as the emulator reads it. Tiles: ``tile`` is ModRM.reg (the
    destination; the source of tilestored), ``tile_a``/``tile_b`` the dot products' ModRM.rm and
    VEX.vvvv (None where absent). ``base``/``index`` are register names or None; ``scale`` is
    the multiplier (1, 2, 4, 8); ``seg`` is "fs", "gs" or None."""

    mnemonic: str
    length: int
    text: str
    tile: int | None
    tile_a: int | None
    tile_b: int | None
    has_mem: bool
    base: str | None
    index: str | None
    scale: int
    disp: int
    rip_relative: bool
    addr32: bool
    seg: str | None


_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "dlrm-tvm"


def find_compiler() -> list[str]:
    """The C compiler command: ``$CC`` if set (it must exist), else cc, gcc or clang."""
    cc = os.environ.get("CC", "").strip()
    candidates = [shlex.split(cc)] if cc else [["cc"], ["gcc"], ["clang"]]
    for cmd in candidates:
        if cmd and shutil.which(cmd[0]):
            return cmd
    where = f"CC={cc!r} is not on PATH" if cc else "none of cc, gcc, clang is on PATH"
    raise AmxEmulatorError(
        f"the software AMX emulator is compiled from C on first use, but no C compiler was "
        f"found ({where}). Install one (e.g. `apt-get install gcc`) or set CC; or compile for a "
        f"target without AMX instead (e.g. --target cooperlake)")


def library_path(source: Path = SOURCE) -> Path:
    """Build the emulator library if this source (and these flags) have not been built yet;
    return its path."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise AmxEmulatorError(f"the software AMX emulator runs on x86-64 Linux only "
                               f"(this is {platform.system()} {platform.machine()})")
    text = source.read_bytes()
    cc = find_compiler()
    key = hashlib.sha256(text + " ".join(CFLAGS).encode()).hexdigest()[:16]
    out = cache_dir() / f"amx_emulator-{key}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=".amx_emulator-", suffix=".so")
    os.close(fd)
    try:
        proc = subprocess.run([*cc, *CFLAGS, "-o", tmp, str(source)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            raise AmxEmulatorError(f"compiling the software AMX emulator failed "
                                   f"({' '.join(cc)} {' '.join(CFLAGS)} {source}):\n"
                                   f"{proc.stderr.strip()}")
        os.replace(tmp, out)  # atomic: another process sees no file or the whole file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def _load() -> ctypes.CDLL:
    global _lib
    with _lock:
        if _lib is None:
            path = library_path()
            try:
                lib = ctypes.CDLL(str(path))
            except OSError as e:
                raise AmxEmulatorError(f"cannot load the software AMX emulator {path}: {e}") \
                    from e
            u64p, i32 = ctypes.POINTER(ctypes.c_uint64), ctypes.c_int
            lib.dlrm_amx_emu_decode.argtypes = [ctypes.c_char_p, i32, ctypes.POINTER(_Insn)]
            lib.dlrm_amx_emu_format.argtypes = [ctypes.POINTER(_Insn), ctypes.c_char_p, i32]
            lib.dlrm_amx_emu_exec.argtypes = [ctypes.c_char_p, i32, u64p, ctypes.c_char_p, i32]
            lib.dlrm_amx_emu_state.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
            lib.dlrm_amx_emu_state.restype = None
            lib.dlrm_amx_emu_tdpbf16ps.argtypes = [ctypes.c_void_p] * 3 + [i32] * 3
            lib.dlrm_amx_emu_tdpbf16ps.restype = None
            lib.dlrm_amx_emu_mnemonic.restype = ctypes.c_char_p
            lib.dlrm_amx_emu_decode_reason.restype = ctypes.c_char_p
            lib.dlrm_amx_emu_counts.argtypes = [u64p]
            lib.dlrm_amx_emu_counts.restype = None
            lib.dlrm_amx_emu_reset_counts.restype = None
            _lib = lib
        return _lib


def install() -> None:
    """Install the SIGILL handler, process-wide (idempotent)."""
    rc = _load().dlrm_amx_emu_install()
    if rc:
        raise AmxEmulatorError(f"cannot install the SIGILL handler: {os.strerror(rc)}")


def installed() -> bool:
    """Whether the emulator's handler is the process's SIGILL handler now (False before
    ``install`` and after another handler replaced it)."""
    return _lib is not None and bool(_lib.dlrm_amx_emu_installed())


def mnemonics() -> list[str]:
    lib = _load()
    return [lib.dlrm_amx_emu_mnemonic(k).decode() for k in range(lib.dlrm_amx_emu_nops())]


def counts() -> dict[str, int]:
    """Instructions executed so far, per mnemonic, all threads (signal path and ``execute``).
    On an AMX CPU without the permission, LDTILECFG, STTILECFG and TILERELEASE run natively
    and are not counted."""
    lib = _load()
    names = mnemonics()
    out = (ctypes.c_uint64 * len(names))()
    lib.dlrm_amx_emu_counts(out)
    return dict(zip(names, out, strict=True))


def reset_counts() -> None:
    _load().dlrm_amx_emu_reset_counts()


def decode(code: bytes) -> Decoded | None:
    """The AMX instruction at the start of ``code``, or None if it is not one the emulator
    executes (``decode_error`` says why)."""
    lib = _load()
    d = _Insn()
    if lib.dlrm_amx_emu_decode(bytes(code), len(code), ctypes.byref(d)) < 0:
        return None
    text = ctypes.create_string_buffer(128)
    lib.dlrm_amx_emu_format(ctypes.byref(d), text, len(text))

    def opt(v):
        return None if v < 0 else v

    return Decoded(
        mnemonic=lib.dlrm_amx_emu_mnemonic(d.op).decode(), length=d.length,
        text=text.value.decode(), tile=opt(d.treg), tile_a=opt(d.trm), tile_b=opt(d.tvvvv),
        has_mem=bool(d.has_mem), base=None if d.base < 0 else GPR_NAMES[d.base],
        index=None if d.index < 0 else GPR_NAMES[d.index], scale=1 << d.scale, disp=d.disp,
        rip_relative=bool(d.rip_relative), addr32=bool(d.addr32),
        seg={0x64: "fs", 0x65: "gs"}.get(d.seg))


def decode_error(code: bytes) -> str | None:
    """Why ``decode(code)`` is None (None if it decodes)."""
    lib = _load()
    rc = lib.dlrm_amx_emu_decode(bytes(code), len(code), ctypes.byref(_Insn()))
    return None if rc >= 0 else lib.dlrm_amx_emu_decode_reason(rc).decode()


def execute(code: bytes, regs: dict[str, int] | None = None, rip: int = 0) -> int:
    """Execute one instruction on the calling thread's software tile state, without signals.
    ``regs``: GPR values by name (missing ones are 0); ``rip``: the instruction's address (for
    RIP-relative operands). Returns the address after it; raises ``AmxFault`` on #UD/#GP and
    ValueError if ``code`` is not an AMX instruction."""
    lib = _load()
    regs = regs or {}
    unknown = set(regs) - set(GPR_NAMES)
    if unknown:
        raise ValueError(f"unknown registers {sorted(unknown)}")
    arr = (ctypes.c_uint64 * 17)(*[regs.get(n, 0) % (1 << 64) for n in GPR_NAMES], rip)
    msg = ctypes.create_string_buffer(256)
    rc = lib.dlrm_amx_emu_exec(bytes(code), len(code), arr, msg, len(msg))
    if rc == FAULT_UD or rc == FAULT_GP:
        raise AmxFault("#UD" if rc == FAULT_UD else "#GP", msg.value.decode())
    if rc != 0:
        raise ValueError(f"not an AMX instruction the emulator executes: {msg.value.decode()}")
    return arr[16]


def thread_state() -> tuple[bytes, np.ndarray]:
    """The calling thread's software tile state: the 64-byte TILECFG (zeros when not
    configured) and the tiles as uint8 [8, 16, 64]."""
    cfg = ctypes.create_string_buffer(64)
    tiles = ctypes.create_string_buffer(8 * 16 * 64)
    _load().dlrm_amx_emu_state(cfg, tiles)
    return cfg.raw, np.frombuffer(tiles.raw, np.uint8).reshape(8, 16, 64).copy()


def tdpbf16ps(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The emulator's TDPBF16PS arithmetic without tiles or shape limits: ``c`` [M, N] float32
    plus ``a`` [M, 2K] bf16 (as uint16 bits) times ``b`` [K, 2N] (bf16 pairs, VNNI-2 layout);
    returns a new float32 array."""
    a = np.ascontiguousarray(a).view(np.uint16)
    b = np.ascontiguousarray(b).view(np.uint16)
    out = np.array(c, dtype=np.float32, order="C", copy=True)
    m, n = out.shape
    if a.shape[0] != m or a.shape[1] % 2 or b.shape != (a.shape[1] // 2, 2 * n):
        raise ValueError(f"shapes do not fit: c {out.shape}, a {a.shape}, b {b.shape}")
    _load().dlrm_amx_emu_tdpbf16ps(out.ctypes.data, a.ctypes.data, b.ctypes.data, m,
                                   a.shape[1] // 2, n)
    return out
