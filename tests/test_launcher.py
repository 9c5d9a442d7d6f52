"""Who launched this process, and how many ranks the run has (runtime/comm.py's
``detect_launch`` / ``check_launch`` / ``launched_ranks``, runtime/mpi.py's core layout).

Unit tests read fabricated launcher environments. The subprocess tests start
``python -m dlrm_tvm train`` themselves: with only Slurm/PMIx variables set and no mpiexec, each
task must refuse (exit 2) and nothing may be trained into the run directory; under hydra's
``mpiexec -pmi-port -n 2`` (no PMI_SIZE, PMI_RANK or MPI_LOCALNRANKS in the ranks' environment)
the ranks must still train as one 2-rank run, the size coming from MPI (``mpi`` marker).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys

import pytest
from dlrm_tvm.runtime.comm import (
    PMIX,
    SLURM,
    LaunchError,
    check_launch,
    detect_launch,
    pmix_unsupported,
)
from dlrm_tvm.runtime.mpi import cpu_topology, parse_cpulist, split_cores

from dlrm_tvm.config import ConfigError

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH")
LAUNCH_PREFIXES = ("SLURM_", "PMIX_", "PMI_", "OMPI_", "HYDI_", "MPI_LOCAL", "MV2_", "JSM_",
                   "PALS_")
HYDRA = "MPICH/Intel MPI hydra (mpiexec)"
PMI = "PMI-1/PMI-2 (hydra mpiexec, srun --mpi=pmi2)"
OPENMPI = "Open MPI (mpirun)"
MPICH_WHEEL = ("MPICH Version:      5.0.2\nMPICH Release date: Fri Sep 25 2026\nMPICH Device: "
               "ch4:ucx ofi\nMPICH configure:    --with-device=ch4:ucx,ofi "
               "--with-pm=hydra:gforker\n")


def _clean_env() -> dict[str, str]:
    """This process's environment without any launcher's variables (pytest itself may run
    inside an srun step or under mpiexec)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_PREFIXES)}
    env.pop("TVM_NUM_THREADS", None)
    return env


@pytest.fixture
def no_launcher(monkeypatch):
    for k in list(os.environ):
        if k.startswith(LAUNCH_PREFIXES):
            monkeypatch.delenv(k)
    return monkeypatch


# ------------------------------------------------------------------ detection
def test_no_launcher_variable_is_a_plain_run(no_launcher):
    assert detect_launch() is None
    # a plain sbatch script or salloc shell: the allocation's counts, no srun step
    for k, v in {"SLURM_JOB_ID": "42", "SLURM_NTASKS": "4", "SLURM_NPROCS": "4",
                 "SLURM_PROCID": "0", "SLURM_NNODES": "2", "SLURM_TASKS_PER_NODE": "2(x2)",
                 "PMIX_MCA_gds": "hash"}.items():  # a PMIx setting from a module file
        no_launcher.setenv(k, v)
    assert detect_launch() is None


