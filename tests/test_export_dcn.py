"""Exports of a DLRM-DCNv2 model: export-torchrec into torchrec's DLRM_DCN
(and DLRM for dot), export-onnx and export-reference, against our compiled predictions.

torchrec is not a dependency (its wheel needs fbgemm-gpu built for one torch version); the
modules below are torchrec's, written out with its exact module tree, so their state_dict
keys are torchrec's (the golden key list was printed by torchrec 1.9.2's DLRM_DCN). Random
weights with the tables scaled up (as tests/test_interop.py) make a wrong order, transpose or
padding visible far beyond the 1e-5 tolerance; the commands also run on trained checkpoints.
"""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
import torch
from dlrm_tvm.runtime.params import init_mlp, init_tables

from dlrm_tvm import cli
from dlrm_tvm.config import PRESETS, Config
from dlrm_tvm.data import Batch, SyntheticData
from dlrm_tvm.interop.onnx_export import logits_numpy
from dlrm_tvm.interop.torchrec_export import (
    save_torchrec_state_dict,
    to_torchrec_state_dict,
    torchrec_model_args,
)

TOL = 1e-5


def _variant(name: str) -> Config:
    if name == "dot":
        return PRESETS["tiny"]
    base = PRESETS["dcnv2-tiny"]
    if name == "dcnv2-tiny":
        return base
    # N = 3 * 6 = 24 padded to Np = 32, an odd rank, one layer, 1 to 4 lookups per bag
    assert name == "padded"
    m = dataclasses.replace(base.model, table_rows=(300, 200, 100), embedding_dim=6,
                            mlp_bot=(13, 32, 6), dcn_num_layers=1, dcn_low_rank_dim=5)
    data = dataclasses.replace(base.data, num_indices_per_lookup=4,
                               num_indices_per_lookup_fixed=False)
    return base.replace(model=m, data=data)


VARIANTS = ["dcnv2-tiny", "padded", "dot"]


def _random_state(cfg: Config, seed: int) -> dict[str, np.ndarray]:
    """Our initialisation with tables x10 and random cross biases (zero past N), so that the
    interaction and every cross parameter move the logits."""
    m = cfg.model
    state = {"tables": init_tables(m, seed) * np.float32(10.0), **init_mlp(m, seed)}
    rng = np.random.default_rng(seed)
    for li in range(m.num_cross_layers):
        state[f"cross{li}_b"][: m.interaction_width] = rng.normal(
            0, 0.5, m.interaction_width).astype(np.float32)
    return state


def _batch(cfg: Config, seed: int) -> Batch:
    return SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed).next_batch()


