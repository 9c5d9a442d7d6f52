"""``train --mlperf-logging [PATH]``: an MLLOG file that the compliance
checker of mlperf-logging accepts, its keys in order, run_stop aborted when a run does not end
well, and a clear refusal without the package."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dlrm_tvm import cli
from dlrm_tvm.mlperf_log import RULESET

# (the keys every log has, in this order; the Adagrad fields come with --optimizer adagrad)
HEAD = ["cache_clear", "init_start", "submission_benchmark", "submission_org",
        "submission_division", "submission_status", "submission_platform", "global_batch_size",
        "gradient_accumulation_steps", "seed", "opt_name", "opt_base_learning_rate",
        "opt_weight_decay", "opt_learning_rate_warmup_steps",
        "opt_learning_rate_decay_start_step", "opt_learning_rate_decay_steps",
        "opt_adagrad_learning_rate_decay", "opt_adagrad_initial_accumulator_value",
        "opt_adagrad_epsilon", "train_samples", "eval_samples", "init_stop", "run_start"]
BLOCK = ["block_start", "epoch_start", "epoch_stop", "block_stop", "eval_start", "eval_stop",
         "eval_accuracy"]


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    """dcnv2-tiny with MLPerf's optimizer: exact Adagrad, lr 0.004."""
    out = tmp_path_factory.mktemp("art") / "dcn-ada"
    assert cli.main(["compile", "--config", "dcnv2-tiny", "--optimizer", "adagrad",
                     "--learning-rate", "0.004", "--out", str(out)]) == 0
    return out


def _lines(path):
    return [json.loads(x.split(":::MLLOG ", 1)[1]) for x in path.read_text().splitlines()
            if x.startswith(":::MLLOG ")]