ENVS = {
    # mpiexec -n 2 of the mpich wheel (hydra, PMI-1 over an inherited fd), as measured here
    "hydra": ({"HYDI_CONTROL_FD": "7", "MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "1",
               "PMI_FD": "11", "PMI_HOSTNAME": "vm", "PMI_RANK": "1", "PMI_SIZE": "2"},
              (HYDRA, PMI), 2, 1),
    # mpiexec -pmi-port -n 2 (measured here): no PMI_SIZE, no PMI_RANK
    "hydra -pmi-port": ({"HYDI_CONTROL_FD": "7", "MPI_LOCALNRANKS": "2", "MPI_LOCALRANKID": "1",
                         "PMI_ID": "1", "PMI_PORT": "vm:42467"}, (HYDRA, PMI), 2, 1),
    "hydra -pmi-port, no local count": ({"HYDI_CONTROL_FD": "7", "PMI_ID": "1",
                                         "PMI_PORT": "vm:1"}, (HYDRA, PMI), None, 1),
    # Intel MPI's hydra over 2 nodes x 2 ranks
    "intel mpi": ({"PMI_RANK": "3", "PMI_SIZE": "4", "PMI_FD": "9", "MPI_LOCALNRANKS": "2",
                   "MPI_LOCALRANKID": "1", "I_MPI_ROOT": "/opt/intel/mpi"}, (HYDRA, PMI), 4, 3),
    # Open MPI's mpirun -np 4 (its runtime is a PMIx server too)
    "open mpi": ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2",
                  "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
                  "PMIX_RANK": "2", "PMIX_NAMESPACE": "prterun-a-1@1",
                  "PMIX_SERVER_URI41": "prterun-a-1@0.0;tcp4://127.0.0.1:5"},
                 (OPENMPI, PMIX), 4, 2),
    # srun --mpi=pmix -n 4 inside an allocation of 4 tasks
    "srun --mpi=pmix": ({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "4", "SLURM_STEP_ID": "0",
                         "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
                         "PMIX_RANK": "3", "PMIX_NAMESPACE": "slurm.pmix.42.0",
                         "PMIX_SERVER_URI2": "pmix-server.1;tcp4://10.0.0.1:5"},
                        (PMIX, SLURM), 4, 3),
    "srun --mpi=pmi2": ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
                         "PMI_FD": "5", "PMI_RANK": "3", "PMI_SIZE": "4", "PMI_JOBID": "42.0"},
                        (PMI, SLURM), 4, 3),
    "srun --mpi=none": ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3",
                         "SLURM_NTASKS": "4"}, (SLURM,), 4, 3),
    # MPICH's mpiexec -n 1 inside a 2-node Slurm job: hydra's proxies were started by srun,
    # so the rank inherits the proxies' step (2 tasks); hydra's own claim (1 rank) wins
    "hydra -n 1 under slurm": ({"SLURM_STEP_ID": "1", "SLURM_STEP_NUM_TASKS": "2",
                                "SLURM_PROCID": "1", "HYDI_CONTROL_FD": "7", "PMI_FD": "9",
                                "PMI_RANK": "0", "PMI_SIZE": "1", "MPI_LOCALNRANKS": "1"},
                               (HYDRA, PMI, SLURM), 1, 0),
    "mvapich": ({"MV2_COMM_WORLD_SIZE": "8", "MV2_COMM_WORLD_RANK": "5"},
                ("MVAPICH (mpirun_rsh)",), 8, 5),
    "jsrun": ({"JSM_NAMESPACE_SIZE": "6", "JSM_NAMESPACE_RANK": "0"}, ("IBM jsrun",), 6, 0),
    "pals": ({"PALS_RANKID": "2", "PALS_APID": "x"}, ("HPE Cray PALS",), None, 2),
}


@pytest.mark.parametrize("name", list(ENVS))
def test_each_launcher_is_named_with_its_claims(no_launcher, name):
    env, launchers, size, rank = ENVS[name]
    for k, v in env.items():
        no_launcher.setenv(k, v)
    launch = detect_launch()
    assert launch is not None
    assert launch.launchers == launchers
    assert (launch.size, launch.rank) == (size, rank)
    seen = dict(launch.env)
    assert "I_MPI_ROOT" not in seen and "SLURM_JOB_ID" not in seen  # only launcher variables
    for k, v in env.items():
        if k not in ("I_MPI_ROOT", "SLURM_JOB_ID", "SLURM_NTASKS", "PMI_HOSTNAME"):
            assert seen[k] == v
    assert detect_launch(env) == launch  # an explicit mapping reads the same


def test_slurm_procid_counts_only_inside_an_srun_step():
    launch = detect_launch({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "PMIX_RANK": "1",
                            "PMIX_NAMESPACE": "x"})
    assert launch.launchers == (PMIX,) and launch.rank == 1 and launch.size is None
    assert "SLURM_PROCID" not in dict(launch.env)