# ------------------------------------------------------------ torchrec's modules, written out
def _torchrec_model(args: dict):
    """torchrec's DLRM_DCN or DLRM (torchrec/models/dlrm.py) from ``torchrec_model_args``:
    the same module tree (so the same state_dict keys) and the same forward, returning
    the logits [B, 1]. Inputs: dense [B, in], and per table (values, offsets with the last
    offset included, as torchrec's EmbeddingBagCollection calls nn.EmbeddingBag)."""
    from torch import nn

    from dlrm_tvm.bench.torch_ref import low_rank_cross_net

    class Perceptron(nn.Module):  # torchrec/modules/mlp.py
        def __init__(self, i, o):
            super().__init__()
            self._linear = nn.Linear(i, o)

        def forward(self, x):
            return torch.relu(self._linear(x))

    class MLP(nn.Module):
        def __init__(self, i, sizes):
            super().__init__()
            self._mlp = nn.Sequential(*[Perceptron(sizes[k - 1] if k else i, sizes[k])
                                        for k in range(len(sizes))])

        def forward(self, x):
            return self._mlp(x)

    class EmbeddingBagCollection(nn.Module):  # torchrec/modules/embedding_modules.py
        def __init__(self, tables):
            super().__init__()
            self.embedding_bags = nn.ModuleDict({
                t["name"]: nn.EmbeddingBag(t["num_embeddings"], t["embedding_dim"],
                                           mode="sum", include_last_offset=True)
                for t in tables})

        def forward(self, bags):
            return [e(v, o) for e, (v, o) in zip(self.embedding_bags.values(), bags,
                                                  strict=True)]

    class SparseArch(nn.Module):
        def __init__(self, ebc):
            super().__init__()
            self.embedding_bag_collection = ebc

        def forward(self, bags):  # B x F x D
            return torch.stack(self.embedding_bag_collection(bags), dim=1)

    class DenseArch(nn.Module):
        def __init__(self, i, sizes):
            super().__init__()
            self.model = MLP(i, sizes)

        def forward(self, x):
            return self.model(x)

    class InteractionArch(nn.Module):  # dot: the strict upper triangle, no parameters
        def __init__(self, f):
            super().__init__()
            self.triu_indices = torch.triu_indices(f + 1, f + 1, offset=1)

        def forward(self, dense, sparse):
            c = torch.cat((dense.unsqueeze(1), sparse), dim=1)
            z = torch.bmm(c, c.transpose(1, 2))
            return torch.cat((dense, z[:, self.triu_indices[0], self.triu_indices[1]]), dim=1)

    class InteractionDCNArch(nn.Module):
        def __init__(self, crossnet):
            super().__init__()
            self.crossnet = crossnet

        def forward(self, dense, sparse):
            b = dense.shape[0]
            return self.crossnet(torch.cat((dense.unsqueeze(1), sparse), dim=1).reshape(b, -1))

    class OverArch(nn.Module):
        def __init__(self, i, sizes):
            super().__init__()
            self.model = nn.Sequential(MLP(i, sizes[:-1]), nn.Linear(sizes[-2], sizes[-1]))

        def forward(self, x):
            return self.model(x)

    class DLRM(nn.Module):
        def __init__(self):
            super().__init__()
            tables = args["tables"]
            f, d = len(tables), tables[0]["embedding_dim"]
            self.sparse_arch = SparseArch(EmbeddingBagCollection(tables))
            self.dense_arch = DenseArch(args["dense_in_features"], args["dense_arch_layer_sizes"])
            if args["model"] == "DLRM_DCN":
                n = (f + 1) * d
                self.inter_arch = InteractionDCNArch(
                    low_rank_cross_net(n, args["dcn_num_layers"], args["dcn_low_rank_dim"]))
            else:
                n = d + f * (f - 1) // 2 + f
                self.inter_arch = InteractionArch(f)
            self.over_arch = OverArch(n, args["over_arch_layer_sizes"])

        def forward(self, dense, bags):
            return self.over_arch(self.inter_arch(self.dense_arch(dense), self.sparse_arch(bags)))

    return DLRM()


def _torchrec_logits(model, batch: Batch, num_tables: int) -> np.ndarray:
    B, off = batch.size, batch.offsets
    bags = []
    for t in range(num_tables):
        o = off[t * B:(t + 1) * B + 1]
        bags.append((torch.from_numpy(batch.indices[o[0]:o[-1]].copy()),
                     torch.from_numpy(o - o[0])))
    with torch.no_grad():
        out = model(torch.from_numpy(batch.dense), bags)
    assert tuple(out.shape) == (B, 1)
    return out[:, 0].numpy()


def _load_torchrec(cfg: Config, path) -> object:
    sd = torch.load(path, weights_only=True)
    assert all(v.dtype == torch.float32 for v in sd.values())
    model = _torchrec_model(torchrec_model_args(cfg))
    model.load_state_dict(sd, strict=True)
    return model.eval()


def _close(got, want, what: str, rel: bool = False) -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    err = np.abs(got - want) / (np.maximum(1.0, np.abs(want)) if rel else 1.0)
    assert float(err.max()) < TOL, f"{what}: max difference {float(err.max()):.2e}"


