"""The Linux AMX permission (dlrm_tvm/targets.py, runtime/amx.py), what it decides for the
host target, and the device run's verdict (tools/amx_verdict.py).

* the request and the queries use the kernel's own numbers, written out here (arch_prctl is
  syscall 158 on x86-64; ARCH_GET_XCOMP_SUPP 0x1021, ARCH_GET_XCOMP_PERM 0x1022,
  ARCH_REQ_XCOMP_PERM 0x1023; XFEATURE_XTILEDATA 18), on a stand-in for syscall(2) and for
  real: the supported-features mask agrees with the host's amx_tile flag;
* a grant, each refusal with its reason (ENOSPC: a sigaltstack too small), a grant without the
  tile bit; on a host without AMX the real request is refused, on one with AMX granted;
* the host target keeps AMX only where the request is granted (host flags and the kernel's
  answer stood in for, so on any host): refused, the AMX rule is never chosen and one warning
  says why; a named AMX target keeps AMX;
* the verdict fails a pytest log with failures, errors, too few passes or skipped native tests.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dlrm_tvm.runtime import amx

from dlrm_tvm import targets as amx_permission
from dlrm_tvm import targets as targets_mod
from dlrm_tvm.config import PRESETS
from dlrm_tvm.targets import host_cpu_flags, resolve_target

HOST_HAS_AMX = {"amx_tile", "amx_bf16"} <= host_cpu_flags()
AMX_RULE = "gemm_vnni_amx_bf16"

# The Linux kernel's numbers, copied from its sources, never from the module under test.
NR_ARCH_PRCTL = 158  # arch/x86/entry/syscalls/syscall_64.tbl
GET_XCOMP_SUPP, GET_XCOMP_PERM, REQ_XCOMP_PERM = 0x1021, 0x1022, 0x1023  # uapi/asm/prctl.h
XTILEDATA = 18  # arch/x86/include/asm/fpu/types.h: XFEATURE_XTILE_DATA


class _FakeSyscall:
    """Stands in for libc's syscall(2), answering only the kernel's real numbers: the request
    with ``req`` (0 or an errno), the queries with ``mask`` (or ``query_err``); any other number
    is ENOSYS/EINVAL, as the kernel would answer."""

    def __init__(self, req=0, mask=1 << XTILEDATA, query_err=0):
        self.req, self.mask, self.query_err, self.calls = req, mask, query_err, []

    def _fail(self, err):
        ctypes.set_errno(err)
        return -1

    def __call__(self, nr, code, arg):
        self.calls.append((nr.value, code.value))
        if nr.value != NR_ARCH_PRCTL:
            return self._fail(errno.ENOSYS)
        if code.value == REQ_XCOMP_PERM:
            if arg.value != XTILEDATA:
                return self._fail(errno.EINVAL)
            return self._fail(self.req) if self.req else 0
        if code.value in (GET_XCOMP_SUPP, GET_XCOMP_PERM):
            if self.query_err:
                return self._fail(self.query_err)
            ctypes.cast(arg, ctypes.POINTER(ctypes.c_uint64))[0] = self.mask
            return 0
        return self._fail(errno.EINVAL)


# ---------------------------------------------------------------- the request and the queries

def test_permission_granted():
    fake = _FakeSyscall()
    amx.request_amx(fake)
    assert fake.calls == [(158, 0x1023), (158, 0x1022)]


def test_runtime_amx_is_the_base_layers_permission():
    assert amx.request_amx is amx_permission.request_amx
    assert amx.AmxUnavailable is amx_permission.AmxUnavailable
    assert (amx.SYS_ARCH_PRCTL, amx.ARCH_GET_XCOMP_SUPP, amx.ARCH_GET_XCOMP_PERM,
            amx.ARCH_REQ_XCOMP_PERM, amx.XFEATURE_XTILEDATA) == (158, 0x1021, 0x1022, 0x1023, 18)


@pytest.mark.parametrize("err,says", [(errno.EOPNOTSUPP, "has no AMX"),
                                      (errno.EINVAL, "older than 5.16"),
                                      (errno.EPERM, "seccomp"),
                                      (errno.ENOSPC, "sigaltstack")])
def test_permission_refused_says_why(err, says):
    with pytest.raises(amx.AmxUnavailable, match=says) as e:
        amx.request_amx(_FakeSyscall(req=err))
    assert "--target cooperlake" in str(e.value) and e.value.exit_code == 2
    assert e.value.errno == err


def test_enospc_says_how_to_size_the_signal_stack():
    with pytest.raises(amx.AmxUnavailable) as e:
        amx.request_amx(_FakeSyscall(req=errno.ENOSPC))
    msg = str(e.value)
    assert "too small" in msg and "AT_MINSIGSTKSZ" in msg and "faulthandler" in msg
    assert "has no AMX" not in msg and "seccomp" not in msg


def test_permission_without_the_tile_bit_is_refused():
    with pytest.raises(amx.AmxUnavailable, match="does not report"):
        amx.request_amx(_FakeSyscall(mask=1 << 17))


def test_supported_xfeatures_query():
    fake = _FakeSyscall(mask=(1 << XTILEDATA) | (1 << 17) | 0b111)
    assert amx.supported_xfeatures(fake) == (1 << 18) | (1 << 17) | 0b111
    assert fake.calls == [(158, 0x1021)]
    with pytest.raises(amx.AmxUnavailable, match="older than 5.16") as e:
        amx.supported_xfeatures(_FakeSyscall(query_err=errno.EINVAL))
    assert e.value.errno == errno.EINVAL


def _kernel_version() -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", platform.release())
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def test_supported_xfeatures_agree_with_the_amx_flag():
    """For real: the kernel's supported-features mask has the tile-data bit exactly where
    /proc/cpuinfo reports amx_tile. Linux 5.16 and later answer the query; an older kernel
    does not know it and gives arch_prctl's documented answer to an unknown code, EINVAL."""
    try:
        mask = amx.supported_xfeatures()
    except amx.AmxUnavailable as e:
        assert _kernel_version() < (5, 16), f"kernel {platform.release()} must answer: {e}"
        assert e.errno == errno.EINVAL and "older than 5.16" in str(e), e
        return
    assert mask & 0b11 == 0b11  # x87 and SSE: every x86-64 kernel supports them
    assert bool(mask >> 18 & 1) == ("amx_tile" in host_cpu_flags()), hex(mask)


