"""Model state from a checkpoint, ours or the PyTorch reference's, for eval and export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config


def load_state(path: str | Path, cfg_hint: Config) -> tuple[Config, dict, dict]:
    """(config, fp32 state in our layout, description) of the checkpoint at ``path``: a file
    is a facebookresearch/dlrm ``torch.save`` checkpoint (its model read from the shapes;
    ``cfg_hint`` gives the rest: batch size, data, and the interaction where shapes cannot
    tell); a directory is ours (a checkpoint, a checkpoints/ directory or a run directory)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if p.is_file():
        from dlrm_tvm.interop import load_reference_checkpoint

        m, state = load_reference_checkpoint(p, cfg_hint)
        return cfg_hint.replace(model=m), dict(state), {"kind": "reference", "path": str(p)}
    from dlrm_tvm.runtime import checkpoint as ck

    man = ck.read_manifest(p)
    cfg = Config.from_dict(man["config"])
    d = cfg.model.embedding_dim
    tables = np.concatenate([ck.load_rows(man, t, 0, r, d)
                             for t, r in enumerate(cfg.model.table_rows)])
    state = {"tables": tables, **ck.load_npz(man, "mlp.npz")}
    return cfg, state, {"kind": "dlrm-tvm", "path": man["_dir"], "step": man["step"]}
