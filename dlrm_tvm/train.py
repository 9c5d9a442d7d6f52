"""``dlrm-tvm train``: compile (or load) the step, run it, write metrics and a summary."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config, ConfigError
from dlrm_tvm.progress import Progress

log = logging.getLogger("dlrm_tvm")


def _same_compiled_shape(a: Config, b: Config) -> bool:
    return (a.model == b.model and a.train.batch_size == b.train.batch_size
            and a.train.precision == b.train.precision)


def get_compiled(cfg: Config, artifact: str | Path | None, target_name: str, out_dir: Path,
                 prefer: tuple[str, ...] = ()):
    """(vm, artifact meta): load ``artifact`` if given (it must match ``cfg``), else compile
    for ``target_name`` into ``out_dir/artifact``."""
    from dlrm_tvm.artifact import compile_artifact, load_artifact, read_artifact
    from dlrm_tvm.targets import resolve_target

    if artifact is not None:
        art = read_artifact(artifact)
        if not _same_compiled_shape(art.config, cfg):
            raise ConfigError(
                f"artifact {artifact} was compiled for config {art.config.name!r} "
                f"(batch {art.batch_size}, {art.config.train.precision}) whose model, batch "
                f"size or precision differs from the one "
                f"requested; recompile with `dlrm-tvm compile` or drop --artifact"
            )
        vm, art = load_artifact(artifact)
        log.info("loaded artifact %s (target %s)", artifact, art.meta["target"]["name"])
        return vm, art.meta
    target = resolve_target(target_name)
    log.info("compiling %s for %s (mcpu %s, features %s)", cfg.name, target.name, target.mcpu,
             ",".join(target.features) or "-")
    t0 = time.perf_counter()
    art = compile_artifact(cfg, target, out_dir / "artifact", prefer=prefer)
    log.info("compiled in %.1fs -> %s", time.perf_counter() - t0, art.path)
    vm, art = load_artifact(art.path)
    return vm, art.meta


def train(cfg: Config, out_dir: str | Path, artifact: str | Path | None = None,
          target: str = "host", prefer: tuple[str, ...] = (), quiet: bool = False) -> dict:
    """Train ``cfg.train.steps`` steps on ``cfg.data``; returns the summary it writes."""
    from dlrm_tvm.data import SyntheticData
    from dlrm_tvm.runtime.trainer import Trainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg.check_fits()
    vm, meta = get_compiled(cfg, artifact, target, out, prefer)
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
    t0 = time.perf_counter()
    trainer = Trainer(cfg, vm)
    log.info("initialised parameters in %.1fs (%.2f GiB)", time.perf_counter() - t0,
             cfg.model.param_bytes() / 2**30)
    data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, cfg.train.seed)
    steps = cfg.train.steps
    prog = Progress(steps, "train") if not quiet else None
    times, losses = [], []
    with open(out / "metrics.jsonl", "w") as metrics:
        for s in range(steps):
            batch = data.next_batch()
            t = time.perf_counter()
            r = trainer.step(batch)
            dt = time.perf_counter() - t
            times.append(dt)
            losses.append(r["loss"])
            if not np.isfinite(r["loss"]):
                raise FloatingPointError(f"loss became {r['loss']} at step {s}")
            if s % cfg.train.log_every == 0 or s == steps - 1:
                metrics.write(json.dumps({"step": s, "loss": r["loss"], "lr": r["lr"],
                                          "ms": dt * 1e3}) + "\n")
            if prog:
                prog.update(s + 1, loss=float(np.mean(losses[-10:])), ms_per_step=dt * 1e3)
    warm = times[min(len(times) - 1, 2):] if times else []
    med = float(np.median(warm)) if warm else float("nan")
    summary = {
        "steps": steps,
        "final_loss": losses[-1] if losses else None,
        "first_loss": losses[0] if losses else None,
        "mean_loss_last_10": float(np.mean(losses[-10:])) if losses else None,
        "ms_per_step_median": med * 1e3,
        "samples_per_s": cfg.train.batch_size / med if warm else None,
        "target": meta["target"],
        "config": cfg.to_dict(),
        "schedules": meta["schedules"],
        "tvm_version": meta["tvm_version"],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