# ------------------------------------------------------------------ the decision
def test_a_world_of_one_under_a_launcher_of_several_tasks_is_refused():
    launch = detect_launch(ENVS["srun --mpi=none"][0])
    with pytest.raises(LaunchError) as e:
        check_launch(launch, 1, MPICH_WHEEL)
    msg = str(e.value)
    assert isinstance(e.value, ConfigError)  # the CLI's exit status 2
    for want in ("refusing to start", SLURM, "SLURM_STEP_NUM_TASKS=4", "SLURM_PROCID=3",
                 "one of 4 tasks", "a world of 1 rank", "MPICH Version: 5.0.2",
                 "same run directory", "Nothing was written", "mpiexec -n 4",
                 "srun --mpi=pmix", "--mpi=pmi2", "docs/cluster.md"):
        assert want in msg, (want, msg)
    assert e.value.quiet  # task 3: only the task claiming rank 0 prints it
    launch0 = detect_launch({**ENVS["srun --mpi=none"][0], "SLURM_PROCID": "0"})
    with pytest.raises(LaunchError) as e0:
        check_launch(launch0, 1, MPICH_WHEEL)
    assert not e0.value.quiet


@pytest.mark.parametrize("name", ["hydra", "open mpi", "srun --mpi=pmix", "srun --mpi=pmi2"])
def test_a_world_as_large_as_the_launch_is_accepted(name):
    env, _, size, _ = ENVS[name]
    check_launch(detect_launch(env), size, "Open MPI v5.0.3")


def test_one_task_under_a_launcher_is_one_rank():
    for env in ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"},
                {"PMI_FD": "9", "PMI_RANK": "0", "PMI_SIZE": "1", "HYDI_CONTROL_FD": "7"},
                ENVS["hydra -n 1 under slurm"][0]):
        check_launch(detect_launch(env), 1, MPICH_WHEEL)


def test_a_rank_above_zero_in_a_world_of_one_is_refused_without_a_size():
    with pytest.raises(LaunchError, match="task 1 of several"):
        check_launch(detect_launch(ENVS["hydra -pmi-port, no local count"][0]), 1, MPICH_WHEEL)


def test_mpich_without_pmix_is_refused_under_pmix_before_mpi_init():
    launch = detect_launch(ENVS["srun --mpi=pmix"][0])
    assert pmix_unsupported(MPICH_WHEEL)
    with pytest.raises(LaunchError) as e:
        check_launch(launch, None, MPICH_WHEEL)
    msg = str(e.value)
    for want in ("built without PMIx", "PMIX_RANK=3", "PMIX_NAMESPACE=slurm.pmix.42.0",
                 "one of 4 tasks", "srun --mpi=pmix", "mpiexec -n 4"):
        assert want in msg, (want, msg)
    # an MPICH built with PMIx, Open MPI, or no PMIx in the environment: MPI_Init may proceed
    check_launch(launch, None, MPICH_WHEEL.replace("--with-pm=", "--with-pmix=/usr --with-pm="))
    check_launch(launch, None, "Open MPI v5.0.3, package: Open MPI ...")
    check_launch(detect_launch(ENVS["srun --mpi=pmi2"][0]), None, MPICH_WHEEL)


