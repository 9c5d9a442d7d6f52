"""``dlrm-tvm plot RUNDIR``: training loss and held-out loss / AUC curves from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """(training lines, evaluation lines) of RUNDIR/metrics.jsonl."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: is {run_dir} a `dlrm-tvm train` run directory?")
    train, evals = [], []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}:{i}: not JSON: {e}") from e
        if not isinstance(d, dict):
            raise ValueError(f"{p}:{i}: a metrics line is a JSON object, this is a "
                             f"{type(d).__name__}")
        if "eval" in d:
            ev = d["eval"]
            if not (isinstance(ev, dict) and all(_number(ev.get(k)) for k in
                                                  ("step", "loss", "auc", "accuracy"))):
                raise ValueError(f"{p}:{i}: an evaluation line needs eval.step, loss, auc and "
                                 f"accuracy as numbers")
            evals.append(d)
        elif "step" in d or "loss" in d:
            if not (_number(d.get("step")) and _number(d.get("loss"))):
                raise ValueError(f"{p}:{i}: a training line needs step and loss as numbers")
            train.append(d)
    return train, evals


def _number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = read_metrics(run_dir)
    if not train and not evals:
        raise ValueError(f"{run_dir}/metrics.jsonl has no lines to plot")
    out = Path(out) if out else Path(run_dir) / "curves.png"
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        st = np.array([d["step"] for d in train])
        lo = np.array([d["loss"] for d in train])
        a1.plot(st, lo, lw=0.7, alpha=0.5, label="training loss (step)")
        k = max(1, len(lo) // 50)
        if k > 1:
            sm = np.convolve(lo, np.ones(k) / k, mode="valid")
            a1.plot(st[k - 1:], sm, lw=1.5, label=f"training loss (mean of {k})")
    if evals:
        es = [d["eval"]["step"] for d in evals]
        a1.plot(es, [d["eval"]["loss"] for d in evals], "o-", label="held-out loss")
        a2.plot(es, [d["eval"]["auc"] for d in evals], "o-", color="C3", label="held-out AUC")
        a2.plot(es, [d["eval"]["accuracy"] for d in evals], "s--", color="C2",
                label="held-out accuracy")
    a1.set_xlabel("step")
    a1.set_ylabel("BCE loss")
    a1.grid(alpha=0.3)
    a1.legend(fontsize=8)
    a2.set_xlabel("step")
    a2.set_ylabel("AUC / accuracy")
    a2.grid(alpha=0.3)
    if evals:
        a2.legend(fontsize=8)
    else:
        a2.text(0.5, 0.5, "no evaluations\n(train with --eval-every K)", ha="center",
                va="center", transform=a2.transAxes)
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
