"""facebookresearch/dlrm's flags on ``dlrm-tvm train``: mapped with the same
meaning, accepted with a reason, or refused with one -- and a pasted reference command runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dlrm_tvm import cli
from dlrm_tvm.cli_parser import build_parser
from dlrm_tvm.config import ConfigError
from dlrm_tvm.reference_cli import REFERENCE_FLAGS, doc_table, translate

ROOT = Path(__file__).resolve().parent.parent


def _parse(*argv):
    p = build_parser({k: None for k in cli.COMMANDS})  # every subcommand, none bound
    return p.parse_args(["train", *argv])


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert cli.main(["compile", "--config", "tiny", "--out", str(out)]) == 0
    return out


def test_mapped_flags_set_ours():
    a = _parse("--numpy-rand-seed", "727", "--test-freq", "100", "--mlperf-auc-threshold",
               "0.8", "--load-model", "m.pt", "--print-freq", "10", "--print-time",
               "--nepochs", "2", "--num-batches", "5", "--mlperf-bin-loader")
    run = translate(a)
    assert (a.seed, a.eval_every, a.target_auc, a.init_from) == (727, 100, 0.8, "m.pt")
    assert a.data_randomize == "none"  # the reference's binary loader: file order
    a = _parse("--mlperf-bin-loader", "--data-randomize", "day")
    translate(a)
    assert a.data_randomize == "day"
    assert (run.print_every, run.print_time, run.epochs, run.batches_per_epoch) == (10, True,
                                                                                     2, 5)
    # --test-freq -1 (the reference's default): no periodic evaluation
    a = _parse("--test-freq", "-1")
    translate(a)
    assert a.eval_every == 0


def test_data_flags_name_criteo_files(tmp_path):
    a = _parse("--data-generation", "dataset", "--data-set", "kaggle", "--raw-data-file",
               "train.txt")
    translate(a)
    assert (a.data, a.data_path) == ("criteo-kaggle", "train.txt")
    for i in range(3):
        (tmp_path / f"day_{i}").write_text("")
    a = _parse("--data-generation=dataset", "--data-set=terabyte",
               f"--raw-data-file={tmp_path / 'day'}")
    translate(a)
    assert a.data == "criteo-terabyte"
    assert a.data_path.split(",") == [str(tmp_path / f"day_{i}") for i in range(3)]
    with pytest.raises(ConfigError, match="prefix"):
        translate(_parse("--data-generation=dataset", "--data-set=terabyte",
                         f"--raw-data-file={tmp_path / 'nope'}"))
    a = _parse("--data-generation", "random")
    translate(a)
    assert (a.data, a.labels) == ("synthetic", "random")
    a = _parse("--data-generation", "random", "--labels", "teacher")
    translate(a)
    assert a.labels == "teacher"


@pytest.mark.parametrize("argv, why", [
    (["--numpy-rand-seed", "1", "--seed", "2"], "disagree"),
    (["--test-freq", "5", "--eval-every", "7"], "disagree"),
    (["--nepochs", "1", "--steps", "5"], "not both"),
    (["--data-generation", "synthetic"], "trace-driven"),
    (["--mlperf-auc-threshold", "1.5"], r"\(0, 1\]"),
])
def test_contradictions_are_refused(argv, why):
    with pytest.raises(ConfigError, match=why):
        translate(_parse(*argv))


REFUSED = [f for f in REFERENCE_FLAGS if f.kind == "refused"]


@pytest.mark.parametrize("flag", REFUSED, ids=[f.flag for f in REFUSED])
def test_unsupported_flags_are_refused_with_the_reason(flag, capsys):
    if flag.switch:
        argv = [flag.flag]
    else:
        bad = next(c for c in (flag.choices or ("mse", "2", "x")) if c not in flag.ok_values)
        argv = [flag.flag, bad]
    rc = cli.main(["train", *argv, "--out", "/nonexistent/never-written"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert f"{flag.flag}" in err and "not supported by dlrm-tvm" in err and flag.help[:20] in err
    for ok in flag.ok_values:  # the reference's default value stays accepted
        translate(_parse(flag.flag, ok))


def test_every_flag_has_a_row_in_the_docs():
    doc = (ROOT / "docs" / "reference-flags.md").read_text()
    assert doc_table() in doc, "docs/reference-flags.md: paste reference_cli.doc_table()"


def test_a_pasted_random_data_command_runs(art, tmp_path, capsys):
    out = tmp_path / "r"
    rc = cli.main(["train", "--artifact", str(art), "--data-generation=random",
                   "--numpy-rand-seed=727", "--print-freq=10", "--print-time",
                   "--test-freq=20", "--nepochs=1", "--num-batches=30", "--out", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    s = json.loads((out / "summary.json").read_text())
    assert s["steps"] == 30 and s["config"]["train"]["seed"] == 727
    assert s["config"]["data"]["labels"] == "random"
    assert [e["step"] for e in s["evals"]] == [20, 30]
    lines = [x for x in printed.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["10/30", "20/30", "30/30"]
    assert all("ms/step" in x for x in lines)
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 30


def test_nepochs_on_generated_data_follows_the_reference(art, tmp_path):
    # the reference's epoch of random data is --data-size samples: ceil(300 / 128) = 3 batches
    out = tmp_path / "r"
    assert cli.main(["train", "--artifact", str(art), "--nepochs=2", "--data-size=300",
                     "--no-eval", "--quiet", "--out", str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["steps"] == 6


def test_save_model_writes_the_reference_file(art, tmp_path):
    import torch
    out, pt = tmp_path / "r", tmp_path / "m.pt"
    assert cli.main(["train", "--artifact", str(art), "--num-batches=3", "--save-model",
                     str(pt), "--quiet", "--no-eval", "--save-params", "--out", str(out)]) == 0
    ck = torch.load(pt, weights_only=True)
    params = np.load(out / "params.npz")
    sd = ck["state_dict"]
    assert ck["iter"] == 3
    emb = [k for k in sd if k.startswith("emb_l.")]
    assert len(emb) == 26
    got = np.concatenate([sd[f"emb_l.{t}.weight"].numpy() for t in range(26)])
    np.testing.assert_array_equal(got, params["tables"])
    # and it loads back as --load-model
    out2 = tmp_path / "r2"
    assert cli.main(["train", "--artifact", str(art), "--load-model", str(pt),
                     "--num-batches=1", "--quiet", "--no-eval", "--out", str(out2)]) == 0


# The reference README's Kaggle benchmark (bench/dlrm_s_criteo_kaggle.sh), verbatim but for --out.
KAGGLE = ["--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16",
          "--arch-mlp-top=512-256-1", "--data-generation=dataset", "--data-set=kaggle",
          "--raw-data-file=./input/train.txt",
          "--processed-data-file=./input/kaggleAdDisplayChallenge_processed.npz",
          "--loss-function=bce", "--round-targets=True", "--learning-rate=0.1",
          "--mini-batch-size=128", "--print-freq=1024", "--print-time",
          "--test-mini-batch-size=16384", "--test-num-workers=16"]


def test_the_reference_kaggle_command_line_runs(criteo_sample, tmp_path, monkeypatch, capsys):
    # the shared real rows (200), 14 times over: 2800 rows, so that a batch of 128 fits the
    # 7-day split's training days (6/7 of the rows) as on the real train.txt
    rows = [ln for f in ("train.tsv", "test.tsv")
            for ln in (criteo_sample / f).read_text().splitlines()]
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "train.txt").write_text("\n".join(rows * 14) + "\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", *KAGGLE, "--out", "run"]) == 0
    printed = capsys.readouterr().out
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    train_rows = 2800 - 2800 // 7  # days 0-5 of 7 (2800 = 7 x 400)
    assert s["steps"] == train_rows // 128  # one epoch, the reference's default --nepochs 1
    assert s["data"]["kind"] == "criteo-kaggle" and s["data"]["train_rows"] == train_rows
    m = s["config"]["model"]
    assert (m["embedding_dim"], m["mlp_bot"], m["mlp_top"]) == (16, [13, 512, 256, 64, 16],
                                                                 [512, 256, 1])
    assert s["eval"]["rows"] == 200 and s["eval"]["auc"] > 0.6  # the test half of day 6
    assert f"step {s['steps']}/{s['steps']}" in printed and "ms/step" in printed
    # the reference's processed-data file is a directory here, reused by the next run
    pre = tmp_path / "input" / "kaggleAdDisplayChallenge_processed"
    assert (pre / "meta.json").is_file()
    assert cli.main(["train", *KAGGLE, "--out", "run2"]) == 0
    assert "reusing the preprocessed data" in capsys.readouterr().out