# ------------------------------------------------------------------ in a fresh process
@functools.cache
def _library() -> str:
    """The MPI library mpi4py loads (asked in a child: loading it here would change how this
    process's mpi4py initialises)."""
    p = subprocess.run([sys.executable, "-c", "from dlrm_tvm.runtime.mpi import "
                        "library_version; print(library_version())"], env=_clean_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return p.stdout


PROBE = ("import sys\nfrom dlrm_tvm.runtime.comm import launched_ranks\n"
         "print(launched_ranks(), 'mpi4py.MPI' in sys.modules)\n")


@pytest.mark.parametrize("extra,want", [
    ({}, "1 False"),  # no launcher: one rank, mpi4py never imported
    ({"SLURM_JOB_ID": "42", "SLURM_NTASKS": "4", "SLURM_PROCID": "0"}, "1 False"),  # sbatch
    ({"SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}, "1 True"),
])
def test_launched_ranks_in_a_fresh_process(extra, want):
    p = subprocess.run([sys.executable, "-c", PROBE], env={**_clean_env(), **extra},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == want.split(), p.stdout


def test_one_pmix_task_with_an_mpi_that_cannot_start_there_runs_alone():
    """``srun --mpi=pmix -n 1`` with the mpich wheel: its MPI_Init would abort under PMIx, and
    one task needs no MPI, so it is a 1-rank run with MPI left uninitialised."""
    if not pmix_unsupported(_library()):
        pytest.skip(f"mpi4py's MPI has PMIx ({_library().splitlines()[0]})")
    env = {**_clean_env(), "SLURM_STEP_ID": "0", "SLURM_STEP_NUM_TASKS": "1",
           "SLURM_PROCID": "0", "PMIX_RANK": "0", "PMIX_NAMESPACE": "slurm.pmix.42.0"}
    probe = ("from dlrm_tvm.runtime.comm import launched_ranks\nn = launched_ranks()\n"
             "from mpi4py import MPI\nprint(n, MPI.Is_initialized())\n")
    p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["1", "False"], p.stdout


def _two_tasks(tmp_path, pmix: bool):
    """Two ``dlrm-tvm train`` processes started at once as srun's tasks 0 and 1 of 2 would
    be, without mpiexec, into one run directory; returns (processes' results, run dir)."""
    out = tmp_path / "run"
    procs = []
    for r in (0, 1):
        env = {**_clean_env(), "SLURM_JOB_ID": "42", "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0",
               "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": str(r), "SLURM_LOCALID": str(r)}
        if pmix:
            env.update({"PMIX_RANK": str(r), "PMIX_NAMESPACE": "slurm.pmix.42.0"})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dlrm_tvm", "train", "--config", "tiny", "--steps", "2",
             "--quiet", "--out", str(out)], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True))
    res = []
    for p in procs:
        so, se = p.communicate(timeout=240)
        res.append((p.returncode, so, se))
    return res, out


@pytest.mark.parametrize("pmix", [True, False], ids=["slurm+pmix", "slurm-only"])
def test_srun_tasks_that_mpi_cannot_join_refuse_and_write_nothing(tmp_path, pmix):
    if pmix and not pmix_unsupported(_library()):
        pytest.skip(f"mpi4py's MPI has PMIx ({_library().splitlines()[0]}): MPI_Init would "
                    f"look for the fabricated PMIx server")
    res, out = _two_tasks(tmp_path, pmix)
    for r, (rc, so, se) in enumerate(res):
        assert rc == 2, (r, rc, so[-2000:], se[-2000:])
    rc, so, se = res[0]
    for want in ("refusing to start", SLURM, "SLURM_STEP_NUM_TASKS=2", "SLURM_PROCID=0",
                 "one of 2 tasks", "Nothing was written", "mpiexec -n 2", "srun --mpi=pmix"):
        assert want in se, (want, se[-2000:])
    assert ("PMIX_RANK=0" in se) == pmix
    assert "refusing to start" not in res[1][2]  # task 1 exits 2 quietly
    # never two single-rank runs: nothing was trained into the directory
    for name in ("metrics.jsonl", "summary.json", "train.log", "config.json"):
        assert not (out / name).exists(), name


def _is_hydra() -> bool:
    p = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True, timeout=60)
    return "HYDRA" in p.stdout