@pytest.mark.skipif(HOST_HAS_AMX, reason="this host has AMX")
def test_real_request_refused_on_this_host():
    with pytest.raises(amx.AmxUnavailable, match="AMX"):
        amx.request_amx()
    from dlrm_tvm.pipeline import load_vm

    with pytest.raises(amx.AmxUnavailable):
        load_vm(None, needs_amx=True)  # refused before the VM is made


@pytest.mark.skipif(not HOST_HAS_AMX, reason="this CPU has no amx_tile/amx_bf16 "
                    "(run tools/device_amx.sh on an AMX Xeon)")
def test_real_request_granted():
    amx.request_amx()
    mask = ctypes.c_uint64(0)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    L = ctypes.c_long
    assert libc.syscall(L(158), L(0x1022), ctypes.byref(mask)) == 0
    assert mask.value >> 18 & 1


# ---------------------------------------------------------------- the host target

SPR_FLAGS = set(resolve_target("sapphirerapids").required_cpu_flags)


@pytest.fixture
def amx_host(monkeypatch):
    """A host whose /proc/cpuinfo reads as a Sapphire Rapids' and whose kernel answers the AMX
    request with ``answer(errno or 0)``: a fresh process (nothing asked or granted yet)."""

    def answer(err):
        fake = _FakeSyscall(req=err)
        monkeypatch.setattr(targets_mod, "host_cpu_flags", lambda: set(SPR_FLAGS))
        monkeypatch.setattr(amx, "host_cpu_flags", lambda: set(SPR_FLAGS))
        monkeypatch.setattr(amx_permission, "_libc_syscall", lambda: fake)
        monkeypatch.setattr(amx_permission, "_granted", False)
        monkeypatch.setattr(amx_permission, "_host_answer", None)
        return fake

    return answer


def _bf16_cfg():
    base = PRESETS["dcnv2-tiny"]  # widened to 32-multiples: most GEMMs fit an AMX block
    model = dataclasses.replace(base.model, embedding_dim=32, mlp_bot=(13, 64, 32))
    return base.replace(model=model, train=dataclasses.replace(base.train, precision="bf16"))


