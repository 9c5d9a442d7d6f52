"""DLRM_TVM_REQUIRE_NATIVE (tests/conftest.py): on a host that must run the native tiers, a
hardware skip of a listed tier fails; other skips, and every skip without the variable, stay
skips. Run as a separate pytest on a generated test file beside a copy of our conftest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GENERATED = '''
import pytest


@pytest.mark.skipif(True, reason="this CPU has no amx_tile/amx_bf16 (run tools/device_amx.sh)")
def test_amx_mark():
    pass


@pytest.mark.skipif(True, reason="this CPU has no avx512_bf16 (vdpbf16ps)")
def test_bf16_mark():
    pass


def test_bf16_inline():
    pytest.skip("this CPU has no avx512_bf16: no bf16 microkernel GEMM to tune")


@pytest.mark.skipif(True, reason="this host has AMX")
def test_host_has_amx():
    pass


@pytest.mark.skipif(True, reason="no mpiexec on PATH")
def test_no_mpiexec():
    pass


@pytest.mark.xfail(reason="this CPU has no amx_tile", run=False)
def test_expected_failure():
    pass


def test_plain():
    pass
'''


def _run(tmp_path: Path, require: str | None):
    shutil.copy(Path(__file__).with_name("conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_generated.py").write_text(GENERATED)
    env = {k: v for k, v in os.environ.items() if k != "DLRM_TVM_REQUIRE_NATIVE"}
    if require is not None:
        env["DLRM_TVM_REQUIRE_NATIVE"] = require
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                          "test_generated.py"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    outcomes = {}
    for line in run.stdout.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL"):
            name = rest.split("::")[-1].split(" ")[0] if "::" in rest else rest.split(":")[-1]
            outcomes[name.strip()] = word
    return run, outcomes


def test_without_the_variable_hardware_skips_stay_skips(tmp_path):
    run, _ = _run(tmp_path, None)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed, 5 skipped, 1 xfailed" in run.stdout, run.stdout


def test_required_amx_fails_only_the_amx_skip(tmp_path):
    run, out = _run(tmp_path, "amx")
    assert run.returncode == 1, run.stdout + run.stderr
    assert out["test_amx_mark"] == "ERROR", out  # a skipif mark skips at setup
    assert "DLRM_TVM_REQUIRE_NATIVE=amx requires the amx tier" in run.stdout
    assert "no amx_tile/amx_bf16 (run tools/device_amx.sh)" in run.stdout
    assert "1 passed, 4 skipped, 1 xfailed, 1 error" in run.stdout, run.stdout


def test_required_bf16_and_amx_fail_every_hardware_skip(tmp_path):
    run, out = _run(tmp_path, "bf16, amx")
    assert run.returncode == 1, run.stdout + run.stderr
    assert out["test_amx_mark"] == "ERROR" and out["test_bf16_mark"] == "ERROR", out
    assert out["test_bf16_inline"] == "FAILED", out
    assert "1 failed, 1 passed, 2 skipped, 1 xfailed, 2 errors" in run.stdout, run.stdout
    # skips that are not for want of the hardware, and expected failures, are left alone
    assert "this host has AMX" in run.stdout and "no mpiexec on PATH" in run.stdout


def test_an_unknown_tier_stops_the_run(tmp_path):
    run, _ = _run(tmp_path, "bf16,avx")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.stdout + run.stderr
    assert "unknown tier(s) avx" in run.stderr and "known: bf16, amx" in run.stderr
