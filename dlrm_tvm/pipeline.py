"""The compile pipeline, in order:

1. graph    build the Relax module of the DLRM step (graphs/dlrm.py): call_tir to naive kernels
            (``build_step``)
2. schedule give every PrimFunc the first matching rule of the target's list (schedules/;
            ``schedule_module``, with the preferred rules and a tuning record)
3. lower    Relax: dataflow lowering + memory planning + VM lowering. Deliberately NO
            LegalizeOps/FuseOps/FuseTIR: they would re-fuse our scheduled kernels
4. codegen  TIR default pipeline + LLVM for the target

Steps 1 and 2 are also what ``dlrm-tvm kernels list`` reports, so it lists what compile chooses.
``dump_dir`` writes the module after step 2 (``scheduled.py``, TVMScript), for a person to read;
the other phases are not dumped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax

from dlrm_tvm.config import Config
from dlrm_tvm.graphs.dlrm import DLRMGraph
from dlrm_tvm.schedules import schedule_module
from dlrm_tvm.targets import TargetInfo


@dataclass
class CompileResult:
    executable: object  # tvm.relax.VMExecutable
    schedules: dict[str, dict[str, str]]
    seconds: dict[str, float] = field(default_factory=dict)


def relax_lowering(target: tvm.target.Target) -> tvm.transform.Pass:
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0)
    def _lower(mod: tvm.IRModule, _ctx):
        with target:
            return tvm.transform.Sequential(
                cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target)
            )(mod)

    return _lower


def graph_layouts(precision: str, tvm_target, layouts: str = "auto") -> str:
    """The graph's GEMM operand layouts for this precision and target (see compile_dlrm)."""
    from dlrm_tvm.schedules.base import has_feature

    if layouts not in ("auto", "plain", "vnni"):
        raise ValueError(f"layouts must be auto, plain or vnni, got {layouts!r}")
    if layouts == "auto":
        # the bf16 microkernels (vdpbf16ps, AMX tiles) read VNNI-2 packs
        return "vnni" if precision == "bf16" and (has_feature(tvm_target, "avx512bf16") or
                                                  has_feature(tvm_target, "amx-bf16")) \
            else "plain"
    return layouts


def build_step(
    cfg: Config,
    tvm_target: tvm.target.Target,
    batch_size: int | None = None,
    model=None,
    parts: tuple[str, ...] = ("sparse", "dense"),
    loss_scale: float | None = None,
    hooks: bool = False,
    layouts: str = "auto",
) -> tvm.IRModule:
    """Step 1: the unscheduled Relax module of ``cfg``'s step (its precision, optimizer and
    batch size, or ``batch_size``) with the GEMM layouts ``layouts`` resolves to for
    ``tvm_target``. The arguments are compile_dlrm's."""
    layouts = graph_layouts(cfg.train.precision, tvm_target, layouts)
    return DLRMGraph(model or cfg.model, batch_size or cfg.train.batch_size,
                     loss_scale=loss_scale, precision=cfg.train.precision,
                     optimizer=cfg.train.optimizer, hooks=hooks, layouts=layouts).build(parts)


def compile_dlrm(
    cfg: Config,
    target: TargetInfo,
    batch_size: int | None = None,
    prefer: tuple[str, ...] = (),
    dump_dir: str | Path | None = None,
    model=None,
    parts: tuple[str, ...] = ("sparse", "dense"),
    loss_scale: float | None = None,
    hooks: bool = False,
    layouts: str = "auto",
    tuning: dict | None = None,
) -> CompileResult:
    """Build, schedule and compile the DLRM step for ``target`` (any target, from any host).

    A rank of a distributed run compiles its parts separately: ``model`` (the config's model
    with the rank's table shards as its tables) with ``parts=("sparse",)`` at the global batch,
    and the dense part at its local batch with ``loss_scale`` 1 / global batch and ``hooks``
    (graphs/dlrm.py: calls back into the runtime to overlap its exchanges).

    ``layouts``: "vnni" packs the bf16 GEMMs' operands once into the microkernel's layout
    (graphs/ops.pack_vnni), "plain" lets each GEMM pack its own; "auto" (default) is vnni for
    bf16 on a target with avx512bf16. ``tuning``: a record of ``dlrm-tvm kernels tune``
    (per-kernel register tiles for this target; the choices land in ``schedules``)."""
    tvm_target = target.tvm_target()
    secs: dict[str, float] = {}
    t0 = time.perf_counter()
    mod = build_step(cfg, tvm_target, batch_size, model, parts, loss_scale, hooks, layouts)
    secs["graph"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mod, chosen = schedule_module(mod, tvm_target, prefer, tuning)
    secs["schedule"] = time.perf_counter() - t0
    if dump_dir is not None:
        d = Path(dump_dir)
        d.mkdir(parents=True, exist_ok=True)
        (d / "scheduled.py").write_text(mod.script())
    t0 = time.perf_counter()
    ex = tvm.compile(mod, target=tvm_target, relax_pipeline=relax_lowering(tvm_target))
    secs["codegen"] = time.perf_counter() - t0
    return CompileResult(executable=ex, schedules=chosen, seconds=secs)


def compile_primfunc(func, target: tvm.target.Target):
    """One PrimFunc (or a Schedule's) as a callable module: ``lib["main"](*tensors)``."""
    from dlrm_tvm.runtime.amx import request_if_host_has_amx

    if hasattr(func, "mod"):  # a Schedule
        func = func.mod["main"]
    request_if_host_has_amx()  # the function may be run here right after
    return tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                       target=target)


def load_vm(executable_or_module, needs_amx: bool = False):
    """A VM on the CPU; ``needs_amx``: the code may run AMX tile instructions, so the process
    first asks Linux for the tile state (runtime/amx.py; AmxUnavailable if refused)."""
    from dlrm_tvm.runtime.amx import request_amx, request_if_host_has_amx

    if needs_amx:
        request_amx()
    else:  # compiled for this host, perhaps with AMX kernels: ask where the CPU has AMX
        request_if_host_has_amx()
    return relax.VirtualMachine(executable_or_module, tvm.cpu())
