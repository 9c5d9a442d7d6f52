"""The command line's manners: exact option names, short errors, labelled numbers, early checks."""

from __future__ import annotations

import pytest

from dlrm_tvm import cli
from dlrm_tvm.cli_parser import build_parser


def _parse(*argv):
    return build_parser({k: None for k in cli.COMMANDS}).parse_args(list(argv))


def test_option_prefix_is_not_taken_for_a_longer_option(capsys):
    with pytest.raises(SystemExit) as e:
        _parse("train", "--checkpoint", "10")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown option --checkpoint" in err and "--checkpoint-every" in err


@pytest.mark.parametrize("argv", [("train", "--lr", "0.1"), ("train", "--stepz", "3"),
                                  ("kernels", "list", "--cfg", "tiny")])
def test_unknown_option_error_is_one_line_with_suggestions(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "usage:" not in err and f"unknown option {argv[-2]}" in err
    assert "did you mean --" in err


def test_every_subcommand_parser_refuses_abbreviations():
    p = build_parser({k: None for k in cli.COMMANDS})
    todo, seen = [p], 0
    while todo:
        q = todo.pop()
        assert q.allow_abbrev is False, q.prog
        seen += 1
        for a in q._actions:
            todo += list(getattr(a, "_name_parser_map", {}).values())
    assert seen > 10


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    out = tmp_path_factory.mktemp("art") / "tiny"
    assert cli.main(["compile", "--config", "tiny", "--out", str(out)]) == 0
    return out


def test_each_loss_printed_says_what_it_is_a_mean_of(art, tmp_path, capsys):
    rc = cli.main(["train", "--artifact", str(art), "--steps", "4", "--print-freq", "2",
                   "--no-eval", "--no-final-checkpoint", "--out", str(tmp_path / "r")])
    assert rc == 0
    cap = capsys.readouterr()
    freq = [x for x in cap.out.splitlines() if x.startswith("step ")]
    assert freq and all("loss(mean of 2 steps) " in x for x in freq), freq
    prog = [x for x in cap.err.splitlines() if x.startswith("train ")]
    assert prog and all("loss(mean of last " in x for x in prog), prog
    summary = cap.out.strip().splitlines()[-1]
    assert "last-batch loss " in summary and "loss(mean of last 10) " in summary
    assert " final loss " not in summary


def test_progress_of_a_resumed_run_counts_the_global_step(art, tmp_path, capsys):
    out = tmp_path / "r"
    assert cli.main(["train", "--artifact", str(art), "--steps", "3", "--no-eval",
                     "--out", str(out), "--quiet"]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--artifact", str(art), "--steps", "6", "--no-eval",
                     "--no-final-checkpoint", "--resume", "--out", str(out)]) == 0
    prog = [x.split()[1] for x in capsys.readouterr().err.splitlines()
            if x.startswith("train ")]
    assert prog[0] == "4/6" and prog[-1] == "6/6", prog


def test_training_data_smaller_than_a_batch_is_refused_before_compiling(tmp_path, capsys):
    from dlrm_tvm.data.criteo import write_synthetic_raw

    raw = tmp_path / "train.tsv"  # 100 rows: 86 to train on, fewer than a batch of 128
    write_synthetic_raw(raw, 100, seed=35, terabyte_style=False)
    out = tmp_path / "r"
    rc = cli.main(["train", "--config", "tiny", "--data", "criteo-kaggle", "--data-path",
                   str(raw), "--steps", "2", "--out", str(out)])
    assert rc != 0
    assert "fewer than one batch of 128" in capsys.readouterr().err
    assert not (out / "artifact").exists()  # refused before the compile, not after it


