"""Criteo rows end to end through the commands: train, eval, preprocess, export-onnx,
export-reference, and their errors. The parsers themselves: tests/test_criteo.py.

The real sample rows (``criteo_sample`` fixture, tests/conftest.py) are used where the test is
about them, and skip without them; the rest run on generated Kaggle-format rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm.data.criteo import write_synthetic_raw

MPIEXEC = shutil.which("mpiexec")


def _cli(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "dlrm_tvm", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def _kaggle_rows(path: Path, rows: int = 100, seed: int = 35) -> Path:
    """Generated rows in the raw Kaggle format (some lines with stripped trailing fields).
    Seed 35: the 7 held-out rows of 100 (86..92) hold both labels, so their AUC is a number."""
    write_synthetic_raw(path, rows, seed=seed, terabyte_style=False)
    return path


def _train_run(out: Path, raw: Path) -> Path:
    """tiny trained 12 steps on a raw Kaggle-format file (preprocessed on the fly)."""
    p = _cli("train", "--config", "tiny", "--data", "criteo-kaggle", "--data-path", str(raw),
             "--mini-batch-size", "32", "--steps", "12", "--eval-every", "6",
             "--checkpoint-every", "12", "--save-params", "--quiet", "--out", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def kaggle_run(tmp_path_factory, criteo_sample):
    """A run on the real Kaggle rows (skips without them)."""
    return _train_run(tmp_path_factory.mktemp("k") / "run", criteo_sample / "train.tsv")


@pytest.fixture(scope="module")
def generated_run(tmp_path_factory):
    """The same run on 100 generated Kaggle-format rows: for tests that need a trained
    checkpoint and its data, not the real rows."""
    d = tmp_path_factory.mktemp("g")
    return _train_run(d / "run", _kaggle_rows(d / "train.tsv"))


def test_train_and_evaluate_on_real_rows(kaggle_run):
    s = json.loads((kaggle_run / "summary.json").read_text())
    assert s["data"]["kind"] == "criteo-kaggle" and s["data"]["train_rows"] == 86
    assert s["data"]["held_out_rows"] == 7 and s["data"]["skipped_lines"] == 0
    # 7 held-out rows (day 6's first half): a number, which may reach 1.0 on so few
    assert 0.0 <= s["eval"]["auc"] <= 1.0 and s["eval"]["rows"] == 7
    assert np.isfinite(s["final_loss"])
    meta = json.loads((kaggle_run / "data" / "meta.json").read_text())
    assert meta["rows"] == 100
    evals = [json.loads(x) for x in (kaggle_run / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in x]
    assert [e["eval"]["step"] for e in evals] == [6, 12]


def test_eval_command_on_the_test_file_in_file_order(kaggle_run, criteo_sample, tmp_path):
    out = tmp_path / "e"
    p = _cli("eval", "--checkpoint", str(kaggle_run), "--config", "tiny", "--data",
             "criteo-kaggle", "--data-path", str(criteo_sample / "test.tsv"), "--mini-batch-size",
             "32", "--out", str(out), "--save-predictions")
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["rows"] == 100 and 0.0 < s["auc"] < 1.0  # every row, 39 with stripped fields
    pred = np.load(out / "predictions.npy")
    assert pred.shape == (100,) and ((pred > 0) & (pred < 1)).all()
    # file order: the predictions equal our model on the rows read in order
    from dlrm_tvm.config import load_config
    from dlrm_tvm.data.criteo import make_batch, read_raw
    from dlrm_tvm.interop.onnx_export import predict_numpy
    from dlrm_tvm.interop.state_io import load_state

    cfg, state, _ = load_state(kaggle_run, load_config("tiny"))
    chunk, stats = read_raw(criteo_sample / "test.tsv")
    assert stats.padded == 39
    # the training run remapped its ids (mapping.npz): eval gives the test rows the same ids
    from dlrm_tvm.data.criteo import CategoryMap

    ids = CategoryMap.load(kaggle_run / "data" / "mapping.npz").map(chunk.cats, add=False)
    want = predict_numpy(cfg, state, make_batch(chunk.to_rows(ids), cfg.model.table_rows))
    np.testing.assert_allclose(pred, want, atol=1e-5)
    labels = chunk.labels.astype(np.float32)
    from dlrm_tvm.metrics import roc_auc

    assert s["auc"] == pytest.approx(roc_auc(labels, want), abs=1e-6)


def test_bad_lines_stop_with_file_and_line_or_are_skipped_and_counted(tmp_path):
    lines = _kaggle_rows(tmp_path / "rows.tsv").read_text().splitlines()
    bad = tmp_path / "bad.tsv"
    lines[40] = lines[40].replace("\t", "\tzz", 1)  # a count that is not a number
    bad.write_text("\n".join(lines) + "\n")
    args = ["train", "--config", "tiny", "--data", "criteo-kaggle", "--data-path", str(bad),
            "--mini-batch-size", "16", "--steps", "2", "--quiet", "--no-eval"]
    p = _cli(*args, "--out", str(tmp_path / "a"))
    assert p.returncode == 2
    assert "bad.tsv:41" in p.stderr, p.stderr[-2000:]
    p = _cli(*args, "--skip-bad-lines", "--out", str(tmp_path / "b"))
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert s["data"]["skipped_lines"] == 1
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    p = _cli("preprocess", str(empty), "--out", str(tmp_path / "c"), "--skip-bad-lines")
    assert p.returncode == 2 and "empty.tsv" in p.stderr


def test_mlperf_binary_and_terabyte_days(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.zeros((300, 40), "<i4")
    rows[:, 0] = rng.integers(0, 2, 300)
    rows[:, 1:14] = rng.integers(0, 50, (300, 13))
    rows[:, 14:] = rng.integers(0, 5000, (300, 26))
    rows.tofile(tmp_path / "train.bin")
    rows[:100].tofile(tmp_path / "test.bin")
    p = _cli("train", "--config", "tiny", "--data", "mlperf-bin", "--data-path",
             str(tmp_path / "train.bin"), "--eval-data-path", str(tmp_path / "test.bin"),
             "--mini-batch-size", "64", "--steps", "6", "--quiet", "--out", str(tmp_path / "m"))
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((tmp_path / "m" / "summary.json").read_text())
    assert s["eval"]["rows"] == 100 and s["data"]["epoch"] == 1  # 4 batches per epoch
    for k in range(3):
        write_synthetic_raw(tmp_path / f"day_{k}", 200, seed=k)
    p = _cli("preprocess", *[str(tmp_path / f"day_{k}") for k in range(3)], "--format",
             "terabyte", "--max-ind-range", "1000", "--out", str(tmp_path / "tb"),
             "--json", str(tmp_path / "tb.json"))
    assert p.returncode == 0, p.stderr[-2000:]
    meta = json.loads((tmp_path / "tb.json").read_text())
    assert meta["rows"] == 600 and meta["table_sizes"] == [1000] * 26
    p = _cli("train", "--config", "tiny", "--data", "criteo-terabyte", "--data-path",
             str(tmp_path / "tb"), "--mini-batch-size", "64", "--steps", "4", "--quiet",
             "--out", str(tmp_path / "t"))
    assert p.returncode == 0, p.stderr[-2000:]
    s = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert s["eval"]["rows"] == 100  # the last day's first half


def test_criteo_needs_a_criteo_shaped_model(tmp_path):
    p = _cli("train", "--config", "small", "--data", "mlperf-bin", "--data-path",
             str(tmp_path / "x.bin"), "--steps", "1", "--quiet", "--out", str(tmp_path / "o"))
    assert p.returncode == 2 and "26 categorical" in p.stderr, p.stderr[-2000:]


# ------------------------------------------------------------------ interop with the compiled model
def _compiled_predict(cfg, state, batch):
    from dlrm_tvm.runtime.trainer import Trainer

    from dlrm_tvm.pipeline import compile_dlrm, load_vm
    from dlrm_tvm.targets import resolve_target

    vm = load_vm(compile_dlrm(cfg, resolve_target("host")).executable)
    tr = Trainer(cfg, vm, tables=state["tables"],
                 mlp={k: v for k, v in state.items() if k != "tables"})
    return tr.predict(batch)


@pytest.mark.parametrize("interaction", ["dot", "cat"])
def test_reference_checkpoint_and_onnx_match_the_compiled_model(tmp_path, interaction):
    import onnxruntime as ort
    import torch
    from dlrm_tvm.runtime.params import init_mlp, init_tables

    from dlrm_tvm.bench import torch_ref
    from dlrm_tvm.config import apply_overrides, load_config
    from dlrm_tvm.data import SyntheticData

    cfg = apply_overrides(load_config("tiny"), arch_interaction_op=interaction,
                          num_indices_per_lookup=3, num_indices_per_lookup_fixed=False)
    m = cfg.model
    state = {"tables": init_tables(m, 5) * 20, **init_mlp(m, 5)}  # big enough to matter
    model = torch_ref.build(cfg, state)
    path = tmp_path / "ref.pt"
    torch.save({"state_dict": model.state_dict(), "iter": 7, "epoch": 0,
                "train_acc": np.float64(0.5)}, path)
    batch = SyntheticData(m, cfg.data, cfg.train.batch_size, 9).next_batch()
    with torch.no_grad():
        dense, idx_l, off_l, _ = torch_ref.torch_inputs(batch, m.num_tables)
        want = model(dense, idx_l, off_l).numpy().ravel()
    from dlrm_tvm.interop.state_io import load_state

    cfg2, st2, desc = load_state(path, cfg)
    assert desc["kind"] == "reference" and cfg2.model == m
    got = _compiled_predict(cfg2, st2, batch)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # our export -> onnxruntime equals the compiled model
    from dlrm_tvm.interop.onnx_export import export_onnx

    onnx_path = export_onnx(cfg2, st2, tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    p = sess.run(["p"], {"dense": batch.dense, "indices": batch.indices,
                         "offsets": batch.offsets})[0]
    np.testing.assert_allclose(p, got, atol=1e-5)


def test_export_commands(generated_run, tmp_path):
    p = _cli("export-onnx", "--checkpoint", str(generated_run), "--out", str(tmp_path / "m.onnx"),
             "--check")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "max difference" in p.stdout
    p = _cli("export-reference", "--checkpoint", str(generated_run), "--out",
             str(tmp_path / "r.pt"))
    assert p.returncode == 0, p.stderr[-2000:]
    from dlrm_tvm.config import load_config
    from dlrm_tvm.interop.reference import load_reference_checkpoint

    m, st = load_reference_checkpoint(tmp_path / "r.pt", load_config("tiny"))
    ours = np.load(generated_run / "params.npz")
    for k in ours.files:
        np.testing.assert_array_equal(st[k], ours[k], err_msg=k)


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_two_ranks_on_kaggle_rows_read_their_slices(generated_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    p = subprocess.run([MPIEXEC, "-n", "2", sys.executable, "-m", "dlrm_tvm", "train",
                        "--config", "tiny", "--data", "criteo-kaggle", "--data-path",
                        str(generated_run / "data"), "--mini-batch-size", "32", "--steps", "12",
                        "--eval-every", "6", "--save-params", "--quiet", "--out",
                        str(tmp_path / "r2")], capture_output=True, text=True, timeout=300,
                       env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    a = np.load(generated_run / "params.npz")
    b = np.load(tmp_path / "r2" / "params.npz")
    for k in a.files:
        scale = max(float(np.abs(a[k]).max()), 1e-30)
        assert float(np.abs(b[k] - a[k]).max()) / scale < 1e-5, k
    s1 = json.loads((generated_run / "summary.json").read_text())
    s2 = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert s2["eval"]["rows"] == 7 and np.isfinite(s1["eval"]["auc"])
    assert s2["eval"]["auc"] == pytest.approx(s1["eval"]["auc"], abs=1e-6)


def test_loader_bench_reports_rates_against_the_step(tmp_path):
    out = tmp_path / "l.json"
    p = _cli("bench", "--config", "tiny", "--loader", "--loader-rows", "5000", "--steps", "4",
             "--json", str(out))
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["rows"] == 5000 and r["raw_rows_per_s"] > 0 and r["binary_rows_per_s"] > 0
    assert r["step_rows_per_s"] == pytest.approx(128 / (r["step_ms"] / 1e3))
    assert "x step" in p.stdout


def test_training_continues_from_a_reference_checkpoint(generated_run, tmp_path):
    ref = tmp_path / "r.pt"
    assert _cli("export-reference", "--checkpoint", str(generated_run), "--out",
                str(ref)).returncode == 0
    out = tmp_path / "cont"
    p = _cli("train", "--config", "tiny", "--data", "criteo-kaggle", "--data-path",
             str(generated_run / "data"), "--mini-batch-size", "32", "--steps", "1",
             "--learning-rate", "1e-12", "--init-from", str(ref), "--save-params", "--quiet",
             "--out", str(out))
    assert p.returncode == 0, p.stderr[-2000:]
    got, want = np.load(out / "params.npz"), np.load(generated_run / "params.npz")
    for k in want.files:  # one step at lr 1e-12 leaves the imported weights where they were
        np.testing.assert_allclose(got[k], want[k], atol=1e-9, err_msg=k)
    s = json.loads((out / "summary.json").read_text())
    first = json.loads((generated_run / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert s["first_loss"] < first - 0.05  # it starts where the trained model is, not at chance
    bad = _cli("train", "--config", "tiny", "--max-ind-range", "500", "--steps", "1",
               "--init-from", str(ref), "--quiet", "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "another model" in bad.stderr, bad.stderr[-2000:]
    bad = _cli("train", "--config", "tiny", "--arch-interaction-op", "cat", "--steps", "1",
               "--init-from", str(ref), "--quiet", "--out", str(tmp_path / "bad2"))
    assert bad.returncode == 2 and "interaction" in bad.stderr, bad.stderr[-2000:]
