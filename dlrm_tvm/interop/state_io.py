"""Model state from a checkpoint (ours, the PyTorch reference's or torchrec's) for eval, export."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dlrm_tvm.config import Config


def load_state(path: str | Path, cfg_hint: Config) -> tuple[Config, dict, dict]:
    """(config, fp32 state in our layout, description) of the checkpoint at ``path``: a file
    is a facebookresearch/dlrm ``torch.save`` checkpoint, or a torchrec ``DLRM_DCN``/``DLRM``
    state dict as ``export-torchrec`` writes it (kind "torchrec", recognised by its
    ``sparse_arch.embedding_bag_collection.embedding_bags.*`` keys), its model read from the
    shapes; ``cfg_hint`` gives the rest: batch size, data, and the interaction where shapes
    cannot tell; a directory is ours (a checkpoint, a checkpoints/ directory or a run directory)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    if not (p.is_file() or p.is_dir()):
        raise ValueError(f"checkpoint {p} is neither a file nor a directory")
    if p.is_file():
        from dlrm_tvm.interop.reference import (load_weights_only, reference_from_loaded,
                                                tensor_to_numpy)
        from dlrm_tvm.interop.torchrec_export import (
            from_torchrec_state_dict,
            torchrec_state_dict_of,
        )

        ckpt = load_weights_only(p)  # weights only: never unpickles anything else
        trec = torchrec_state_dict_of(ckpt)
        if trec is not None:
            try:
                m, state = from_torchrec_state_dict(
                    {k: tensor_to_numpy(v) for k, v in trec.items()}, cfg_hint)
            except ValueError as e:
                raise ValueError(f"{p}: {e}") from None
            kind = "torchrec"
        else:
            m, state = reference_from_loaded(ckpt, p, cfg_hint)
            kind = "reference"
        _check_finite(p, state)
        return cfg_hint.replace(model=m), dict(state), {"kind": kind, "path": str(p)}
    from dlrm_tvm.runtime import checkpoint as ck

    man = ck.read_manifest(p)
    try:
        cfg = Config.from_dict(man["config"])
    except ValueError as e:
        raise ck.CheckpointError(f"{man['_dir']}/manifest.json: its config is invalid: {e}") from e
    d = cfg.model.embedding_dim
    tables = np.concatenate([ck.load_rows(man, t, 0, r, d)
                             for t, r in enumerate(cfg.model.table_rows)])
    state = {"tables": tables, **ck.load_npz(man, "mlp.npz")}
    _check_finite(Path(man["_dir"]), state)
    return cfg, state, {"kind": "dlrm-tvm", "path": man["_dir"], "step": man["step"]}


def _check_finite(path: Path, state: dict) -> None:
    """A model with NaN or infinite parameters is refused (exit status 3), naming them: its
    predictions would be NaN, or, behind a ReLU, silently wrong."""
    from dlrm_tvm.errors import DivergedError
    from dlrm_tvm.runtime.checkpoint import non_finite

    bad = {k: n for k, n in ((k, non_finite(v)) for k, v in state.items()) if n}
    if bad:
        raise DivergedError(f"{path}: non-finite parameters ("
                            + ", ".join(f"{k}: {n} values" for k, n in bad.items())
                            + "): a diverged model, refused")