def test_bench_reports_each_contender_as_it_starts_and_ends(caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="dlrm_tvm"):
        assert cli.main(["bench", "--config", "tiny", "--steps", "2", "--warmup", "1",
                         "--no-torch-compile"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("bench: ")]
    for name in ("dlrm-tvm fp32", "torch eager fp32", "torch bf16 autocast"):
        mine = [x for x in lines if x.startswith(f"bench: {name}: ")]
        assert len(mine) == 2 and "steps" in mine[0] and "ms/step" in mine[1], lines


def test_help_describes_train_and_every_checkpoint_option(capsys):
    p = build_parser({k: None for k in cli.COMMANDS})
    sub = next(a for a in p._actions if hasattr(a, "_name_parser_map"))
    helps = {a.dest: a.help for a in sub._choices_actions}
    assert "synthetic" not in helps["train"]
    for cmd in ("eval", "export-onnx", "export-reference", "export-torchrec"):
        opt = sub._name_parser_map[cmd]._option_string_actions["--checkpoint"]
        assert opt.help and "run directory" in opt.help, cmd


def test_eval_refuses_an_out_that_holds_a_summary_unless_overwrite(art, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--artifact", str(art), "--steps", "2", "--no-eval", "--quiet",
                     "--out", str(run)]) == 0
    before = (run / "summary.json").read_text()
    assert cli.main(["eval", "--checkpoint", str(run), "--quiet", "--out", str(run)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run / "summary.json").read_text() == before  # the run's summary is kept
    ev = ["eval", "--checkpoint", str(run), "--quiet", "--out", str(tmp_path / "e")]
    assert cli.main(ev) == 0
    assert cli.main(ev) == 2
    assert cli.main([*ev, "--overwrite"]) == 0


def test_train_help_is_short_and_the_aliases_are_behind_help_aliases():
    """`train --help` under 150 lines on an 80-column terminal; the reference's and torchrec's
    flags are listed by --help-aliases (and still parse)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80"}
    run = [sys.executable, "-m", "dlrm_tvm", "train"]
    helptext = subprocess.run([*run, "--help"], capture_output=True, text=True, env=env,
                              timeout=60, check=True).stdout
    assert len(helptext.splitlines()) < 150, len(helptext.splitlines())
    assert "--numpy-rand-seed" not in helptext and "--batch_size" not in helptext
    assert "--help-aliases" in helptext
    aliases = subprocess.run([*run, "--help-aliases"], capture_output=True, text=True, env=env,
                             timeout=60, check=True).stdout
    for flag in ("--numpy-rand-seed", "--print-freq", "--batch_size", "--dense_arch_layer_sizes"):
        assert flag in aliases, flag
    args = cli.build_parser().parse_args(["train", "--numpy-rand-seed", "3", "--batch_size", "8"])
    assert args.ref_numpy_rand_seed == 3 and args.tr_batch_size == 8


def test_kernels_bench_help_lists_no_data_file_flags():
    """kernels bench reads no data files: their flags are not offered (they were, and ignored)."""
    kb = cli.build_parser()
    sub = next(a for a in kb._actions if hasattr(a, "_name_parser_map"))
    kernels = sub._name_parser_map["kernels"]
    ksub = next(a for a in kernels._actions if hasattr(a, "_name_parser_map"))
    opts = ksub._name_parser_map["bench"]._option_string_actions
    for flag in ("--data", "--data-path", "--eval-data-path", "--labels", "--skip-bad-lines"):
        assert flag not in opts, flag
    assert "--multi-hot-sizes" in opts and "--index-distribution" in opts  # the bags' shapes
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["kernels", "bench", "--data-path", "x"])


def test_an_output_that_is_an_input_or_a_run_file_is_refused(art, tmp_path, capsys):
    """export-reference --out R/checkpoints/step_N/mlp.npz overwrote its own input, and
    --mlperf-logging R/metrics.jsonl interleaved MLLOG lines into the metrics (were)."""
    run = tmp_path / "run"
    assert cli.main(["train", "--artifact", str(art), "--steps", "2", "--no-eval", "--quiet",
                     "--out", str(run)]) == 0
    step = next((run / "checkpoints").glob("step_*"))
    before = (step / "mlp.npz").read_bytes()
    assert cli.main(["export-reference", "--checkpoint", str(run), "--out",
                     str(step / "mlp.npz")]) == 2
    assert "would overwrite the --checkpoint it reads" in capsys.readouterr().err
    assert (step / "mlp.npz").read_bytes() == before
    r2 = tmp_path / "r2"
    assert cli.main(["train", "--artifact", str(art), "--steps", "2", "--no-eval", "--quiet",
                     "--mlperf-logging", str(r2 / "metrics.jsonl"), "--out", str(r2)]) == 2
    assert "one of the run's own files" in capsys.readouterr().err


def test_an_export_beside_the_run_files_is_fine(art, tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--artifact", str(art), "--steps", "2", "--no-eval", "--quiet",
                     "--out", str(run)]) == 0
    assert cli.main(["export-reference", "--checkpoint", str(run), "--out",
                     str(run / "ref.pt")]) == 0
    assert cli.main(["export-reference", "--checkpoint", str(run), "--out",
                     str(run / "summary.json")]) == 2