def _check(log, tmp_path, ruleset=RULESET):
    """The compliance checker on ``log``: (passed, its output)."""
    p = subprocess.run([sys.executable, "-m", "mlperf_logging.compliance_checker", "--usage",
                        "training", "--ruleset", ruleset, "--log_output",
                        str(tmp_path / "checker.log"), str(log)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    return p.returncode == 0 and "SUCCESS" in p.stdout + p.stderr, p.stdout + p.stderr


def _train(art, out, *extra):
    return cli.main(["train", "--artifact", str(art), "--steps", "300", "--eval-every", "50",
                     "--target-auc", "0.55", "--out", str(out), "--quiet",
                     "--no-final-checkpoint", *extra])


def test_a_short_run_to_a_target_auc_passes_the_compliance_checker(art, tmp_path):
    out = tmp_path / "r"
    assert _train(art, out, "--mlperf-logging") == 0  # without a value: RUNDIR/mlperf.log
    log = out / "mlperf.log"
    ok, said = _check(log, tmp_path)
    assert ok, said
    assert "open_dlrm_dcnv2.yaml" in said
    lines = _lines(log)
    keys = [x["key"] for x in lines]
    assert keys[:len(HEAD)] == HEAD
    assert keys[-1] == "run_stop" and lines[-1]["metadata"]["status"] == "success"
    body = keys[len(HEAD):-1]
    assert body and len(body) % len(BLOCK) == 0  # the target stops it at an evaluation
    assert body == BLOCK * (len(body) // len(BLOCK))
    v = {x["key"]: x for x in lines}
    assert v["submission_benchmark"]["value"] == "dlrm_dcnv2"
    assert v["submission_division"]["value"] == "open"
    assert (v["opt_name"]["value"], v["opt_base_learning_rate"]["value"],
            v["opt_adagrad_epsilon"]["value"]) == ("adagrad", 0.004, 1e-8)
    assert v["global_batch_size"]["value"] == 128 and v["eval_samples"]["value"] == 256
    s = json.loads((out / "summary.json").read_text())
    accs = [x for x in lines if x["key"] == "eval_accuracy"]
    assert [a["value"] for a in accs] == [e["auc"] for e in s["evals"]]
    assert accs[-1]["value"] >= 0.55 and all("epoch_num" in a["metadata"] for a in accs)
    assert [a["metadata"]["samples_count"] for a in accs] == [128 * e["step"]
                                                              for e in s["evals"]]
    ts = [x["time_ms"] for x in lines]
    assert ts == sorted(ts)


def test_the_closed_rules_fail_only_on_the_evaluation_set_and_the_auc(art, tmp_path):
    """What a short run is not: MLPerf's whole evaluation set (89,137,319 rows) and its AUC
    target 0.80275. Everything else of closed DLRM-DCNv2 passes (adagrad, eps, no schedule)."""
    log = tmp_path / "closed.log"
    assert _train(art, tmp_path / "r", "--mlperf-logging", str(log), "--mlperf-division",
                  "closed", "--mlperf-org", "Org", "--mlperf-platform", "1xCPU") == 0
    ok, said = _check(log, tmp_path)
    assert not ok and "closed_dlrm_dcnv2.yaml" in said
    failed = [x for x in said.splitlines() if "CHECK for" in x or "Failed checks for" in x]
    assert len(failed) == 2 and "'eval_samples' failed" in failed[0], said
    assert failed[1].startswith("Failed checks for eval_accuracy"), said
    assert "v['value'] == 89137319" in said and ">= 0.80275" in said
    v = {x["key"]: x["value"] for x in _lines(log)}
    assert (v["submission_org"], v["submission_platform"]) == ("Org", "1xCPU")


def test_a_diverged_run_logs_run_stop_aborted(art, tmp_path):
    out = tmp_path / "r"
    rc = cli.main(["train", "--artifact", str(art), "--learning-rate", "1e30", "--steps", "20",
                   "--out", str(out), "--quiet", "--mlperf-logging"])
    assert rc == 3
    lines = _lines(out / "mlperf.log")
    assert [x["key"] for x in lines][:len(HEAD)] == HEAD
    assert lines[-1]["key"] == "run_stop" and lines[-1]["metadata"]["status"] == "aborted"
    assert sum(x["key"] == "run_stop" for x in lines) == 1


def test_an_interrupted_run_logs_run_stop_aborted(art, tmp_path):
    from dlrm_tvm.artifact import read_artifact
    from dlrm_tvm.data.sources import SyntheticSource
    from dlrm_tvm.train import RunOptions, train

    cfg = read_artifact(art).config.replace(name="dcnv2-tiny")

    class Interrupted(SyntheticSource):
        n = 0

        def next_batch(self):
            self.n += 1
            if self.n == 5:
                raise KeyboardInterrupt
            return super().next_batch()

    opts = RunOptions(source=Interrupted(cfg), mlperf_log=str(tmp_path / "m.log"),
                      eval_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "r", artifact=art, quiet=True, opts=opts)
    lines = _lines(tmp_path / "m.log")
    keys = [x["key"] for x in lines]
    assert keys[-1] == "run_stop" and lines[-1]["metadata"]["status"] == "aborted"
    assert keys.count("eval_accuracy") == 2 and keys.count("block_start") == 3
    assert lines[-1]["metadata"]["samples_count"] == 4 * 128


def test_a_missed_target_is_aborted(art, tmp_path):
    out = tmp_path / "r"
    rc = cli.main(["train", "--artifact", str(art), "--steps", "4", "--target-auc", "0.999",
                   "--out", str(out), "--quiet", "--mlperf-logging", "--no-final-checkpoint"])
    assert rc == 4
    last = _lines(out / "mlperf.log")[-1]
    assert last["key"] == "run_stop" and last["metadata"]["status"] == "aborted"


def test_without_the_package_the_run_is_refused_at_its_start(art, tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setitem(sys.modules, "mlperf_logging.mllog", None)  # import fails
    out = tmp_path / "r"
    rc = cli.main(["train", "--artifact", str(art), "--steps", "2", "--out", str(out),
                   "--mlperf-logging"])
    assert rc == 2
    assert "mlperf-logging" in capsys.readouterr().err and not out.exists()
    # without the flag nothing needs it
    assert cli.main(["train", "--artifact", str(art), "--steps", "2", "--out", str(out),
                     "--quiet", "--no-eval", "--no-final-checkpoint"]) == 0


def test_the_reference_switch_is_ours_now():
    from dlrm_tvm.reference_cli import REFERENCE_FLAGS

    assert "--mlperf-logging" not in {f.flag for f in REFERENCE_FLAGS}
    p = cli.build_parser()
    a = p.parse_args(["train", "--mlperf-logging"])
    assert a.mlperf_logging == "auto" and a.mlperf_division == "open"
    assert p.parse_args(["train", "--mlperf-logging", "x.log"]).mlperf_logging == "x.log"
    assert p.parse_args(["train"]).mlperf_logging is None
