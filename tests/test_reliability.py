"""The fault matrix (docs/reliability.md): loading, divergence, checkpoints, run directories,
signals. Each case runs the command a user would type and checks the exit status, the message
(naming the file or setting) and that nothing is lost."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm import cli
from dlrm_tvm.runtime import checkpoint as ck


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert cli.main(["compile", "--config", "tiny", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def run_dir(art, tmp_path_factory):
    """A finished tiny run (rwsadagrad: tables, row accumulators, MLP and its accumulators)
    with checkpoints; tests copy it before damaging it."""
    out = tmp_path_factory.mktemp("run") / "r"
    assert cli.main(["train", "--config", "tiny", "--optimizer", "rwsadagrad", "--steps", "6",
                     "--checkpoint-every", "3", "--out", str(out), "--quiet"]) == 0
    return out


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return rc, err


def _cli_sub(*argv, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dlrm_tvm", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout, env=env)


# ------------------------------------------------------------------ 1. loading: no unpickling
class _Payload:
    """A pickle that, when loaded unsafely, creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path: Path) -> tuple[Path, Path]:
    import torch

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"emb_l.0.weight": torch.zeros(2, 2)},
                "x": _Payload(marker)}, path)
    return path, marker


@pytest.mark.parametrize("cmd", ["eval", "init-from", "export-onnx", "export-reference"])
def test_malicious_pickle_never_runs(tmp_path, capsys, cmd):
    path, marker = _malicious(tmp_path)
    argv = {"eval": ["eval", "--checkpoint", path, "--out", tmp_path / "e"],
            "init-from": ["train", "--init-from", path, "--steps", "1", "--out", tmp_path / "t"],
            "export-onnx": ["export-onnx", "--checkpoint", path, "--out", tmp_path / "m.onnx"],
            "export-reference": ["export-reference", "--checkpoint", path, "--out",
                                 tmp_path / "r.pt"]}[cmd]
    rc, err = _cli(capsys, *argv)
    assert rc == 2
    assert "refused" in err and "evil.pt" in err and "never unpickles" in err
    assert not marker.exists()


def test_pickled_module_is_refused_with_the_way_out(tmp_path, capsys):
    import torch

    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    rc, err = _cli(capsys, "eval", "--checkpoint", path, "--out", tmp_path / "e")
    assert rc == 2 and "module.pt" in err and "state_dict" in err


def test_garbage_reference_file_is_named(tmp_path, capsys):
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    rc, err = _cli(capsys, "eval", "--checkpoint", path, "--out", tmp_path / "e")
    assert rc == 2 and "junk.pt" in err
    assert "Traceback" not in err


def test_plain_pickle_of_arrays_is_refused(tmp_path, capsys):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"state_dict": {"emb_l.0.weight": np.ones((2, 2))}}))
    rc, err = _cli(capsys, "train", "--init-from", path, "--out", tmp_path / "t")
    assert rc == 2 and "plain.pkl" in err


# ------------------------------------------------------------------ 2. divergence
def test_diverging_run_stops_with_its_step_and_keeps_the_last_good_checkpoint(
        art, tmp_path, capsys):
    out = tmp_path / "d"
    rc, err = _cli(capsys, "train", "--artifact", art, "--learning-rate", "1e6", "--steps",
                   "30", "--checkpoint-every", "2", "--keep-checkpoints", "1", "--out", out,
                   "--quiet")
    assert rc == 3, err
    assert "diverged" in err and "at step" in err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and s["diverged_at_step"] < 30
    # every committed checkpoint is finite and the newest good one is what `latest` names
    man = ck.read_manifest(out)
    assert man["step"] <= s["diverged_at_step"]
    for f in sorted((out / "checkpoints").glob("step_*")):
        m = ck.read_manifest(f)
        for k, v in ck.load_npz(m, "mlp.npz").items():
            assert np.isfinite(v).all(), (f, k)
    # and it loads (eval of the run directory reads that checkpoint)
    rc, err = _cli(capsys, "eval", "--checkpoint", out, "--out", tmp_path / "e")
    assert rc == 0, err
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["checkpoint"]["step"] == \
        man["step"]


def test_huge_learning_rate_diverges_not_clamped(art, tmp_path, capsys):
    # the loss used to be clamped at 100 and the run "finished"
    rc, err = _cli(capsys, "train", "--artifact", art, "--learning-rate", "1e30", "--steps", "20",
                   "--out", tmp_path / "d", "--quiet")
    assert rc == 3 and "diverged" in err
    assert not (tmp_path / "d" / "checkpoints" / "latest").exists()  # no NaN final checkpoint


