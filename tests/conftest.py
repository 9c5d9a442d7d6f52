"""Test configuration. Ways to run the tests:

  pytest                      the default tier: any x86-64 host; includes the multi-rank tests
                              (``mpi`` marker: they launch ``mpiexec -n 2`` themselves and skip
                              without mpiexec on PATH)
  pytest --runslow            also the slow tier (``slow`` marker: long runs, such as
                              cross-compiling the step for every named target); what .ci/run
                              runs
  pytest -m mpi               only the multi-rank tests
  pytest tests/test_kernels.py -k gemm    one family of kernel tests

Compiled modules are cached per session (``compiled`` fixture): each (model, batch size,
precision, optimizer) is compiled once. TVM's thread pool gets 2 threads unless
``TVM_NUM_THREADS`` is already set (set here before TVM starts).

The real Criteo sample rows are found beside the repository, at
``<repo>/../shared/data/criteo_kaggle_sample`` (``CRITEO_SAMPLE``), never at an absolute path;
tests that need them take the ``criteo_sample`` fixture, which skips when they are absent.
Tests that only need Criteo-format rows write them with
``dlrm_tvm.data.criteo.write_synthetic_raw``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TVM_NUM_THREADS", "2")


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False, help="run slow tests")


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

    request_if_host_has_amx()


REPO_ROOT = Path(__file__).resolve().parents[1]
CRITEO_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "criteo_kaggle_sample"


@pytest.fixture(scope="session")
def criteo_sample() -> Path:
    """The directory of the real Criteo rows (train.tsv, test.tsv); skips when absent."""
    if not ((CRITEO_SAMPLE / "train.tsv").is_file() and (CRITEO_SAMPLE / "test.tsv").is_file()):
        pytest.skip(f"the real Criteo sample rows are not at {CRITEO_SAMPLE} "
                    f"(../shared/data/criteo_kaggle_sample beside the repository)")
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
