"""BF16 training with Split-SGD-BF16 (runs on any CPU: without avx512_bf16 the bf16 GEMMs are
scheduled by the fp32-compute rules; the instruction itself is tested in test_gemm_bf16.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from dlrm_tvm.runtime.trainer import Trainer

from dlrm_tvm import cli
from dlrm_tvm.config import PRESETS
from dlrm_tvm.data import SyntheticData


def _cfg(precision, interaction="dot"):
    base = PRESETS["tiny"]
    return base.replace(
        model=dataclasses.replace(base.model, interaction=interaction),
        train=dataclasses.replace(base.train, precision=precision, learning_rate=0.5, seed=2),
        data=dataclasses.replace(base.data, labels="teacher"),
    )


@pytest.mark.parametrize("interaction", ["dot", "cat"])
def test_bf16_200_steps_within_1_percent_of_fp32(compiled, interaction):
    losses = {}
    for prec in ("fp32", "bf16"):
        cfg = _cfg(prec, interaction)
        vm, res = compiled(cfg)
        if prec == "bf16":
            assert any(k.endswith("_bf16") and v["op"] == "gemm"
                       for k, v in res.schedules.items())
        tr = Trainer(cfg, vm)
        data = SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=4)
        losses[prec] = [tr.step(data.next_batch())["loss"] for _ in range(200)]
    f32, b16 = np.mean(losses["fp32"][-20:]), np.mean(losses["bf16"][-20:])
    assert np.isfinite(losses["bf16"]).all()
    assert f32 < 0.65, "the fp32 run did not learn: the comparison would be empty"
    assert abs(b16 - f32) <= 0.01 * f32, f"bf16 {b16:.5f} vs fp32 {f32:.5f}"


def test_bf16_trainer_keeps_exact_fp32_masters(compiled):
    cfg = _cfg("bf16")
    vm, _ = compiled(cfg)
    tr = Trainer(cfg, vm)
    init = tr.state()
    fresh = Trainer(cfg.replace(train=dataclasses.replace(cfg.train, precision="fp32")),
                    compiled(_cfg("fp32"))[0]).state()
    for name, a in fresh.items():  # the split halves rebuild the fp32 init bit for bit
        assert np.array_equal(init[name].view(np.uint32), a.view(np.uint32)), name
    tr.step(SyntheticData(cfg.model, cfg.data, cfg.train.batch_size, seed=1).next_batch())
    after = tr.state()
    assert not np.array_equal(after["tables"], init["tables"])
    # Split-SGD rows: each row's bf16 high halves then its low halves, one place per row
    tab = tr.tables.numpy()
    assert tab.dtype.itemsize == 2 and tab.shape == (cfg.model.total_rows,
                                                     2 * cfg.model.embedding_dim)


def test_artifact_precision_must_match(tmp_path, capsys):
    art = tmp_path / "a"
    assert cli.main(["compile", "--config", "tiny", "--precision", "bf16", "--out",
                     str(art)]) == 0
    assert cli.main(["train", "--artifact", str(art), "--precision", "fp32", "--steps", "1",
                     "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "bf16" in capsys.readouterr().err
    assert cli.main(["train", "--artifact", str(art), "--steps", "3", "--out",
                     str(tmp_path / "r2"), "--quiet"]) == 0