def test_non_finite_parameters_stop_the_checkpoint(tmp_path):
    """A checkpoint of non-finite parameters is never committed; the previous stays latest."""
    from dlrm_tvm.config import load_config
    from dlrm_tvm.errors import DivergedError
    from dlrm_tvm.checkpoints import save_checkpoint
    from dlrm_tvm.runtime.comm import LocalComm

    cfg = load_config("tiny")

    class Dense:
        def __init__(self, bad):
            self.bad = bad

        def fp32(self):
            w = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
            if self.bad:
                w[1, 2] = np.nan
            return {"bot0_w": w}

    class FakeTrainer:
        comm = LocalComm()

        def __init__(self, bad_rows=False, bad_mlp=False):
            self.dense = Dense(bad_mlp)
            rows = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
            if bad_rows:
                rows[3, 0] = np.inf
            self.rows = rows

        def shard_state(self):
            return [(0, 0, 5, self.rows, None)]

    class Src:
        def state(self):
            return {}

    out = tmp_path / "r"
    save_checkpoint(out, FakeTrainer(), 1, Src(), cfg)
    for bad in ({"bad_rows": True}, {"bad_mlp": True}):
        with pytest.raises(DivergedError, match="non-finite parameters at step 2"):
            save_checkpoint(out, FakeTrainer(**bad), 2, Src(), cfg)
        assert ck.read_manifest(out)["step"] == 1
        assert not list((out / "checkpoints").glob("step_000002*"))


def test_eval_and_export_refuse_a_non_finite_model(run_dir, tmp_path, capsys):
    c = _copy(run_dir, tmp_path / "r")
    man = ck.read_manifest(c)
    d = Path(man["_dir"])
    mlp = ck.load_npz(man, "mlp.npz")
    mlp["top0_w"][0, 0] = np.nan
    files = json.loads((d / "manifest.json").read_text())
    files["files"]["mlp.npz"] = ck.write_npz(d, "mlp.npz", mlp)  # a validly signed NaN model
    (d / "manifest.json").write_text(json.dumps(files))
    for argv in (["eval", "--checkpoint", c, "--out", tmp_path / "e"],
                 ["export-onnx", "--checkpoint", c, "--out", tmp_path / "m.onnx"]):
        rc, err = _cli(capsys, *argv)
        assert rc == 3 and "non-finite parameters" in err and "top0_w: 1 values" in err, err
    assert not (tmp_path / "e" / "summary.json").exists()


def test_eval_refuses_non_finite_predictions():
    """Behind a ReLU a NaN weight can vanish; where it reaches the output, eval stops."""
    from dlrm_tvm.config import load_config
    from dlrm_tvm.data import SyntheticData
    from dlrm_tvm.errors import DivergedError
    from dlrm_tvm.evaluate import run_eval
    from dlrm_tvm.runtime.comm import LocalComm

    cfg = load_config("tiny")

    class NaNTrainer:
        comm = LocalComm()

        def predict(self, batch):
            p = np.random.default_rng(0).random(batch.dense.shape[0]).astype(np.float32)
            p[5] = np.nan
            return p

    src = SyntheticData(cfg.model, cfg.data, 128, 3)
    with pytest.raises(DivergedError, match="2 of 256 held-out predictions are not finite"):
        run_eval(NaNTrainer(), [(src.next_batch(), 128), (src.next_batch(), 128)], cfg)


# ------------------------------------------------------------------ 3. checkpoints verified
def _ckpt_files(run: Path) -> list[str]:
    return sorted(p.name for p in Path(ck.read_manifest(run)["_dir"]).iterdir()
                  if p.name != "manifest.json")


def test_every_checkpoint_file_is_listed_with_a_digest(run_dir):
    man = ck.read_manifest(run_dir)
    names = _ckpt_files(run_dir)
    assert {"mlp.npz", "mlp_acc.npz"} <= set(names) and any(n.startswith("acc_t") for n in names)
    assert sorted(man["files"]) == names
    for n in names:
        assert man["files"][n] == ck.file_digest(Path(man["_dir"]) / n)