# ------------------------------------------------------------ compiled models and runs
_BUILT: dict = {}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """built(variant, precision) -> (cfg, run directory, vm): compiled once, trained 4 steps
    (a finished run with its last-step checkpoint)."""
    from dlrm_tvm.artifact import compile_artifact, load_artifact
    from dlrm_tvm.targets import resolve_target
    from dlrm_tvm.train import RunOptions, train

    def get(variant: str, precision: str = "fp32"):
        key = (variant, precision)
        if key not in _BUILT:
            base = _variant(variant)
            cfg = base.replace(train=dataclasses.replace(base.train, steps=4, learning_rate=0.5,
                                                         precision=precision))
            root = tmp_path_factory.mktemp(f"{variant}-{precision}")
            art = compile_artifact(cfg, resolve_target("host"), root / "artifact")
            train(cfg, root / "run", artifact=art.path, quiet=True,
                  opts=RunOptions(final_eval=False, save_params=True))
            vm, _ = load_artifact(art.path)
            _BUILT[key] = (cfg, root / "run", vm)
        return _BUILT[key]

    return get


def _predict(cfg: Config, vm, state: dict, batch: Batch) -> np.ndarray:
    from dlrm_tvm.runtime.trainer import Trainer

    tr = Trainer(cfg, vm, tables=np.ascontiguousarray(state["tables"], np.float32),
                 mlp={k: np.asarray(v, np.float32) for k, v in state.items() if k != "tables"})
    return tr.predict(batch)


def _run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out, err


# ------------------------------------------------------------ export-torchrec
# torchrec 1.9.2's DLRM_DCN(EmbeddingBagCollection(tables=[EmbeddingBagConfig(name=f"t_cat_{t}",
# embedding_dim=6, num_embeddings=r, feature_names=[f"cat_{t}"]) for t, r in
# enumerate((300, 200, 100))]), dense_in_features=13, dense_arch_layer_sizes=[32, 6],
# over_arch_layer_sizes=[64, 32, 1], dcn_num_layers=1, dcn_low_rank_dim=5).state_dict()
TORCHREC_KEYS_PADDED = [
    ("sparse_arch.embedding_bag_collection.embedding_bags.t_cat_0.weight", (300, 6)),
    ("sparse_arch.embedding_bag_collection.embedding_bags.t_cat_1.weight", (200, 6)),
    ("sparse_arch.embedding_bag_collection.embedding_bags.t_cat_2.weight", (100, 6)),
    ("dense_arch.model._mlp.0._linear.weight", (32, 13)),
    ("dense_arch.model._mlp.0._linear.bias", (32,)),
    ("dense_arch.model._mlp.1._linear.weight", (6, 32)),
    ("dense_arch.model._mlp.1._linear.bias", (6,)),
    ("inter_arch.crossnet.W_kernels.0", (24, 5)),
    ("inter_arch.crossnet.V_kernels.0", (5, 24)),
    ("inter_arch.crossnet.bias.0", (24,)),
    ("over_arch.model.0._mlp.0._linear.weight", (64, 24)),
    ("over_arch.model.0._mlp.0._linear.bias", (64,)),
    ("over_arch.model.0._mlp.1._linear.weight", (32, 64)),
    ("over_arch.model.0._mlp.1._linear.bias", (32,)),
    ("over_arch.model.1.weight", (1, 32)),
    ("over_arch.model.1.bias", (1,)),
]


def test_torchrec_keys_and_layouts_are_torchrecs():
    cfg = _variant("padded")
    m = cfg.model
    state = _random_state(cfg, 3)
    sd = to_torchrec_state_dict(cfg, state)
    assert [(k, v.shape) for k, v in sd.items()] == TORCHREC_KEYS_PADDED
    assert all(v.dtype == np.float32 for v in sd.values())
    n = m.interaction_width
    # the layouts, element by element: V = u^T and W = v^T without the padding, Linear [out, in]
    np.testing.assert_array_equal(sd["inter_arch.crossnet.V_kernels.0"], state["cross0_u"][:n].T)
    np.testing.assert_array_equal(sd["inter_arch.crossnet.W_kernels.0"],
                                  state["cross0_v"][:, :n].T)
    np.testing.assert_array_equal(sd["inter_arch.crossnet.bias.0"], state["cross0_b"][:n])
    np.testing.assert_array_equal(sd["over_arch.model.0._mlp.0._linear.weight"],
                                  state["top0_w"][:n].T)
    np.testing.assert_array_equal(sd["over_arch.model.1.weight"], state["top2_w"].T)
    np.testing.assert_array_equal(
        sd["sparse_arch.embedding_bag_collection.embedding_bags.t_cat_1.weight"],
        state["tables"][300:500])
    assert torchrec_model_args(cfg) == {
        "model": "DLRM_DCN",
        "tables": [{"name": f"t_cat_{t}", "embedding_dim": 6, "num_embeddings": r,
                    "feature_names": [f"cat_{t}"]} for t, r in enumerate((300, 200, 100))],
        "dense_in_features": 13, "dense_arch_layer_sizes": [32, 6],
        "over_arch_layer_sizes": [64, 32, 1], "dcn_num_layers": 1, "dcn_low_rank_dim": 5}


