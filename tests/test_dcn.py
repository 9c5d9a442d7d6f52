"""DLRM-DCNv2's cross layers (interaction "dcn", docs/dcn.md): each elementwise kernel against
its NumPy oracle, the whole model against torchrec's DLRM_DCN semantics in torch (fp32 SGD,
20 steps), predict, bf16 against fp32, 2 ranks against 1, and the config/CLI surface."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import tvm
from dlrm_tvm.graphs import ops_dcn
from dlrm_tvm.graphs import reference as ref
from dlrm_tvm.runtime.trainer import Trainer
from dlrm_tvm.schedules import rules_for, schedule_func

from dlrm_tvm import cli
from dlrm_tvm.config import PRESETS, Config, ConfigError, apply_overrides
from dlrm_tvm.data import SyntheticData
from dlrm_tvm.targets import resolve_target

TARGET = resolve_target("host").tvm_target()
RULES = rules_for(TARGET)
DEV = tvm.cpu()
BF16 = "bfloat16"


# ---------------------------------------------------------------- kernels vs NumPy oracles


def _build(func):
    sched, rule = schedule_func(func, TARGET, RULES)
    assert rule == "dcn_elementwise_rows", rule
    return tvm.compile(tvm.IRModule({"main": sched.with_attr("global_symbol", "main")}),
                       target=TARGET)


def _run(lib, inputs, outs):
    """``outs``: [(shape, dtype)]; every output starts as NaN and must come back written."""
    import ml_dtypes

    tin = [tvm.runtime.tensor(np.ascontiguousarray(a), DEV) for a in inputs]
    tout = [tvm.runtime.tensor(np.full(s, np.nan, ml_dtypes.bfloat16 if dt == BF16
                                       else np.float32), DEV) for s, dt in outs]
    lib["main"](*tin, *tout)
    res = [t.numpy().astype(np.float32) for t in tout]
    for i, o in enumerate(res):
        assert not np.isnan(o).any(), f"output {i}: {int(np.isnan(o).sum())} never written"
    return res


def _rand(g, shape):
    a = g.standard_normal(shape).astype(np.float32)
    a[a == 0] = 0.5
    return a


def _close(got, want, act, scale):
    """Each element within a few fp32 ulps of ``scale`` (the sum of its terms' magnitudes: the
    kernel may fuse a multiply-add, and a sum may cancel), plus bf16's half ulp of the result
    for a bf16 output."""
    err = np.abs(got.astype(np.float64) - want)
    bound = 4 * 2.0**-24 * scale + (2.0**-8 * np.abs(want) if act == BF16 else 0)
    assert (err <= bound).all(), f"max error {err.max():.3e}, {int((err > bound).sum())} over"


SHAPES = [(5, 37), (8, 48), (3, 16)]  # odd (columns not whole vectors), whole vectors


@pytest.mark.parametrize("b,n", SHAPES)
@pytest.mark.parametrize("act,keep", [("float32", True), (BF16, True), (BF16, False)],
                         ids=["fp32", "bf16", "bf16-last"])
def test_cross_fwd_kernel(b, n, act, keep):
    g = np.random.default_rng([15, b, n])
    x0, z, xl = (_rand(g, (b, n)) for _ in range(3))
    outs = ([((b, n), "float32")] if keep else []) + ([((b, n), act)] if act == BF16 else [])
    got = _run(_build(ops_dcn.cross_fwd(b, n, act, keep)), [x0, z, xl], outs)
    want = ref.cross_fwd(x0, z, xl)
    for o, (_, dt) in zip(got, outs, strict=True):
        _close(o, want, dt, np.abs(x0 * z) + np.abs(xl))


@pytest.mark.parametrize("b,n", SHAPES)
@pytest.mark.parametrize("act", ["float32", BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("has_g,has_acc", [(False, False), (True, True), (True, False),
                                           (False, True)], ids=["last", "g-acc", "g", "acc"])
def test_cross_bwd_kernel(b, n, act, has_g, has_acc):
    rng = np.random.default_rng([16, b, n, has_g, has_acc])
    a, g, x0, z, acc = (_rand(rng, (b, n)) for _ in range(5))
    ins = [a] + [g] * has_g + [x0, z] + [acc] * has_acc
    outs = [((b, n), "float32")] * has_g + [((b, n), act), ((b, n), "float32")]
    got = _run(_build(ops_dcn.cross_bwd(b, n, act, has_g, has_acc)), ins, outs)
    dxn, dz, acc2 = ref.cross_bwd(a, g if has_g else None, x0, z, acc if has_acc else None)
    want = ([dxn] if has_g else []) + [dz, acc2]
    scales = ([np.abs(a) + np.abs(g)] if has_g else []) + [
        np.abs(dz), np.abs(dxn * z) + (np.abs(acc) if has_acc else 0)]
    for o, w, (_, dt), sc in zip(got, want, outs, scales, strict=True):
        _close(o, w, dt, sc)


@pytest.mark.parametrize("b,t,d,n", [(5, 3, 6, 32), (4, 26, 16, 432), (3, 1, 3, 6)])
def test_cross_input_bwd_kernel(b, t, d, n):
    rng = np.random.default_rng([17, b, t, d])
    acc, a, g = (_rand(rng, (b, n)) for _ in range(3))
    got = _run(_build(ops_dcn.cross_input_bwd(b, t, d, n)), [acc, a, g],
               [((b, d), "float32"), ((b, t, d), "float32")])
    sc = ref.cross_input_bwd(np.abs(acc), np.abs(a), np.abs(g), t, d)
    for o, w, s in zip(got, ref.cross_input_bwd(acc, a, g, t, d), sc, strict=True):
        _close(o, w, "float32", s)


def test_cross_net_oracle_is_torchrecs_low_rank_cross_net():
    """The float64 oracle of the whole cross net (forward and the hand-written backward that
    graphs/dlrm.py builds) against torch autograd through the LowRankCrossNet of torch_ref."""
    import torch

    from dlrm_tvm.bench.torch_ref import low_rank_cross_net

    rng = np.random.default_rng(18)
    b, n, r, L = 6, 20, 3, 3
    net = low_rank_cross_net(n, L, r).double()
    with torch.no_grad():
        for li in range(L):
            net.bias[li].copy_(torch.from_numpy(rng.standard_normal(n)))
    x0 = rng.standard_normal((b, n))
    dy = rng.standard_normal((b, n))
    params = [(net.V_kernels[li].detach().numpy().T, net.W_kernels[li].detach().numpy().T,
               net.bias[li].detach().numpy()) for li in range(L)]
    y, dx0, grads = ref.cross_net(x0, params, dy)
    xt = torch.from_numpy(x0).requires_grad_()
    yt = net(xt)
    yt.backward(torch.from_numpy(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(dx0, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for li, (du, dv, db) in enumerate(grads):
        np.testing.assert_allclose(du, net.V_kernels[li].grad.numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dv, net.W_kernels[li].grad.numpy().T, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(db, net.bias[li].grad.numpy(), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- config, layout, init


def test_dcn_config_flags_and_layout():
    cfg = apply_overrides(PRESETS["tiny"], arch_interaction_op="dcn", dcn_num_layers=2,
                          dcn_low_rank_dim=8)
    m = cfg.model
    assert (m.interaction, m.num_cross_layers, m.dcn_low_rank_dim) == ("dcn", 2, 8)
    assert m.interaction_width == 27 * 16 == m.interaction_width_padded
    names = [n for n, _ in m.mlp_param_specs()]
    assert names[:4] == ["bot0_w", "bot0_b", "bot1_w", "bot1_b"]
    assert names[4:10] == ["cross0_u", "cross0_v", "cross0_b", "cross1_u", "cross1_v",
                           "cross1_b"]
    assert names[10:] == ["top0_w", "top0_b", "top1_w", "top1_b"]
    shapes = dict(m.mlp_param_specs())
    assert shapes["cross1_u"] == (432, 8) and shapes["cross1_v"] == (8, 432)
    assert shapes["cross1_b"] == (432,)
    dot = PRESETS["tiny"].model
    assert dot.num_cross_layers == 0 and not any(n.startswith("cross") for n, _ in
                                                 dot.mlp_param_specs())
    cross = 2 * (2 * 432 * 8 + 432)  # L (u, v, b) at the true width
    top0 = (432 - dot.interaction_width) * 64  # the first top layer's wider input
    assert m.mlp_param_count() == dot.mlp_param_count() + top0 + cross
    args = cli.build_parser().parse_args(["train", "--arch-interaction-op", "dcn",
                                          "--dcn-num-layers", "4", "--dcn-low-rank-dim", "64"])
    assert (args.arch_interaction_op, args.dcn_num_layers, args.dcn_low_rank_dim) == \
        ("dcn", 4, 64)
    for bad in ({"dcn_num_layers": 0}, {"dcn_low_rank_dim": -1}):
        with pytest.raises(ConfigError, match="dcn_"):
            dataclasses.replace(m, **bad)
    # a checkpoint's config from before the fields existed reads with their defaults
    d = PRESETS["tiny"].to_dict()
    del d["model"]["dcn_num_layers"], d["model"]["dcn_low_rank_dim"]
    assert Config.from_dict(d) == PRESETS["tiny"]
    c = Config.from_dict(json.loads(json.dumps(PRESETS["dcnv2-tiny"].to_dict())))
    assert c == PRESETS["dcnv2-tiny"]


@pytest.mark.parametrize("flag", ["--dcn-num-layers", "--dcn-low-rank-dim"])
def test_dcn_flags_refuse_zero(capsys, flag):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", flag, "0"])
    assert e.value.code == 2 and f"argument {flag}:" in capsys.readouterr().err


def test_cross_init_is_torchrecs():
    """xavier-normal kernels (std sqrt(2 / (N + r))), zero bias, padded entries zero."""
    from dlrm_tvm.runtime.params import init_mlp

    m = dataclasses.replace(PRESETS["dcnv2-tiny"].model, embedding_dim=6, mlp_bot=(13, 64, 6),
                            table_rows=(50,) * 3, dcn_low_rank_dim=200, dcn_num_layers=1)
    n, npad = m.interaction_width, m.interaction_width_padded
    assert (n, npad) == (24, 32)
    p = init_mlp(m, 5)
    std = np.sqrt(2.0 / (n + 200))
    for name in ("cross0_u", "cross0_v"):
        w = p[name][:n] if name.endswith("u") else p[name][:, :n]
        assert abs(w.std() / std - 1) < 0.05, name
        assert abs(w.mean()) < 0.1 * std
    assert not p["cross0_u"][n:].any() and not p["cross0_v"][:, n:].any()
    assert not p["cross0_b"].any()
    assert not np.array_equal(init_mlp(m, 6)["cross0_u"], p["cross0_u"])


def test_kernels_list_has_a_rule_per_dcn_kernel(tmp_path):
    out = tmp_path / "list.json"
    assert cli.main(["kernels", "list", "--config", "dcnv2-tiny", "--json", str(out)]) == 0
    kernels = json.loads(out.read_text())["kernels"]
    cross = {k["kernel"]: k["chosen"] for k in kernels if k["op"].startswith("cross_")}
    assert set(cross) == {"cross_fwd_128x432", "cross_bwd_128x432",
                          "cross_bwd_128x432_g_acc", "cross_input_bwd"}
    assert set(cross.values()) == {"dcn_elementwise_rows"}
    gemms = [k for k in kernels if k["op"] == "gemm"]
    assert any(k["kernel"] == "gemm_fwd_128x432x32_none" for k in gemms)
    assert all(k["chosen"] for k in kernels)


# ---------------------------------------------------------------- the model vs torch


def _variant(name: str, **model) -> Config:
    base = PRESETS["dcnv2-tiny"]
    data = {}
    if model.pop("varied", False):
        data = dict(num_indices_per_lookup=4, num_indices_per_lookup_fixed=False)
    return base.replace(model=dataclasses.replace(base.model, **model),
                        data=dataclasses.replace(base.data, **data),
                        train=dataclasses.replace(base.train, learning_rate=0.5, seed=3))


VARIANTS = {
    "dcnv2-tiny": {},
    # D 6, 3 tables: N = 24 padded to 32 (the padded entries must stay zero); an odd rank; one
    # layer; 1 to 4 lookups per bag
    "padded-r5-L1": dict(table_rows=(300, 200, 100), embedding_dim=6, mlp_bot=(13, 32, 6),
                         dcn_num_layers=1, dcn_low_rank_dim=5, varied=True),
    "L3-r16": dict(dcn_num_layers=3, dcn_low_rank_dim=16, table_rows=(1000,) * 8),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dcn_training_matches_torch(compiled, variant):
    import torch
    from test_model_vs_torch import _compare_states

    from dlrm_tvm.bench.torch_ref import TorchTrainer

    torch.set_num_threads(2)
    cfg = _variant(variant, **VARIANTS[variant])
    vm, _ = compiled(cfg)
    ours = Trainer(cfg, vm)
    init = ours.state()
    tt = TorchTrainer(cfg, init)
    data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=11)
    batches = [data.next_batch() for _ in range(20)]
    for step, batch in enumerate(batches):
        lo = ours.step(batch)["loss"]
        lr = tt.step(batch)
        assert abs(lo - lr) <= 1e-5 * abs(lr), f"step {step}: loss {lo} vs torch {lr}"
    got, want = ours.state(), tt.state()
    _compare_states(got, want, cfg.model)
    m = cfg.model
    n = m.interaction_width
    for li in range(m.dcn_num_layers):
        # the cross layers really trained, and their padded entries stayed zero
        assert np.abs(got[f"cross{li}_v"] - init[f"cross{li}_v"]).max() > 1e-4
        assert np.abs(got[f"cross{li}_b"]).max() > 1e-4
        assert not got[f"cross{li}_u"][n:].any() and not got[f"cross{li}_v"][:, n:].any()
        assert not got[f"cross{li}_b"][n:].any()
    # predict is torch's forward (the sigmoid of the logit) on the trained weights
    p = ours.predict(batches[0])
    with torch.no_grad():
        from dlrm_tvm.bench.torch_ref import torch_inputs

        dense, idx_l, off_l, _ = torch_inputs(batches[0], m.num_tables)
        pt = tt.model(dense, idx_l, off_l)[:, 0].numpy()
    np.testing.assert_allclose(p, pt, rtol=1e-5, atol=1e-6)


def test_dcn_bf16_200_steps_within_1_percent_of_fp32(compiled):
    """As test_bf16_training.py for dot and cat: Split-SGD-BF16 with the bf16 GEMMs (the
    vdpbf16ps microkernel on packed operands where the host has avx512_bf16, else the fp32
    rules on bf16 operands) against fp32, teacher labels."""
    base = PRESETS["dcnv2-tiny"]
    losses = {}
    for prec in ("fp32", "bf16"):
        cfg = base.replace(
            train=dataclasses.replace(base.train, precision=prec, learning_rate=0.5, seed=2),
            data=dataclasses.replace(base.data, labels="teacher"))
        vm, res = compiled(cfg)
        if prec == "bf16":
            assert res.schedules["cross_fwd_128x432_bf16"]["rule"] == "dcn_elementwise_rows"
        tr = Trainer(cfg, vm)
        data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=4)
        losses[prec] = [tr.step(data.next_batch())["loss"] for _ in range(200)]
    f32, b16 = np.mean(losses["fp32"][-20:]), np.mean(losses["bf16"][-20:])
    assert np.isfinite(losses["bf16"]).all()
    assert f32 < 0.65, "the fp32 run did not learn: the comparison would be empty"
    assert abs(b16 - f32) <= 0.01 * f32, f"bf16 {b16:.5f} vs fp32 {f32:.5f}"


@pytest.mark.mpi
def test_dcn_two_ranks_compute_what_one_rank_computes(tmp_path, compiled):
    """The cross layers' gradients go through the per-layer allreduce hook (du, dv, db):
    2 ranks train what 1 rank trains (losses and every parameter to 1e-5, 20 steps)."""
    from test_distributed import (
        MPIEXEC,
        _assert_one_rank_computes_the_same,
        _train_on_ranks,
    )

    if MPIEXEC is None:
        pytest.skip("no mpiexec on PATH")
    extra = ["--dcn-num-layers", "2", "--dcn-low-rank-dim", "32"]
    out, _, _ = _train_on_ranks(tmp_path, 2, "dcn", "table", extra)
    cfg = _assert_one_rank_computes_the_same(out, compiled, "dcn", extra)
    assert cfg.model.num_cross_layers == 2
    assert "cross1_v" in np.load(out / "params.npz")