@pytest.mark.parametrize("kind", ["table", "acc", "mlp", "mlp_acc"])
@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_checkpoint_file_is_named_by_every_loader(run_dir, tmp_path, capsys, kind,
                                                            how):
    c = _copy(run_dir, tmp_path / "r")
    d = Path(ck.read_manifest(c)["_dir"])
    name = {"table": "t5_0_1000.npy", "acc": "acc_t5_0_1000.npy", "mlp": "mlp.npz",
            "mlp_acc": "mlp_acc.npz"}[kind]
    path = d / name
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2 + 7] ^= 0x10  # one bit inside the array data
    else:
        data = data[:len(data) // 2]
    path.write_bytes(bytes(data))
    cmds = [["train", "--config", "tiny", "--optimizer", "rwsadagrad", "--steps", "8",
             "--resume", "--out", c, "--quiet"]]
    if kind in ("table", "mlp"):  # what eval / export / init-from read
        cmds += [["eval", "--checkpoint", c, "--out", tmp_path / "e"],
                 ["export-onnx", "--checkpoint", c, "--out", tmp_path / "m.onnx"],
                 ["train", "--config", "tiny", "--init-from", c, "--steps", "1",
                  "--out", tmp_path / "i", "--quiet"]]
    for argv in cmds:
        rc, err = _cli(capsys, *argv)
        assert rc == 2, (argv, err)
        assert name in err and ("SHA-256" in err or "truncated" in err), (argv, err)


def test_invalid_manifest_is_named(run_dir, tmp_path, capsys):
    c = _copy(run_dir, tmp_path / "r")
    mp = Path(ck.read_manifest(c)["_dir"]) / "manifest.json"
    for text in ("{not json", "[1, 2]", json.dumps({"format": 2, "step": "x"})):
        mp.write_text(text)
        rc, err = _cli(capsys, "eval", "--checkpoint", c, "--out", tmp_path / "e")
        assert rc == 2 and "manifest.json" in err, err


@pytest.mark.parametrize("name", ["../../../etc", "/etc", "step_000003/../../x", "junk"])
def test_latest_cannot_point_outside_its_directory(run_dir, tmp_path, capsys, name):
    c = _copy(run_dir, tmp_path / "r")
    (c / "checkpoints" / "latest").write_text(name + "\n")
    rc, err = _cli(capsys, "eval", "--checkpoint", c, "--out", tmp_path / "e")
    assert rc == 2 and "latest" in err and "not a checkpoint directory" in err


def test_leftovers_of_an_interrupted_write_are_cleaned(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "4", "--checkpoint-every", "2",
                "--out", out, "--quiet")[0] == 0
    torn = out / "checkpoints" / "step_000004.tmp-123-456"
    torn.mkdir()
    (torn / "t0_0_1000.npy").write_bytes(b"partial")
    (out / "checkpoints" / "latest.tmp").write_text("step_000004\n")
    assert _cli(capsys, "train", "--artifact", art, "--steps", "6", "--resume", "--out", out,
                "--quiet")[0] == 0
    assert not list((out / "checkpoints").glob("*.tmp*"))


def test_pruning_never_deletes_the_newest_checkpoint(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "10", "--checkpoint-every", "2",
                "--out", out, "--quiet")[0] == 0  # keeps 8 and 10
    # resume from 8 to 9 with keep 1: the old run's step 10 must not win over the new step 9
    assert _cli(capsys, "train", "--artifact", art, "--steps", "9", "--keep-checkpoints", "1",
                "--resume", out / "checkpoints" / "step_000008", "--out", out,
                "--quiet")[0] == 0
    man = ck.read_manifest(out)
    assert man["step"] == 9
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000009"]


# ------------------------------------------------------------------ 4. run directories
def test_a_finished_run_can_be_evaluated_and_exported_as_is(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "5", "--out", out,
                "--quiet")[0] == 0
    assert ck.read_manifest(out)["step"] == 5
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "finished" and s["last_checkpoint"].endswith("step_000005")
    rc, err = _cli(capsys, "eval", "--checkpoint", out, "--out", tmp_path / "e")
    assert rc == 0, err
    assert 0.0 < json.loads((tmp_path / "e" / "summary.json").read_text())["auc"] < 1.0
    rc, err = _cli(capsys, "export-onnx", "--checkpoint", out, "--out", tmp_path / "m.onnx",
                   "--check")
    assert rc == 0, err


def test_no_final_checkpoint_leaves_none_and_eval_says_so(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "2", "--no-final-checkpoint",
                "--out", out, "--quiet")[0] == 0
    assert not (out / "checkpoints").exists()
    rc, err = _cli(capsys, "eval", "--checkpoint", out, "--out", tmp_path / "e")
    assert rc == 2 and "no checkpoint" in err and "--no-final-checkpoint" in err


def test_a_second_run_into_a_used_directory_is_refused(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "4", "--out", out,
                "--quiet")[0] == 0
    before = (out / "metrics.jsonl").read_text()
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out", out, "--quiet")
    assert rc == 2 and "already holds a run" in err and "--overwrite" in err
    assert (out / "metrics.jsonl").read_text() == before  # nothing lost
    assert ck.read_manifest(out)["step"] == 4
    # --overwrite replaces it: old checkpoints gone, new metrics only
    assert _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out", out, "--quiet",
                "--overwrite")[0] == 0
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_000002"]
    assert _train_steps(out) == [0, 1]