@pytest.mark.parametrize("variant", VARIANTS)
def test_torchrec_model_computes_our_predictions(built, tmp_path, variant):
    """Random (scaled) weights: torchrec's model with the exported state dict (strict) gives
    our NumPy logits and, through a sigmoid, the compiled model's predictions."""
    torch.set_num_threads(2)
    cfg, _, vm = built(variant)
    state = _random_state(cfg, 7)
    path = tmp_path / "trec.pt"
    save_torchrec_state_dict(path, cfg, state)
    model = _load_torchrec(cfg, path)
    batch = _batch(cfg, 5)
    logits = _torchrec_logits(model, batch, cfg.model.num_tables)
    assert logits.std() > 0.05, "the logits should spread: the comparison must be able to fail"
    _close(logits, logits_numpy(cfg, state, batch), "torchrec logits vs NumPy", rel=True)
    p = _predict(cfg, vm, state, batch)
    _close(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), p, "sigmoid(logits) vs ours")


@pytest.mark.parametrize("variant", VARIANTS)
def test_export_torchrec_command_on_a_trained_run(built, tmp_path, capsys, variant):
    cfg, run, vm = built(variant)
    out = tmp_path / "trec.pt"
    rc, stdout, _ = _run(capsys, "export-torchrec", "--checkpoint", run, "--out", out)
    assert rc == 0
    want_model = "DLRM" if variant == "dot" else "DLRM_DCN"
    assert f"torchrec {want_model} state_dict" in stdout and "logit" in stdout
    params = dict(np.load(run / "params.npz"))
    got = torch.load(out, weights_only=True)
    want = to_torchrec_state_dict(cfg, params)
    assert list(got) == list(want)
    for k, v in want.items():
        np.testing.assert_array_equal(got[k].numpy(), v, err_msg=k)
    model = _load_torchrec(cfg, out)
    batch = _batch(cfg, 9)
    logits = _torchrec_logits(model, batch, cfg.model.num_tables)
    _close(logits, logits_numpy(cfg, params, batch), "torchrec logits vs NumPy", rel=True)
    _close(1.0 / (1.0 + np.exp(-logits.astype(np.float64))), _predict(cfg, vm, params, batch),
           "sigmoid(logits) vs ours")


def test_export_torchrec_of_a_bf16_run_is_its_fp32_masters(built, tmp_path, capsys):
    cfg, run, _ = built("dcnv2-tiny", "bf16")
    out = tmp_path / "trec.pt"
    assert _run(capsys, "export-torchrec", "--checkpoint", run, "--out", out)[0] == 0
    params = dict(np.load(run / "params.npz"))  # the masters, rebuilt exactly from the halves
    got = torch.load(out, weights_only=True)
    for k, v in to_torchrec_state_dict(cfg, params).items():
        np.testing.assert_array_equal(got[k].numpy(), v, err_msg=k)
    # not bf16-rounded: the masters carry more than bf16's 8 bits
    w = got["inter_arch.crossnet.V_kernels.0"].numpy()
    assert (w.view(np.uint32) & 0xFFFF).any()
    _load_torchrec(cfg, out)


