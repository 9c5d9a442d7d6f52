"""A compiled DLRM as a directory: ``module.so`` (the exported Relax VM library) and
``artifact.json`` (config, target, the CPU features it needs, TVM versions, the schedule rule
chosen per kernel). Loading refuses, with the missing features named, an artifact whose code
the host CPU cannot execute (instead of dying on an illegal instruction).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from dlrm_tvm.config import Config
from dlrm_tvm.targets import (
    ISA_FEATURES,
    TargetInfo,
    describe_flags,
    isa_features,
    missing_cpu_flags,
)

FORMAT_VERSION = 1
MODULE_FILE = "module.so"
META_FILE = "artifact.json"


class ArtifactError(RuntimeError):
    """An artifact that cannot be used here; the message says why."""


@dataclass
class Artifact:
    path: Path
    meta: dict

    @property
    def config(self) -> Config:
        return Config.from_dict(self.meta["config"])

    @property
    def batch_size(self) -> int:
        return int(self.meta["batch_size"])


def compile_artifact(cfg: Config, target: TargetInfo, out_dir: str | Path,
                     prefer: tuple[str, ...] = (),
                     dump_dir: str | Path | None = None,
                     tuning: dict | None = None) -> Artifact:
    """Compile ``cfg`` for ``target`` (any target, on any host) and write it to ``out_dir``."""
    import tvm
    import tvm_ffi

    from dlrm_tvm.pipeline import compile_dlrm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = compile_dlrm(cfg, target, prefer=prefer, dump_dir=dump_dir, tuning=tuning)
    t0 = time.perf_counter()
    tmp = out / (MODULE_FILE + ".tmp.so")
    res.executable.export_library(str(tmp))
    digest = module_sha256(tmp)
    tmp.replace(out / MODULE_FILE)
    res.seconds["export"] = time.perf_counter() - t0
    meta = {
        "format_version": FORMAT_VERSION,
        "module_sha256": digest,
        "config": cfg.to_dict(),
        "batch_size": cfg.train.batch_size,
        "target": target.to_dict(),
        "tvm_version": tvm.__version__,
        "tvm_ffi_version": getattr(tvm_ffi, "__version__", "unknown"),
        "schedules": res.schedules,
        "tuning": None if tuning is None else {k: tuning.get(k) for k in
                                               ("config", "target_signature", "created")},
        "compile_seconds": {k: round(v, 3) for k, v in res.seconds.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    tmp_meta = out / (META_FILE + ".tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2, sort_keys=True))
    tmp_meta.replace(out / META_FILE)  # (replaces a link there rather than writing through it)
    return Artifact(path=out, meta=meta)


def module_sha256(path: str | Path) -> str:
    """The sha256 of a module.so, which artifact.json records: loading runs the library's
    code (its constructors), so only the module the description was written with is loaded."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def read_artifact(path: str | Path) -> Artifact:
    p = Path(path)
    meta_file = p / META_FILE
    if not meta_file.exists() or not (p / MODULE_FILE).exists():
        raise ArtifactError(f"{p} is not a dlrm-tvm artifact (expected {META_FILE} and "
                            f"{MODULE_FILE}; make one with `dlrm-tvm compile`)")
    from dlrm_tvm.config_io import read_small_file

    try:
        meta = json.loads(read_small_file(meta_file, "artifact description",
                                          error=ArtifactError).decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{meta_file}: not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ArtifactError(f"{meta_file}: not an artifact description (a JSON object)")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{p}: artifact format {meta.get('format_version')} is not "
                            f"{FORMAT_VERSION}; recompile it")
    target = meta.get("target")
    missing = [k for k in ("config", "target", "schedules", "tvm_version", "batch_size",
                           "module_sha256") if k not in meta]
    if not missing and not (isinstance(target, dict) and isinstance(target.get("name"), str)
                            and isinstance(target.get("mcpu"), str)):
        missing = ["target.name/target.mcpu"]
    if missing:
        raise ArtifactError(f"{meta_file} lacks {', '.join(missing)}: not a complete artifact "
                            f"description; recompile it with `dlrm-tvm compile`")
    return Artifact(path=p, meta=meta)


def required_cpu_flags(meta: dict) -> list[str]:
    """Every /proc/cpuinfo flag an artifact's code may need: its recorded
    ``required_cpu_flags``, the cpuinfo names of its recorded LLVM ``features``, and those of
    every ISA feature LLVM gives its target (older artifacts recorded only a few features)."""
    t = meta["target"]
    feats = list(t.get("features", []))
    spec = t.get("tvm_target") or ({"kind": "llvm", "mcpu": t["mcpu"]} if t.get("mcpu") else None)
    if spec:
        try:
            feats += list(isa_features(spec))
        except Exception:  # an mcpu this LLVM does not know: the recorded lists must do
            pass
    flags = list(t.get("required_cpu_flags", []))
    for f in feats:
        flag = ISA_FEATURES.get(f)
        if flag and flag not in flags:
            flags.append(flag)
    return flags


def check_host_can_run(art: Artifact, host_flags: set[str] | None = None) -> None:
    """Refuse (ArtifactError naming them) an artifact needing a CPU feature that this host's
    /proc/cpuinfo (or ``host_flags``) does not report."""
    from dlrm_tvm.runtime.amx import emulated

    required = [f for f in required_cpu_flags(art.meta)  # emulated: the executor runs them
                if not (emulated() and f.startswith("amx_"))]
    missing = missing_cpu_flags(required, host_flags)
    if missing:
        amx_only = all(f.startswith("amx_") for f in missing)
        raise ArtifactError(
            f"{art.path} was compiled for {art.meta['target']['name']} "
            f"(mcpu {art.meta['target']['mcpu']}) and needs CPU features this host lacks: "
            f"{describe_flags(missing)}. Recompile with `dlrm-tvm compile --target host`"
            + (", or run its tile instructions on the software executor with --emulate-amx "
               "(slow: a trap per instruction)." if amx_only else
               (" (--emulate-amx runs only the AMX tile instructions in software; compile "
                "with --emulate-amx to leave out the others this host lacks)."
                if any(f.startswith("amx_") for f in missing) or emulated() else "."))
        )


def load_artifact(path: str | Path):
    """(vm, Artifact) after checking the host can execute it and the TVM version matches."""
    import tvm

    from dlrm_tvm.pipeline import load_vm

    art = read_artifact(path)
    check_host_can_run(art)
    if art.meta.get("tvm_version") != tvm.__version__:
        raise ArtifactError(f"{art.path} was built with TVM {art.meta.get('tvm_version')}, "
                            f"this is TVM {tvm.__version__}; recompile it")
    module = art.path / MODULE_FILE
    if module_sha256(module) != art.meta["module_sha256"]:
        raise ArtifactError(f"{module} is not the module {art.path / META_FILE} describes (its "
                            f"sha256 differs): an artifact is code, loaded as is; recompile it "
                            f"rather than load a module from elsewhere")
    mod = tvm.runtime.load_module(str(module))
    return load_vm(mod, needs_amx="amx_tile" in required_cpu_flags(art.meta)), art