def test_a_locked_run_directory_is_refused(art, tmp_path, capsys):
    from dlrm_tvm.rundir import RunDir

    out = tmp_path / "r"
    with RunDir(out):
        rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "1", "--out", out,
                       "--quiet")
    assert rc == 2 and "another dlrm-tvm run is using" in err and f"pid {os.getpid()}" in err
    assert _cli(capsys, "train", "--artifact", art, "--steps", "1", "--out", out,
                "--quiet")[0] == 0  # released


def test_a_file_as_out_is_a_clear_error(art, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("keep me")
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "1", "--out", f, "--quiet")
    assert rc == 2 and "is a file" in err
    assert f.read_text() == "keep me"


def test_resume_does_not_repeat_metric_lines(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "7", "--checkpoint-every", "3",
                "--keep-checkpoints", "3", "--out", out, "--quiet")[0] == 0
    # back to step 3 (as after a crash at step 5): lines 3..6 are redone, not duplicated
    assert _cli(capsys, "train", "--artifact", art, "--steps", "9", "--out", out, "--quiet",
                "--resume", out / "checkpoints" / "step_000003")[0] == 0
    assert _train_steps(out) == list(range(9))
    evals = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in x]
    assert evals == [9]  # the first run's end-of-run evaluation (step 7) was cut back too


def _train_steps(out: Path) -> list[int]:
    """The steps of the training lines of RUNDIR/metrics.jsonl (evaluation lines left out)."""
    return [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
            if '"eval"' not in x]


def _wait_lines(path: Path, n: int, proc, timeout: float = 120) -> list[str]:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists():
            lines = path.read_text().splitlines()
            if len(lines) >= n:
                return lines
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} lines")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                      (signal.SIGKILL, -9)])
def test_signals_lose_no_metric_line(art, tmp_path, sig, code):
    out = tmp_path / "r"
    proc = subprocess.Popen([sys.executable, "-m", "dlrm_tvm", "train", "--artifact", str(art),
                             "--steps", "100000", "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_lines(out / "metrics.jsonl", 5, proc)  # lines arrive as they are written
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    lines = (out / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in lines]  # every line whole
    assert steps == list(range(len(steps))) and len(steps) >= 5
    if sig != signal.SIGKILL:
        s = json.loads((out / "summary.json").read_text())
        assert s["status"] == "interrupted" and s["steps"] >= len(steps)
        assert "Traceback" not in err and "interrupted" in err


# ------------------------------------------------------------------ ranks
@pytest.mark.mpi
@pytest.mark.skipif(__import__("shutil").which("mpiexec") is None, reason="no mpiexec on PATH")
def test_two_ranks_diverge_together_with_exit_3_and_no_bad_checkpoint(tmp_path):
    import shutil

    out = tmp_path / "r"
    env = {k: v for k, v in os.environ.items() if k != "TVM_NUM_THREADS"}
    t0 = time.time()
    p = subprocess.run([shutil.which("mpiexec"), "-n", "2", sys.executable, "-m", "dlrm_tvm",
                        "train", "--config", "tiny", "--learning-rate", "1e6", "--steps", "30",
                        "--checkpoint-every", "1", "--keep-checkpoints", "1", "--threads", "1",
                        "--out", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 3, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert time.time() - t0 < 240
    assert "diverged" in p.stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged"
    man = ck.read_manifest(out)  # the newest good one, written by both ranks, verified
    assert man["step"] <= s["diverged_at_step"] and man["ranks"] == 2
    for name in man["files"]:
        ck.verify_file(man, name)