# ------------------------------------------------------------ export-onnx
@pytest.mark.parametrize("variant", ["dcnv2-tiny", "padded"])
def test_onnx_of_a_dcn_model(built, tmp_path, capsys, variant):
    import onnx
    import onnxruntime as ort

    from dlrm_tvm.interop.onnx_export import export_onnx, predict_numpy

    cfg, run, vm = built(variant)
    rc, stdout, _ = _run(capsys, "export-onnx", "--checkpoint", run, "--out",
                         tmp_path / "run.onnx", "--check")
    assert rc == 0 and "max difference" in stdout
    # random (scaled) weights: onnxruntime == NumPy == the compiled model
    state = _random_state(cfg, 11)
    path = export_onnx(cfg, state, tmp_path / "m.onnx")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    batch = _batch(cfg, 13)
    p = sess.run(["p"], {"dense": batch.dense, "indices": batch.indices,
                         "offsets": batch.offsets})[0]
    ours = _predict(cfg, vm, state, batch)
    assert ours.std() > 0.01, "the predictions should spread: the comparison must be able to fail"
    _close(p, ours, "onnxruntime vs compiled")
    _close(predict_numpy(cfg, state, batch), ours, "NumPy vs compiled")
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"MatMul", "Mul", "Add"} <= ops


# ------------------------------------------------------------ export-reference
def test_export_reference_of_a_dcn_model(built, tmp_path, capsys):
    """The reference's layout plus crossnet.* (torchrec's LowRankCrossNet names): strict-loads
    into the reference-structured DLRM with a crossnet (bench/torch_ref.build, which computes
    our predictions), not into the reference's own model (no DCN there), and reads back
    into dlrm-tvm exactly."""
    from dlrm_tvm.bench.torch_ref import build, torch_inputs
    from dlrm_tvm.interop.state_io import load_state

    cfg, run, vm = built("dcnv2-tiny")
    ref = tmp_path / "ref.pt"
    rc, stdout, _ = _run(capsys, "export-reference", "--checkpoint", run, "--out", ref)
    assert rc == 0 and "cannot load it" in stdout and "export-torchrec" in stdout
    ck = torch.load(ref, weights_only=True)
    sd = ck["state_dict"]
    L = cfg.model.dcn_num_layers
    assert [k for k in sd if k.startswith("crossnet.")] == [
        *(f"crossnet.W_kernels.{li}" for li in range(L)),
        *(f"crossnet.V_kernels.{li}" for li in range(L)),
        *(f"crossnet.bias.{li}" for li in range(L))]
    params = dict(np.load(run / "params.npz"))
    zeros = {k: np.zeros_like(v) for k, v in params.items()}
    model = build(cfg, zeros)
    model.load_state_dict(sd, strict=True)
    batch = _batch(cfg, 17)
    with torch.no_grad():
        dense, idx_l, off_l, _ = torch_inputs(batch, cfg.model.num_tables)
        p = model(dense, idx_l, off_l)[:, 0].numpy()
    _close(p, _predict(cfg, vm, params, batch), "reference layout + crossnet vs ours")
    # dlrm_s_pytorch.py's own model (no crossnet) refuses the cross layers under strict loading
    plain = build(cfg.replace(model=dataclasses.replace(cfg.model, interaction="cat")),
                  {k: v for k, v in zeros.items() if not k.startswith("cross")})
    with pytest.raises(RuntimeError, match="crossnet"):
        plain.load_state_dict(sd, strict=True)
    # read back: the same model and every parameter bit for bit
    cfg2, st2, desc = load_state(ref, cfg)
    assert desc["kind"] == "reference" and cfg2.model == cfg.model
    assert sorted(st2) == sorted(params)
    for k, v in params.items():
        np.testing.assert_array_equal(st2[k], v, err_msg=k)
    # and it goes on through the other exports
    rc, _, _ = _run(capsys, "export-torchrec", "--checkpoint", ref, "--config", "dcnv2-tiny",
                    "--out", tmp_path / "t.pt")
    assert rc == 0


# ------------------------------------------------------------ refused
def _reference_file(tmp_path, cfg: Config, name: str, **edit) -> str:
    from dlrm_tvm.interop.reference import save_reference_checkpoint

    state = _random_state(cfg, 1)
    path = tmp_path / name
    save_reference_checkpoint(path, cfg, state)
    if edit:
        ck = torch.load(path, weights_only=True)
        for k, v in edit.items():
            if v is None:
                del ck["state_dict"][k]
            else:
                ck["state_dict"][k] = v
        torch.save(ck, path)
    return str(path)