@pytest.mark.mpi
@needs_mpi
def test_ranks_find_each_other_when_the_launcher_exports_no_size(tmp_path):
    """hydra's PMI_PORT model exports neither PMI_SIZE nor PMI_RANK (the PMI server tells MPI
    its size); MPI_LOCALNRANKS is removed too, so no variable says how many ranks there are.
    (``env -u PMI_SIZE`` under the default PMI_FD model is no such launch: MPICH's PMI-1 client
    reads the size from PMI_SIZE, and without it rank 1 dies in MPI_Init.)"""
    if not _is_hydra():
        pytest.skip("-pmi-port is an option of MPICH/Intel MPI hydra's mpiexec")
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-pmi-port", "-n", "2", "env", "-u", "MPI_LOCALNRANKS", "-u", "PMI_SIZE",
           sys.executable, "-m", "dlrm_tvm", "train", "--config", "tiny", "--steps", "2",
           "--quiet", "--out", str(out)]
    p = subprocess.run(cmd, env=_clean_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ranks"] == 2
    layout = json.loads((out / "layout.json").read_text())
    assert sorted(r["rank"] for r in layout) == [0, 1]


# ------------------------------------------------------------------ cores per rank
def test_parse_cpulist():
    assert parse_cpulist("0-3,8,10-11\n") == [0, 1, 2, 3, 8, 10, 11]
    assert parse_cpulist("") == []


def test_ranks_sharing_cpus_split_them_and_a_bound_rank_keeps_its_own():
    node = list(range(4))
    assert [split_cores([node, node], r) for r in (0, 1)] == [[0, 1], [2, 3]]  # no binding
    assert [split_cores([[0], [1]], r) for r in (0, 1)] == [[0], [1]]  # --bind-to core
    sockets = [[0, 1, 2, 3]] * 2 + [[4, 5, 6, 7]] * 2  # --bind-to socket, 2 ranks a socket
    assert [split_cores(sockets, r) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert [split_cores([[0]] * 3, r) for r in range(3)] == [[0], [0], [0]]  # oversubscribed
    assert [split_cores([[0, 1]] * 3, r) for r in range(3)] == [[0], [1], [0]]


def test_the_split_follows_sockets_and_keeps_hardware_threads_together():
    # 2 sockets x 2 cores x 2 threads, numbered as Linux does: the first thread of every core,
    # then their siblings. A split in cpu-number order would give rank 0 cpus 0-3 (both
    # sockets, no sibling) and rank 1 cpus 4-7 (the siblings of the same cores).
    topo = {0: (0, 0, 0), 1: (0, 0, 1), 2: (1, 1, 0), 3: (1, 1, 1),
            4: (0, 0, 0), 5: (0, 0, 1), 6: (1, 1, 0), 7: (1, 1, 1)}
    node = list(range(8))
    assert [split_cores([node, node], r, topo) for r in (0, 1)] == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [split_cores([node] * 4, r, topo) for r in range(4)] == \
        [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_cpu_topology_reads_sysfs(tmp_path):
    for cpu, (pkg, core) in {0: (0, 0), 1: (1, 0), 2: (0, 0), 3: (1, 0)}.items():
        d = tmp_path / "cpu" / f"cpu{cpu}" / "topology"
        d.mkdir(parents=True)
        (d / "physical_package_id").write_text(f"{pkg}\n")
        (d / "core_id").write_text(f"{core}\n")
    for n, cpus in ((0, "0,2"), (1, "1,3")):
        (tmp_path / "node" / f"node{n}").mkdir(parents=True)
        (tmp_path / "node" / f"node{n}" / "cpulist").write_text(cpus + "\n")
    topo = cpu_topology(str(tmp_path))
    assert topo == {0: (0, 0, 0), 1: (1, 1, 0), 2: (0, 0, 0), 3: (1, 1, 0)}
    assert split_cores([[0, 1, 2, 3]] * 2, 0, topo) == [0, 2]
    assert cpu_topology(str(tmp_path / "absent")) == {}
    here = cpu_topology()
    assert not here or set(here) >= set(os.sched_getaffinity(0))


@pytest.mark.parametrize("env", [{"PMI_RANK": "0"}, {"PMI_RANK": "1"},
                                 {"SLURM_STEP_ID": "0", "SLURM_PROCID": "0"}])
def test_a_rank_without_a_size_in_a_world_of_one_is_refused_by_every_task(env):
    """Plain processes given PMI_RANK=0/1 (or SLURM_PROCID without a size): rank 0 trained
    alone with exit 0 and rank 1 exited 2 silently (were). Every such task refuses, out loud,
    before anything is written."""
    launch = detect_launch(env)
    with pytest.raises(LaunchError, match="a rank but no size") as e:
        check_launch(launch, 1, MPICH_WHEEL)
    assert not e.value.quiet
