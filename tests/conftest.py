"""Test configuration. Ways to run the tests:

  pytest                      the default tier: any x86-64 host; includes the multi-rank tests
                              (``mpi`` marker: they launch ``mpiexec -n 2`` themselves and skip
                              without mpiexec on PATH)
  pytest --runslow            also the slow tier (``slow`` marker: long runs, such as
                              cross-compiling the step for every named target); what .ci/run
                              runs
  pytest -m mpi               only the multi-rank tests
  pytest tests/test_kernels.py -k gemm    one family of kernel tests
  DLRM_TVM_REQUIRE_NATIVE=bf16,amx pytest tests/test_amx.py ...
                              on a host that must run the native tiers (tools/device_amx.sh):
                              a hardware skip of a listed tier fails instead (an error where
                              a skipif mark skips at setup; see below)

DLRM_TVM_TILE_UNIT=emulated pytest tests/test_amx.py -k tile_unit
                              the tile-unit tier on the software executor even on an AMX
                              host (the permission is never asked, so each tile instruction
                              traps to it); test_amx.py runs this itself on AMX hosts

Hardware skips: a test that needs a CPU feature skips elsewhere with a reason naming the missing
/proc/cpuinfo flag as "this CPU has no FLAG" (``skipif(not HOST_HAS_BF16, reason="this CPU has
no avx512_bf16 ...")``, ``pytest.skip(...)`` alike; "no amx_tile/amx_bf16" names both). Native
tiers and their flags: ``bf16`` avx512_bf16 (vdpbf16ps), ``amx`` amx_tile, amx_bf16 (AMX tile
kernels). ``DLRM_TVM_REQUIRE_NATIVE`` (a comma list of tiers) turns such a skip of a listed tier
into a failure whose message keeps the reason, so a run on a host that must have the hardware
cannot pass by skipping it; an unknown tier name stops the run.

Compiled modules are cached per session (``compiled`` fixture): each (model, batch size,
precision, optimizer) is compiled once. TVM's thread pool gets 2 threads unless
``TVM_NUM_THREADS`` is already set (set here before TVM starts).

The real Criteo sample rows are found at ``$DLRM_TVM_CRITEO_SAMPLE`` if set, else beside the
repository, at ``<repo>/../shared/data/criteo_kaggle_sample`` (``CRITEO_SAMPLE``), never at an
absolute path; tests that need them take the ``criteo_sample`` fixture, which skips when they
are absent. The 199 rows are not shipped in tests/: they are Criteo's data, under Criteo's
terms (research use), not this repository's licence.
Tests that only need Criteo-format rows write them with
``dlrm_tvm.data.criteo.write_synthetic_raw``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("TVM_NUM_THREADS", "2")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


NATIVE_TIERS: dict[str, tuple[str, ...]] = {"bf16": ("avx512_bf16",),
                                            "amx": ("amx_tile", "amx_bf16")}


def required_native_tiers(value: str | None) -> tuple[str, ...]:
    """The tiers ``DLRM_TVM_REQUIRE_NATIVE`` lists (``"bf16,amx"``); UsageError on another."""
    tiers = tuple(t.strip() for t in (value or "").split(",") if t.strip())
    unknown = [t for t in tiers if t not in NATIVE_TIERS]
    if unknown:
        raise pytest.UsageError(f"DLRM_TVM_REQUIRE_NATIVE={value}: unknown tier(s) "
                                f"{', '.join(unknown)}; known: {', '.join(NATIVE_TIERS)}")
    return tiers


def native_tier_skipped(reason: str, tiers: tuple[str, ...]) -> str | None:
    """The tier of ``tiers`` whose hardware a skip ``reason`` says is missing, or None."""
    for tier in tiers:
        for flag in NATIVE_TIERS[tier]:
            if re.search(rf"\bno (?:[\w]+/)*{flag}\b", reason):
                return tier
    return None


_REQUIRED = pytest.StashKey[tuple]()


def pytest_configure(config):
    config.stash[_REQUIRED] = required_native_tiers(os.environ.get("DLRM_TVM_REQUIRE_NATIVE"))
    if os.environ.get("DLRM_TVM_TILE_UNIT") == "emulated":
        from dlrm_tvm.runtime.amx import enable_emulation

        # before collection, whose module-level host targets would otherwise ask for AMX:
        # never ask, so every tile instruction traps to the executor
        enable_emulation()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A hardware skip of a required tier becomes a failure (an error where a skipif mark
    skipped the test at setup)."""
    rep = yield
    tiers = item.config.stash.get(_REQUIRED, ())
    if tiers and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        reason = reason.removeprefix("Skipped: ")
        tier = native_tier_skipped(reason, tiers)
        if tier:
            rep.outcome = "failed"
            rep.longrepr = (f"DLRM_TVM_REQUIRE_NATIVE={','.join(tiers)} requires the {tier} "
                            f"tier, but this test skipped for want of its hardware: {reason}")
    return rep


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: use --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _amx_permission():
    """On an AMX host, kernels compiled for the host may use tile instructions: Linux wants the
    process's request first (runtime/amx.py); tests call tvm.compile directly too."""
    from dlrm_tvm.runtime.amx import request_if_host_has_amx

    if os.environ.get("DLRM_TVM_TILE_UNIT") == "emulated":
        from dlrm_tvm.runtime import amx_emulator

        amx_emulator.install()  # again, now in front of pytest's faulthandler
    request_if_host_has_amx()  # (under DLRM_TVM_TILE_UNIT=emulated: asks nothing)


REPO_ROOT = Path(__file__).resolve().parents[1]
CRITEO_SAMPLE = (Path(os.environ["DLRM_TVM_CRITEO_SAMPLE"])
                 if os.environ.get("DLRM_TVM_CRITEO_SAMPLE")
                 else REPO_ROOT.parent / "shared" / "data" / "criteo_kaggle_sample")


@pytest.fixture(scope="session")
def criteo_sample() -> Path:
    """The directory of the real Criteo rows (train.tsv, test.tsv); skips when absent."""
    if not ((CRITEO_SAMPLE / "train.tsv").is_file() and (CRITEO_SAMPLE / "test.tsv").is_file()):
        pytest.skip(f"the real Criteo sample rows are not at {CRITEO_SAMPLE} "
                    f"(../shared/data/criteo_kaggle_sample beside the repository; "
                    f"DLRM_TVM_CRITEO_SAMPLE=DIR points elsewhere)")
    return CRITEO_SAMPLE


_CACHE: dict = {}


@pytest.fixture(scope="session")
def compiled():
    """compiled(cfg) -> (vm, CompileResult), compiled once per (model, batch, precision,
    optimizer)."""
    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.targets import resolve_target

    target = resolve_target("host")

    def get(cfg):
        key = (cfg.model, cfg.train.batch_size, cfg.train.precision, cfg.train.optimizer)
        if key not in _CACHE:
            res = compile_dlrm(cfg, target)
            _CACHE[key] = (load_vm(res.executable), res)
        return _CACHE[key]

    return get