@pytest.mark.parametrize("op,flags,why", [
    ("cat", ["--arch-interaction-op", "cat"], "no cat interaction"),
    ("dot-itself", ["--arch-interaction-op", "dot", "--arch-interaction-itself"],
     "no diagonal"),
])
def test_export_torchrec_refuses_what_torchrec_has_not(tmp_path, capsys, op, flags, why):
    from dlrm_tvm.config import apply_overrides

    cfg = apply_overrides(PRESETS["tiny"], arch_interaction_op="cat" if op == "cat" else "dot",
                          arch_interaction_itself=op == "dot-itself")
    path = _reference_file(tmp_path, cfg, f"{op}.pt")
    out = tmp_path / "t.pt"
    rc, _, err = _run(capsys, "export-torchrec", "--checkpoint", path, *flags, "--out", out)
    assert rc == 2 and why in err and not out.exists()
    with pytest.raises(ValueError, match=why):
        to_torchrec_state_dict(cfg, {})


def test_export_torchrec_refuses_a_one_layer_top():
    cfg = PRESETS["dcnv2-tiny"]
    one = dataclasses.replace(cfg.model, mlp_top=(1,))
    with pytest.raises(ValueError, match="OverArch needs two or more"):
        torchrec_model_args(one)


@pytest.mark.parametrize("cmd", ["export-torchrec", "export-onnx", "export-reference"])
def test_damaged_dcn_checkpoint_is_named(built, tmp_path, capsys, cmd):
    _, run, _ = built("dcnv2-tiny")
    bad = tmp_path / "run"
    shutil.copytree(run, bad)
    (npz,) = bad.glob("checkpoints/step_*/mlp.npz")
    data = bytearray(npz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    npz.write_bytes(bytes(data))
    out = tmp_path / "x.out"
    rc, _, err = _run(capsys, cmd, "--checkpoint", bad, "--out", out)
    assert rc == 2 and "mlp.npz" in err and not out.exists()


def test_dcn_reference_file_errors(tmp_path, capsys):
    cfg = PRESETS["dcnv2-tiny"]
    out = tmp_path / "t.pt"
    # a DCN file read with a dot config: the message says which flag
    path = _reference_file(tmp_path, cfg, "dcn.pt")
    rc, _, err = _run(capsys, "export-torchrec", "--checkpoint", path, "--out", out)
    assert rc == 2 and "--arch-interaction-op dcn" in err and "dcn.pt" in err
    # a missing cross entry, and one of the wrong shape, are named
    path = _reference_file(tmp_path, cfg, "nobias.pt", **{"crossnet.bias.1": None})
    rc, _, err = _run(capsys, "export-torchrec", "--checkpoint", path, "--config", "dcnv2-tiny",
                      "--out", out)
    assert rc == 2 and "crossnet.bias.1" in err
    path = _reference_file(tmp_path, cfg, "shape.pt",
                           **{"crossnet.V_kernels.0": torch.zeros(32, 431)})
    rc, _, err = _run(capsys, "export-onnx", "--checkpoint", path, "--config", "dcnv2-tiny",
                      "--out", tmp_path / "m.onnx")
    assert rc == 2 and "cross layer 0" in err
    # non-finite cross parameters: a diverged model (exit status 3)
    nan = torch.zeros(432)
    nan[5] = float("nan")
    path = _reference_file(tmp_path, cfg, "nan.pt", **{"crossnet.bias.0": nan})
    rc, _, err = _run(capsys, "export-torchrec", "--checkpoint", path, "--config", "dcnv2-tiny",
                      "--out", out)
    assert rc == 3 and "non-finite" in err and "cross0_b" in err and not out.exists()


# ------------------------------------------------------------ import from torchrec
def _torchrec_file(tmp_path, cfg: Config, name: str, seed: int = 1, **edit) -> str:
    """A torchrec state dict file of random (scaled) weights; ``edit`` replaces entries
    (None deletes one)."""
    sd = {k: torch.from_numpy(v)
          for k, v in to_torchrec_state_dict(cfg, _random_state(cfg, seed)).items()}
    for k, v in edit.items():
        if v is None:
            del sd[k]
        else:
            sd[k] = v
    path = tmp_path / name
    torch.save(sd, path)
    return str(path)


def _assert_same_state(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == np.float32 and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)  # padding zeros included


@pytest.mark.parametrize("variant", VARIANTS)
def test_torchrec_file_reads_back_bit_exactly(built, tmp_path, capsys, variant):
    """export-torchrec of a trained run, then load_state: the run's config model and every
    parameter bit for bit, the zero padding of top0_w and the cross factors included, and the
    dot model's first top layer un-permuted; likewise random (scaled) weights and a
    DLRMTrain-wrapped ("model." prefixed) state dict."""
    from dlrm_tvm.interop.state_io import load_state
    from dlrm_tvm.interop.torchrec_export import from_torchrec_state_dict

    cfg, run, _ = built(variant)
    out = tmp_path / "trec.pt"
    assert _run(capsys, "export-torchrec", "--checkpoint", run, "--out", out)[0] == 0
    params = dict(np.load(run / "params.npz"))
    hint = PRESETS["tiny"]  # the shapes tell the whole model, whatever the hint says
    cfg2, st2, desc = load_state(out, hint)
    assert desc == {"kind": "torchrec", "path": str(out)}
    assert cfg2.model == dataclasses.replace(cfg.model, dcn_num_layers=(
        cfg.model.dcn_num_layers if cfg.model.interaction == "dcn"
        else hint.model.dcn_num_layers))
    _assert_same_state(st2, {"tables": params["tables"],
                             **{n: params[n] for n, _ in cfg.model.mlp_param_specs()}})
    if variant == "dot":  # the permutation is not the identity: a missing one would show
        n = cfg.model.interaction_width
        assert not np.array_equal(torch.load(out, weights_only=True)[
            "over_arch.model.0._mlp.0._linear.weight"].numpy(), params["top0_w"][:n].T)
    state = _random_state(cfg, 21)
    sd = to_torchrec_state_dict(cfg, state)
    m, st3 = from_torchrec_state_dict(sd, cfg)
    assert m == cfg.model
    _assert_same_state(st3, state)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"model." + k: torch.from_numpy(v) for k, v in sd.items()}, wrapped)
    _assert_same_state(load_state(wrapped, cfg)[1], state)


