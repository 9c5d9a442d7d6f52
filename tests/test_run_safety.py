"""A run directory's safety: a refused run leaves nothing that blocks a retry, no file of a run
is written through a symbolic link, a non-finite model never "finishes", summary.json is
strict JSON, and an unexpected exception is reported as an internal error (exit status 70).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm import cli
from dlrm_tvm.errors import EXIT_DIVERGED, EXIT_INTERNAL, EXIT_USER_ERROR


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert cli.main(["compile", "--config", "tiny", "--out", str(out)]) == 0
    return out


def _cli(capsys, *argv) -> tuple[int, str]:
    rc = cli.main([str(a) for a in argv])
    return rc, capsys.readouterr().err


# ------------------------------------------------------------- a refused run blocks nothing
def test_a_run_refused_before_its_first_step_does_not_block_the_retry(art, tmp_path, capsys):
    out = tmp_path / "y2"
    rc, err = _cli(capsys, "train", "--artifact", art, "--data", "mlperf-bin", "--data-path",
                   tmp_path / "nonexistent.bin", "--out", out, "--quiet")
    assert rc == EXIT_USER_ERROR and "nonexistent.bin" in err
    assert not (out / "train.log").exists()  # nothing was logged: no empty log left
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out", out, "--quiet")
    assert rc == 0, err
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"


def test_a_directory_with_only_a_log_and_config_holds_no_run(art, tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "train.log").write_text("an earlier attempt that failed before its first step\n")
    (out / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text("")
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "1", "--out", out, "--quiet")
    assert rc == 0, err
    assert (out / "train.log").read_text().startswith("an earlier attempt")  # appended to


# ------------------------------------------------------------------ no write through a link
@pytest.mark.parametrize("name", [".lock", "train.log", "config.json", "summary.json",
                                  "metrics.jsonl"])
@pytest.mark.parametrize("mode", ["new", "resume", "overwrite"])
def test_no_run_file_is_written_through_a_symbolic_link(art, tmp_path, capsys, name, mode):
    out = tmp_path / "r"
    if mode != "new":
        assert _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out", out,
                    "--quiet")[0] == 0
        (out / name).unlink(missing_ok=True)
    else:
        out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (out / name).symlink_to(victim)
    flags = {"new": [], "resume": ["--resume", "auto"], "overwrite": ["--overwrite"]}[mode]
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "3", "--out", out, "--quiet",
                   *flags)
    assert victim.read_text() == "precious\n"
    if rc != 0:
        assert rc == EXIT_USER_ERROR and ("symbolic link" in err or "already holds" in err), err
        assert "Traceback" not in err


def test_the_mlperf_log_is_not_written_through_a_link(art, tmp_path, capsys):
    pytest.importorskip("mlperf_logging")
    out = tmp_path / "r"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (out / "mlperf.log").symlink_to(victim)
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out", out, "--quiet",
                   "--mlperf-logging")
    assert rc == EXIT_USER_ERROR and "mlperf.log is a symbolic link" in err, err
    assert victim.read_text() == "precious\n"


def test_params_and_latest_are_not_written_through_a_link(art, tmp_path, capsys):
    from dlrm_tvm.runtime import checkpoint as ck

    root = tmp_path / "r" / "checkpoints"
    root.mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (root / "latest.tmp").symlink_to(victim)  # planted while a run writes its checkpoint
    ck.commit(root, ck.begin(root, 1, "t"), 1, {"files": {}})
    assert victim.read_text() == "precious\n"
    assert (root / "latest").read_text().strip() == "step_000001"
    out2 = tmp_path / "r2"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out", out2,
                "--quiet")[0] == 0
    (out2 / "params.npz").symlink_to(victim)
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "3", "--out", out2,
                   "--quiet", "--resume", "auto", "--save-params")
    assert rc == 0, err
    assert victim.read_text() == "precious\n"
    assert not (out2 / "params.npz").is_symlink() and np.load(out2 / "params.npz").files


# ------------------------------------------------------------------- a non-finite model
def test_a_non_finite_model_ends_diverged_even_without_a_checkpoint(art, tmp_path, capsys):
    out = tmp_path / "nf"
    rc, err = _cli(capsys, "train", "--artifact", art, "--learning-rate", "1e30", "--steps",
                   "20", "--no-final-checkpoint", "--save-params", "--out", out, "--quiet")
    assert rc == EXIT_DIVERGED and "non-finite parameters" in err, err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and "non-finite parameters" in s["error"]
    assert not (out / "params.npz").exists()


def test_a_non_finite_model_is_caught_before_an_evaluation(art, tmp_path, capsys):
    out = tmp_path / "nf"
    rc, err = _cli(capsys, "train", "--artifact", art, "--learning-rate", "1e30", "--steps",
                   "20", "--eval-every", "5", "--no-eval", "--no-final-checkpoint", "--out",
                   out, "--quiet")
    assert rc == EXIT_DIVERGED, err
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "diverged" and s["evals"] == [] and s["diverged_at_step"] == 5


def test_the_parameter_check_counts_every_shard_block_by_block():
    from types import SimpleNamespace

    from dlrm_tvm.runtime.trainer import Trainer

    rows = np.zeros((17, 4), np.float32)
    rows[2, 1] = np.nan
    rows[9:12, 0] = np.inf  # the shard 5:17, across blocks of 3 rows
    rows[16, 3] = -np.inf
    shards = [SimpleNamespace(table=0, row_start=0, row_stop=5, rows=5),
              SimpleNamespace(table=1, row_start=10, row_stop=22, rows=12)]
    fake = SimpleNamespace(shards=shards,
                           sparse=SimpleNamespace(fp32_rows=lambda lo, hi: rows[lo:hi]))
    assert Trainer.non_finite_shards(fake, chunk_rows=3) == [(0, 0, 5, 1), (1, 10, 22, 4)]


def _poison(ckdir: Path, what: str) -> None:
    """Put NaN into a checkpoint and re-sign its manifest (a validly signed non-finite one)."""
    from dlrm_tvm.runtime import checkpoint as ck

    man = json.loads((ckdir / "manifest.json").read_text())
    if what == "mlp":
        d = dict(np.load(ckdir / "mlp.npz"))
        k = sorted(d)[0]
        d[k].flat[:3] = np.nan
        with open(ckdir / "mlp.npz", "wb") as f:
            np.savez(f, **d)
        name = "mlp.npz"
    else:
        name = sorted(n for n in man["files"] if n.startswith("t"))[0]
        a = np.load(ckdir / name)
        a.flat[:2] = np.inf
        np.save(ckdir / name, a)
    man["files"][name] = ck.file_digest(ckdir / name)
    (ckdir / "manifest.json").write_text(json.dumps(man, indent=1, sort_keys=True))


@pytest.mark.parametrize("what", ["mlp", "table"])
def test_resuming_a_non_finite_checkpoint_is_refused_naming_it(art, tmp_path, capsys, what):
    out = tmp_path / "r"
    assert _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out", out,
                "--quiet")[0] == 0
    from dlrm_tvm.runtime import checkpoint as ck

    ckdir = Path(ck.read_manifest(out)["_dir"])
    _poison(ckdir, what)
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "4", "--out", out, "--quiet",
                   "--resume", "auto", "--no-final-checkpoint")
    assert rc == EXIT_DIVERGED and "non-finite parameters" in err, err
    assert ckdir.name in err and "refused" in err  # at loading, not after training on it
    assert ("mlp.npz" if what == "mlp" else "table 0 rows 0:") in err
    assert ("3 values" if what == "mlp" else "2 values") in err
    rc, err = _cli(capsys, "train", "--artifact", art, "--steps", "2", "--out",
                   tmp_path / "i", "--quiet", "--init-from", out)
    assert rc == EXIT_DIVERGED and "non-finite parameters" in err and "values" in err


# ------------------------------------------------------------------- strict summary.json
def test_summary_json_holds_no_nan_for_an_empty_held_out_split(art, tmp_path):
    from dlrm_tvm.config import load_config
    from dlrm_tvm.data.sources import SyntheticSource
    from dlrm_tvm.train import RunOptions, train

    class NoHeldOut(SyntheticSource):
        def eval_batches(self, n):
            return []

    cfg = load_config("tiny")
    out = tmp_path / "r"
    s = train(cfg, out, artifact=art, quiet=True,
              opts=RunOptions(source=NoHeldOut(cfg), final_checkpoint=False))
    assert s["eval"]["rows"] == 0
    text = (out / "summary.json").read_text()
    written = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))
    assert written["eval"]["auc"] is None
    assert any(x.startswith("eval.auc") for x in written["null_because_not_finite"])


def test_write_summary_replaces_every_non_finite_float(tmp_path):
    from dlrm_tvm.rundir import write_summary

    write_summary(tmp_path / "s.json", {"a": float("inf"), "b": [1.0, np.float32("nan")],
                                        "c": {"d": -np.inf, "e": 2}})
    s = json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(c))
    assert s["a"] is None and s["b"] == [1.0, None] and s["c"] == {"d": None, "e": 2}
    assert len(s["null_because_not_finite"]) == 3


# ------------------------------------------------------------------- internal errors
def test_an_unexpected_exception_is_an_internal_error_with_status_70(tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "r"
    out.mkdir()

    def boom(args):
        raise KeyError("the unexpected\nkey")

    monkeypatch.setitem(cli.COMMANDS, "train", boom)
    rc, err = _cli(capsys, "train", "--config", "tiny", "--out", out)
    assert rc == EXIT_INTERNAL == 70
    lines = [x for x in err.splitlines() if "internal error" in x]
    assert len(lines) == 1 and "please report" in lines[0] and "KeyError" in lines[0]
    assert "Traceback" not in err
    log = (out / "train.log").read_text()
    assert "Traceback" in log and "KeyError" in log
    rc, err = _cli(capsys, "--verbose", "train", "--config", "tiny", "--out", tmp_path / "none")
    assert rc == 70 and "Traceback" in err


def test_user_errors_keep_status_2(tmp_path, capsys, monkeypatch):
    def bad(args):
        raise ValueError("a bad value")

    monkeypatch.setitem(cli.COMMANDS, "train", bad)
    rc, err = _cli(capsys, "train", "--config", "tiny", "--out", tmp_path / "r")
    assert rc == EXIT_USER_ERROR and "a bad value" in err and "internal" not in err
    assert not os.path.exists(tmp_path / "r" / "train.log")
