"""Evaluation (exact AUC), checkpoints (atomic, bit-exact resume, resharding) and --target-auc.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dlrm_tvm.config import apply_overrides, load_config
from dlrm_tvm.metrics import bce, evaluate_predictions, roc_auc

MPIEXEC = shutil.which("mpiexec")


# ------------------------------------------------------------------ metrics
def _auc_pairs(y, s):
    pos, neg = s[y == 1], s[y == 0]
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return gt / (pos.size * neg.size)


def test_auc_is_exact_with_ties():
    rng = np.random.default_rng(3)
    for n, decimals in ((50, 1), (999, 2), (2000, 6)):
        y = rng.integers(0, 2, n)
        s = np.round(rng.random(n) * 0.5 + 0.3 * y, decimals)  # informative, with ties
        assert roc_auc(y, s) == pytest.approx(_auc_pairs(y, s), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_loss_and_accuracy():
    y = np.array([1, 0, 1, 0], np.float32)
    p = np.array([0.9, 0.2, 0.4, 0.6], np.float32)
    want = -np.mean(np.log([0.9, 0.8, 0.4, 0.4]))
    assert bce(y, p) == pytest.approx(want, rel=1e-6)
    r = evaluate_predictions(y, p)
    assert r["accuracy"] == 0.5 and r["rows"] == 4
    assert bce([1.0], [0.0]) == pytest.approx(100.0)  # clamped like torch


def test_pad_batch_keeps_the_real_rows():
    from dlrm_tvm.data import SyntheticData
    from dlrm_tvm.evaluate import pad_batch

    cfg = apply_overrides(load_config("tiny"), num_indices_per_lookup=4,
                          num_indices_per_lookup_fixed=False, mini_batch_size=40)
    b = SyntheticData(cfg.model, cfg.data, 40, 2).next_batch()
    T = cfg.model.num_tables
    full = pad_batch(b, 128, T)
    from dlrm_tvm.data import validate_batch

    validate_batch(full, cfg.model, 128)
    np.testing.assert_array_equal(full.dense[:40], b.dense)
    for t in range(T):
        for i in (0, 39):
            want = b.indices[b.offsets[t * 40 + i]:b.offsets[t * 40 + i + 1]]
            got = full.indices[full.offsets[t * 128 + i]:full.offsets[t * 128 + i + 1]]
            np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------ one rank, in process
def _train(tmp, name, steps, **kw):
    from dlrm_tvm.train import RunOptions, train

    opt_keys = {"checkpoint_every", "resume", "eval_every", "target_auc", "eval_batches"}
    opts = RunOptions(save_params=True, **{k: v for k, v in kw.items() if k in opt_keys})
    cfg = apply_overrides(load_config("tiny"), steps=steps,
                          **{k: v for k, v in kw.items() if k not in opt_keys})
    out = tmp / name
    summary = train(cfg, out, quiet=True, opts=opts)
    return out, summary, np.load(out / "params.npz")


@pytest.mark.parametrize("optimizer,precision", [("sgd", "fp32"), ("rwsadagrad", "fp32"),
                                                 ("sgd", "bf16")])
def test_resume_equals_uninterrupted_bit_exact(tmp_path, optimizer, precision):
    # bf16: the checkpoint holds fp32 masters; the Split-SGD halves are rebuilt exactly
    full, s_full, p_full = _train(tmp_path, "full", 12, optimizer=optimizer,
                                  checkpoint_every=5, num_indices_per_lookup=3,
                                  num_indices_per_lookup_fixed=False, precision=precision)
    # continue from step 5 in a fresh run directory
    from dlrm_tvm.runtime import checkpoint as ck

    man = ck.read_manifest(full / "checkpoints")
    assert man["step"] == 12 and (full / "checkpoints" / "step_000010").exists()
    assert not (full / "checkpoints" / "step_000005").exists()  # keep=2: 10 and 12
    _, s_res, p_res = _train(tmp_path, "res", 12, optimizer=optimizer,
                             resume=str(full / "checkpoints" / "step_000010"),
                             num_indices_per_lookup=3, num_indices_per_lookup_fixed=False,
                             precision=precision)
    assert s_res["first_step"] == 10 and s_res["steps"] == 12
    for k in p_full.files:
        np.testing.assert_array_equal(p_res[k], p_full[k], err_msg=k)
    assert s_res["final_loss"] == s_full["final_loss"]


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path):
    from dlrm_tvm.runtime import checkpoint as ck

    out = tmp_path / "run"
    env = dict(os.environ, DLRM_TVM_CKPT_FAULT="0:10")
    p = subprocess.run([sys.executable, "-m", "dlrm_tvm", "train", "--config", "tiny",
                        "--steps", "15", "--checkpoint-every", "5", "--quiet", "--no-eval",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]  # killed in the middle of step 10's write
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_000005"
    assert list((out / "checkpoints").glob("step_000010.tmp-*"))  # the torn write
    man = ck.read_manifest(out)
    assert man["step"] == 5
    # it loads, and training goes on from it to the same end as a run never interrupted
    p2 = subprocess.run([sys.executable, "-m", "dlrm_tvm", "train", "--config", "tiny",
                         "--steps", "15", "--checkpoint-every", "5", "--quiet", "--no-eval",
                         "--out", str(out), "--resume", "--save-params"],
                        capture_output=True, text=True, timeout=300)
    assert p2.returncode == 0, p2.stderr[-2000:]
    assert not list((out / "checkpoints").glob("*.tmp-*"))  # cleaned up
    _, _, ref = _train(tmp_path, "ref", 15)
    got = np.load(out / "params.npz")
    for k in ref.files:
        np.testing.assert_array_equal(got[k], ref[k], err_msg=k)


def test_resume_refuses_another_model(tmp_path):
    from dlrm_tvm.config import ConfigError

    full, _, _ = _train(tmp_path, "a", 3, checkpoint_every=3)
    with pytest.raises(ConfigError, match="different model"):
        _train(tmp_path, "b", 6, resume=str(full), arch_sparse_feature_size=8,
               arch_mlp_bot="13-64-8")


def test_resume_refuses_another_seed_or_another_data(tmp_path):
    """--resume --seed 7 changed the teacher task and the stream (held-out AUC 0.73 -> 0.56),
    and another --data-path put other ids under the learned rows (were): both are refused."""
    from dlrm_tvm.config import ConfigError
    from dlrm_tvm.data.criteo import write_synthetic_raw

    full, _, _ = _train(tmp_path, "a", 3, checkpoint_every=3)
    with pytest.raises(ConfigError, match="trained with seed 0, not 7"):
        _train(tmp_path, "b", 6, resume=str(full), seed=7)
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    write_synthetic_raw(a, 300, seed=1)
    write_synthetic_raw(b, 300, seed=2)
    kw = {"data": "criteo-kaggle", "max_ind_range": 1000, "arch_embedding_size": "1000-" * 25
          + "1000"}
    crit, _, _ = _train(tmp_path, "c", 2, checkpoint_every=2, data_path=str(a), **kw)
    with pytest.raises(ConfigError, match="trained on data path"):
        _train(tmp_path, "d", 4, resume=str(crit), data_path=str(b), **kw)


def test_eval_and_target_auc(tmp_path):
    out, s, _ = _train(tmp_path, "t", 40, labels="teacher", eval_every=4, target_auc=0.55,
                       eval_batches=2)
    ev = [json.loads(x)["eval"] for x in (out / "metrics.jsonl").read_text().splitlines()
          if "eval" in x]
    assert ev and all(0.0 < e["auc"] < 1.0 and e["rows"] == 256 for e in ev)
    reached = s["target_auc"]["reached"]
    assert reached is not None and reached["auc"] >= 0.55 and reached["step"] % 4 == 0
    assert s["steps"] == reached["step"] < 40  # it stopped there
    assert [e["step"] for e in ev].count(reached["step"]) == 1  # and evaluated it once
    assert 0.0 < s["eval"]["auc"] < 1.0


# ------------------------------------------------------------------ ranks
@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_two_rank_resume_bit_exact_and_reshard_to_one_rank(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    base = [sys.executable, "-m", "dlrm_tvm", "train", "--config", "tiny", "--steps", "10",
            "--quiet", "--no-eval", "--save-params", "--sharding", "row"]

    def run(cmd):
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]

    run([MPIEXEC, "-n", "2", *base, "--checkpoint-every", "5", "--out", str(tmp_path / "a")])
    ck5 = str(tmp_path / "a" / "checkpoints" / "step_000005")
    man = json.loads((tmp_path / "a" / "checkpoints" / "step_000005" / "manifest.json")
                     .read_text())
    assert man["ranks"] == 2 and len(man["shards"]) == 52  # 26 tables cut in 2 row ranges
    run([MPIEXEC, "-n", "2", *base, "--resume", ck5, "--out", str(tmp_path / "b")])
    run([*base, "--resume", ck5, "--out", str(tmp_path / "c")])  # 1 rank reads 2 ranks' shards
    a, b, c = (np.load(tmp_path / x / "params.npz") for x in "abc")
    for k in a.files:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
        scale = max(float(np.abs(a[k]).max()), 1e-30)
        assert float(np.abs(c[k] - a[k]).max()) / scale < 1e-5, k


def test_plot_draws_the_curves(tmp_path):
    out, _, _ = _train(tmp_path, "p", 8, labels="teacher", eval_every=4)
    p = subprocess.run([sys.executable, "-m", "dlrm_tvm", "plot", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    png = out / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    bad = subprocess.run([sys.executable, "-m", "dlrm_tvm", "plot", str(tmp_path / "none")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "metrics.jsonl" in bad.stderr


@pytest.mark.parametrize("line,says", [("[1, 2]", "a JSON object, this is a list"),
                                       ('{"step": "x", "loss": 1}', "step and loss as numbers"),
                                       ('{"eval": {"step": 1}}', "eval.step, loss, auc")])
def test_plot_refuses_a_malformed_metrics_line_naming_it(line, says, tmp_path, capsys):
    """A metrics line of the wrong shape (was: a traceback) is refused with file:line."""
    from dlrm_tvm import cli

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 0.7}\n' + line + "\n")
    assert cli.main(["plot", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "metrics.jsonl:2" in err and says in err, err