@pytest.mark.parametrize("variant,config", [("dcnv2-tiny", "dcnv2-tiny"), ("dot", "tiny")])
def test_eval_of_a_torchrec_file_is_eval_of_the_run(built, tmp_path, capsys, variant, config):
    import json

    _, run, _ = built(variant)
    trec = tmp_path / "trec.pt"
    assert _run(capsys, "export-torchrec", "--checkpoint", run, "--out", trec)[0] == 0
    res = {}
    for name, ckpt in (("run", run), ("trec", trec)):
        rc, _, err = _run(capsys, "eval", "--checkpoint", ckpt, "--config", config, "--out",
                          tmp_path / name, "--save-predictions", "--quiet")
        assert rc == 0, err
        res[name] = (np.load(tmp_path / name / "predictions.npy"),
                     json.loads((tmp_path / name / "summary.json").read_text()))
    (p_run, s_run), (p_trec, s_trec) = res["run"], res["trec"]
    assert p_run.size >= 128 and p_run.std() > 1e-4, "predictions must spread to tell apart"
    np.testing.assert_array_equal(p_trec, p_run)
    for k in ("auc", "loss", "accuracy", "rows"):
        assert s_trec[k] == s_run[k], k


def test_train_init_from_a_torchrec_file(built, tmp_path, capsys):
    cfg, run, _ = built("dcnv2-tiny")
    trec = tmp_path / "trec.pt"
    assert _run(capsys, "export-torchrec", "--checkpoint", run, "--out", trec)[0] == 0
    out = tmp_path / "cont"
    rc, _, err = _run(capsys, "train", "--config", "dcnv2-tiny", "--init-from", trec,
                      "--steps", "2", "--learning-rate", "1e-12", "--artifact",
                      run.parent / "artifact", "--save-params", "--quiet", "--out", out)
    assert rc == 0, err
    got, want = np.load(out / "params.npz"), np.load(run / "params.npz")
    assert sorted(got.files) == sorted(want.files)
    for k in want.files:  # two steps at lr 1e-12 leave the imported weights where they were
        np.testing.assert_allclose(got[k], want[k], atol=1e-9, err_msg=k)
    # a model other than the config's is refused, the flag named
    rc, _, err = _run(capsys, "train", "--config", "tiny", "--init-from", trec, "--steps", "1",
                      "--quiet", "--out", tmp_path / "bad")
    assert rc == 2 and "another model" in err