def test_host_refused_amx_falls_to_vdpbf16ps_with_one_warning(amx_host, caplog):
    from dlrm_tvm.schedules import rules_for

    from dlrm_tvm.kernels import list_kernels

    fake = amx_host(errno.EPERM)
    with caplog.at_level(logging.WARNING):
        ti = resolve_target("host")
        assert not {"amx-tile", "amx-bf16", "amx-int8"} & set(ti.features)
        assert "avx512bf16" in ti.features  # the rest of the host is kept
        assert not any(f.startswith("amx_") for f in ti.required_cpu_flags)
        tgt = ti.tvm_target()
        assert not amx.needs_amx(tgt)
        assert AMX_RULE not in [r.name for r in rules_for(tgt)]
        listed = list_kernels(_bf16_cfg(), "host")
        assert not amx.request_if_host_has_amx()
    assert fake.calls == [(158, 0x1023)]  # asked once, for the whole process
    assert AMX_RULE not in listed["rule_order"]
    chosen = [k["chosen"] for k in listed["kernels"] if k["op"] == "gemm_vnni"]
    assert AMX_RULE not in chosen and "gemm_vnni_avx512_dpbf16ps" in chosen, chosen
    warned = [r for r in caplog.records
              if r.levelno >= logging.WARNING and "AMX" in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in warned]
    msg = warned[0].getMessage()
    assert "AMX left out of the host target" in msg and "seccomp" in msg
    assert "vdpbf16ps" in msg and "Operation not permitted" in msg


def test_host_granted_amx_keeps_the_amx_rule(amx_host, caplog):
    from dlrm_tvm.kernels import list_kernels

    fake = amx_host(0)
    with caplog.at_level(logging.WARNING):
        ti = resolve_target("host")
        listed = list_kernels(_bf16_cfg(), "host")
    assert fake.calls == [(158, 0x1023), (158, 0x1022)]
    assert {"amx-tile", "amx-bf16"} <= set(ti.features)
    assert amx.needs_amx(ti.tvm_target()) and amx.request_if_host_has_amx()
    assert listed["rule_order"][0] == AMX_RULE
    chosen = [k["chosen"] for k in listed["kernels"] if k["op"] == "gemm_vnni"]
    assert chosen.count(AMX_RULE) >= 8, chosen
    assert not [r for r in caplog.records
                if r.levelno >= logging.WARNING and "AMX" in r.getMessage()]


def test_host_emulating_amx_keeps_it_without_asking(amx_host):
    fake = amx_host(errno.EPERM)
    ti = resolve_target("host", emulate_amx=True)
    assert {"amx-tile", "amx-bf16"} <= set(ti.features)
    assert fake.calls == []


def test_host_without_the_amx_flag_asks_nothing(amx_host, monkeypatch):
    fake = amx_host(0)
    flags = SPR_FLAGS - {"amx_tile", "amx_bf16", "amx_int8"}
    monkeypatch.setattr(targets_mod, "host_cpu_flags", lambda: set(flags))
    monkeypatch.setattr(amx, "host_cpu_flags", lambda: set(flags))
    assert "amx-tile" not in resolve_target("host").features
    assert not amx.request_if_host_has_amx()
    assert fake.calls == []


def test_named_amx_target_keeps_amx_when_the_host_is_refused(amx_host):
    fake = amx_host(errno.EPERM)
    ti = resolve_target("sapphirerapids")
    assert {"amx-tile", "amx-bf16"} <= set(ti.features)
    assert fake.calls == []  # refused at load instead (AmxUnavailable), not here


# ---------------------------------------------------------------- the verdict

TOOL = Path(__file__).resolve().parents[1] / "tools" / "amx_verdict.py"


def _sweep():
    rows = [{"kernel": "gemm_vnni_fwd_2048x512x256_bias_relu", "shape": [2048, 512, 256],
             "rule": AMX_RULE, "status": "ok", "gflops": 3000.0, "frac_peak": 0.75,
             "torch_fp32_gflops": 900.0, "torch_bf16_gflops": 2500.0, "x_best_torch": 1.2}]
    return {"config": "mlperf", "precision": "bf16", "target": "host", "threads": 16,
            "fp32_peak_gflops": 400.0, "bf16_peak_gflops": 800.0,
            "amx_bf16_peak_gflops": 4000.0, "copy_gbs": 100.0, "rows": rows, "packs": []}


