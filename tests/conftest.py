"""Test configuration. Ways to run the tests:

  pytest                      the default tier: fast, any x86-64 host (what .ci/run runs)
  pytest --runslow            also the slow tier (bigger configs, longer runs)
  pytest -m mpi               the multi-rank tier (launches mpiexec itself; run by .ci/run)
  pytest tests/test_kernels.py -k gemm    one family of kernel tests

Compiled modules are cached per session (``compiled`` fixture), so each config variant is
compiled once. TVM's thread pool is fixed to 2 threads before TVM starts.
"""

from __future__ import annotations

import os

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


_CACHE: dict = {}


@pytest.fixture(scope="session")
def compiled():
    """compiled(cfg) -> (vm, CompileResult), compiled once per (model, batch, precision, optimizer)."""
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