class _Payload:
    """Unpickling this makes a directory: the weights-only loader must refuse it first."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (self.marker,)


@pytest.mark.parametrize("case,cmd,cfg_name,edit,why", [
    ("missing", "export-torchrec", "dcnv2-tiny", {"inter_arch.crossnet.bias.1": None},
     ["inter_arch.crossnet.bias.1", "(432,)"]),
    ("missing-last", "eval", "dcnv2-tiny", {"over_arch.model.1.bias": None},
     ["over_arch.model.1.bias", "(1,)"]),
    ("missing-table", "export-onnx", "tiny",
     {"sparse_arch.embedding_bag_collection.embedding_bags.t_cat_3.weight": None},
     ["embedding_bags.t_cat_3.weight"]),
    ("shape", "export-torchrec", "dcnv2-tiny",
     {"inter_arch.crossnet.V_kernels.1": torch.zeros(32, 431)},
     ["inter_arch.crossnet.V_kernels.1", "(32, 431)", "(32, 432)"]),
    ("shape-dot", "train", "tiny",
     {"over_arch.model.0._mlp.0._linear.weight": torch.zeros(64, 368)},
     ["over_arch.model.0._mlp.0._linear.weight", "(64, 368)", "(64, 367)"]),
    ("extra", "export-reference", "dcnv2-tiny", {"inter_arch.crossnet.gamma.0": torch.zeros(3)},
     ["inter_arch.crossnet.gamma.0", "does not"]),
    ("extra-dot", "export-torchrec", "tiny", {"over_arch.model.2.weight": torch.zeros(1, 1)},
     ["over_arch.model.2.weight", "does not"]),
])
def test_bad_torchrec_files_are_named(tmp_path, capsys, case, cmd, cfg_name, edit, why):
    cfg = PRESETS[cfg_name]
    path = _torchrec_file(tmp_path, cfg, f"{case}.pt", **edit)
    out = tmp_path / "out"
    argv = {"train": ["train", "--init-from", path, "--steps", "2", "--quiet", "--out", out],
            "eval": ["eval", "--checkpoint", path, "--quiet", "--out", out]}.get(
        cmd, [cmd, "--checkpoint", path, "--out", out])
    rc, _, err = _run(capsys, *argv, "--config", cfg_name)
    assert rc == 2, err
    assert f"{case}.pt" in err and all(w in err for w in why), err
    assert cmd in ("train", "eval") or not out.exists()


def test_a_pickled_object_is_refused_not_unpickled(tmp_path, capsys):
    cfg = PRESETS["dcnv2-tiny"]
    marker = tmp_path / "unpickled"
    path = _torchrec_file(tmp_path, cfg, "evil.pt",
                          **{"inter_arch.crossnet.bias.0": _Payload(str(marker))})
    for argv in (["export-torchrec", "--checkpoint", path, "--out", tmp_path / "t.pt"],
                 ["train", "--init-from", path, "--steps", "2", "--quiet", "--out",
                  tmp_path / "r"]):
        rc, _, err = _run(capsys, *argv, "--config", "dcnv2-tiny")
        assert rc == 2 and "weights_only" in err and "evil.pt" in err, err
        assert not marker.exists()
    # a whole pickled object (no tensors at all) too
    obj = tmp_path / "obj.pt"
    torch.save(_Payload(str(marker)), obj)
    rc, _, err = _run(capsys, "eval", "--checkpoint", obj, "--config", "dcnv2-tiny",
                      "--out", tmp_path / "e")
    assert rc == 2 and "weights_only" in err and not marker.exists()