def _verdict(d: Path):
    run = subprocess.run([sys.executable, str(TOOL), str(d)], capture_output=True, text=True)
    assert "Traceback" not in run.stderr, run.stderr
    return run


def test_amx_verdict_reads_the_device_outputs(tmp_path):
    (tmp_path / "pytest-amx.log").write_text("61 passed in 30.0s\n")
    (tmp_path / "gemms-mlperf-amx.json").write_text(json.dumps(_sweep()))
    bench = {"threads": 16, "rows": [{"name": "dlrm-tvm bf16", "ms_per_step": 40.0},
                                     {"name": "torch.compile bf16", "ms_per_step": 46.8}]}
    (tmp_path / "bench-mlperf-amx.json").write_text(json.dumps(bench))
    run = _verdict(tmp_path)
    assert run.returncode == 0, run.stdout
    assert "PASS  native AMX tests" in run.stdout
    assert "PASS  mlperf bf16 at 16 threads ahead" in run.stdout
    assert "1 of 1" in run.stdout and "1.20x torch bf16" in run.stdout
    bench["rows"][0]["ms_per_step"] = 50.0
    (tmp_path / "bench-mlperf-amx.json").write_text(json.dumps(bench))
    run = _verdict(tmp_path)
    assert run.returncode == 1 and "MISS  mlperf bf16" in run.stdout


NATIVE_SKIPS = ("SKIPPED [1] tests/test_amx.py:256: this host has AMX\n"
                "SKIPPED [1] tests/test_amx_permission.py:140: this host has AMX\n")


@pytest.mark.parametrize("log,why", [
    ("30 passed, 2 skipped, 29 errors in 40.2s\n", "failures or errors"),
    ("====== 1 failed, 70 passed in 40.2s ======\n", "failures or errors"),
    ("70 passed, 1 error in 40.2s\n", "failures or errors"),
    ("59 passed in 40.2s\n", "fewer than the 60 expected passed"),
    ("..........\n", "no pytest summary line"),  # cut off by the step's time limit
    ("no tests ran in 0.1s\n", "no pytest summary line"),
    ("63 passed, 2 skipped in 55.1s\n", "skips without their reasons"),
    ("SKIPPED [16] tests/test_amx.py:290: this CPU has no amx_tile/amx_bf16 (run tools/...)\n"
     "SKIPPED [1] tests/test_amx.py:312: kernels tune times the vdpbf16ps kernels: this CPU "
     "has no avx512_bf16\n61 passed, 17 skipped in 30.0s\n", "native tests skipped"),
])
def test_amx_verdict_misses_a_failed_or_short_native_run(tmp_path, log, why):
    (tmp_path / "pytest-amx.log").write_text(log)
    run = _verdict(tmp_path)
    assert run.returncode == 1, run.stdout
    line = run.stdout.splitlines()[0]
    assert line.startswith("MISS  native AMX tests") and why in line, line


def test_amx_verdict_passes_a_full_native_run(tmp_path):
    (tmp_path / "pytest-amx.log").write_text(
        "....s...\n=========================== short test summary info ==================\n"
        + NATIVE_SKIPS + "70 passed, 2 skipped, 1 warning in 55.13s\n")
    run = _verdict(tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("PASS  native AMX tests"), run.stdout
    assert "70 passed, 0 failed, 0 errors, 2 skipped" in run.stdout


# tools/device_amx.sh's pytest-amx.log from this AMX Xeon (2026-12-08), verbatim
NATIVE_RUN_LOG = """\
.......................................s.....s...................        [100%]
=========================== short test summary info ============================
SKIPPED [1] tests/test_amx.py:256: this host has AMX
SKIPPED [1] tests/test_amx.py:308: this host has AMX
63 passed, 2 skipped in 55.13s
"""


def test_amx_verdict_passes_the_native_run_of_an_amx_host(tmp_path):
    (tmp_path / "pytest-amx.log").write_text(NATIVE_RUN_LOG)
    run = _verdict(tmp_path)
    assert run.returncode == 0 and run.stdout.startswith("PASS  native AMX tests"), run.stdout
    assert "63 passed, 0 failed, 0 errors, 2 skipped" in run.stdout
