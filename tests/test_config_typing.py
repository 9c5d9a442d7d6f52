"""Config typing: TOML/JSON values are type-checked against the config fields, and numeric flags
refuse values outside their domain (argparse error, exit status 2, the flag named). No
compilation: every case is refused before anything is built."""

from __future__ import annotations

import json

import pytest

from dlrm_tvm import cli
from dlrm_tvm.config import PRESETS, Config, ConfigError, TrainConfig, load_config, to_toml

# ---------------------------------------------------------------- TOML values


def _load(tmp_path, text: str) -> Config:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return load_config(p)


def _refused(tmp_path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text)
    return str(e.value)


def test_string_table_rows(tmp_path):
    # used to train 4 tables of 1 row (the string iterated char by char)
    msg = _refused(tmp_path, '[model]\ntable_rows = "1111"\n')
    assert "[model] table_rows must be a list of integers, got the string '1111'" in msg
    assert "bad.toml" in msg  # the file is named too


def test_string_bool(tmp_path):
    # used to turn the diagonal on ("false" is a truthy string)
    msg = _refused(tmp_path, 'preset = "tiny"\n[model]\ninteraction_itself = "false"\n')
    assert "[model] interaction_itself must be true or false, got the string 'false'" in msg


def test_section_not_a_table(tmp_path):
    # used to be a Python traceback
    msg = _refused(tmp_path, "model = 5\n")
    assert "model must be a table" in msg and "the integer 5" in msg
    msg = _refused(tmp_path, 'preset = "tiny"\ntrain = "fast"\n')
    assert "train must be a table" in msg and "the string 'fast'" in msg


def test_name_not_a_string(tmp_path):
    msg = _refused(tmp_path, "name = 3\n")
    assert "name must be a string, got the integer 3" in msg
    msg = _refused(tmp_path, "preset = 3\n")
    assert "preset must be a string, got the integer 3" in msg


def test_float_where_int(tmp_path):
    msg = _refused(tmp_path, "[train]\nbatch_size = 1.5\n")
    assert "[train] batch_size must be an integer, got the float 1.5" in msg


def test_bool_where_int(tmp_path):
    msg = _refused(tmp_path, "[train]\nsteps = true\n")
    assert "[train] steps must be an integer, got the boolean true" in msg


def test_nan_learning_rate_in_toml(tmp_path):
    msg = _refused(tmp_path, "[train]\nlearning_rate = nan\n")
    assert "learning_rate must be > 0 and finite, got nan" in msg
    msg = _refused(tmp_path, "[train]\nlearning_rate = inf\n")
    assert "learning_rate must be > 0 and finite, got inf" in msg
    msg = _refused(tmp_path, "[data]\nzipf_alpha = nan\n")
    assert "zipf_alpha must be > 0 and finite" in msg
    with pytest.raises(ConfigError, match="learning_rate must be > 0 and finite"):
        TrainConfig(learning_rate=float("inf"))


def test_list_of_strings_mlp_bot(tmp_path):
    msg = _refused(tmp_path, '[model]\nmlp_bot = ["13", "64", "16"]\n')
    assert "[model] mlp_bot must be a list of integers, got the list ['13', '64', '16']" in msg


def test_string_where_float_and_str(tmp_path):
    msg = _refused(tmp_path, '[train]\nlearning_rate = "0.1"\n')
    assert "[train] learning_rate must be a number, got the string '0.1'" in msg
    msg = _refused(tmp_path, "[model]\ninteraction = 1\n")
    assert "[model] interaction must be a string, got the integer 1" in msg


def test_int_where_float_is_accepted(tmp_path):
    c = _load(tmp_path, "[train]\nlearning_rate = 1\n")
    assert c.train.learning_rate == 1.0 and isinstance(c.train.learning_rate, float)


def test_from_dict_refuses_the_same(tmp_path):
    """Checkpoint manifests (JSON) go through from_dict: the same checks apply."""
    d = PRESETS["tiny"].to_dict()
    d["model"]["table_rows"] = "1111"
    with pytest.raises(ConfigError, match=r"\[model\] table_rows must be a list of integers"):
        Config.from_dict(d)
    with pytest.raises(ConfigError, match="a config must be a table"):
        Config.from_dict([1, 2])  # type: ignore[arg-type]


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_typed(name, tmp_path):
    c = PRESETS[name]
    assert Config.from_dict(c.to_dict()) == c
    # through JSON, as a checkpoint's manifest.json (tuples come back as lists)
    assert Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    p = tmp_path / f"{name}.toml"
    p.write_text(to_toml(c))
    assert load_config(p) == c


# ---------------------------------------------------------------- numeric flags


def _flag_refused(capsys, argv: list[str], flag: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}:" in err
    return err


def test_threads_zero(capsys):
    err = _flag_refused(capsys, ["train", "--threads", "0"], "--threads")
    assert "must be an integer >= 1, got '0'" in err


def test_checkpoint_every_negative(capsys):
    err = _flag_refused(capsys, ["train", "--checkpoint-every", "-3"], "--checkpoint-every")
    assert "must be an integer >= 0, got '-3'" in err


def test_keep_checkpoints_zero(capsys):
    err = _flag_refused(capsys, ["train", "--keep-checkpoints", "0"], "--keep-checkpoints")
    assert "must be an integer >= 1" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0"])
def test_learning_rate_out_of_domain(capsys, value):
    err = _flag_refused(capsys, ["train", "--learning-rate", value], "--learning-rate")
    assert "must be a finite number > 0" in err


def test_target_auc_above_one(capsys):
    err = _flag_refused(capsys, ["train", "--target-auc", "1.5"], "--target-auc")
    assert "0 < x <= 1" in err


def test_eval_batches_zero(capsys):
    _flag_refused(capsys, ["train", "--eval-batches", "0"], "--eval-batches")
    _flag_refused(capsys, ["eval", "--checkpoint", "c", "--out", "o", "--eval-batches", "0"],
                  "--eval-batches")


@pytest.mark.parametrize(
    "argv,flag",
    [
        (["train", "--steps", "-1"], "--steps"),
        (["bench", "--steps", "0"], "--steps"),
        (["bench", "--warmup", "-1"], "--warmup"),
        (["train", "--seed", "-1"], "--seed"),
        (["train", "--comm-timeout", "0"], "--comm-timeout"),
        (["train", "--progress-poll-us", "-5"], "--progress-poll-us"),
        (["train", "--rank-memory-gib", "inf"], "--rank-memory-gib"),
        (["train", "--mini-batch-size", "0"], "--mini-batch-size"),
        (["train", "--zipf-alpha", "nan"], "--zipf-alpha"),
        (["train", "--lr-num-warmup-steps", "-1"], "--lr-num-warmup-steps"),
        (["train", "--max-ind-range", "0"], "--max-ind-range"),
        (["train", "--arch-sparse-feature-size", "0"], "--arch-sparse-feature-size"),
        (["train", "--num-indices-per-lookup", "0"], "--num-indices-per-lookup"),
        (["bench", "--threads-per-rank", "0"], "--threads-per-rank"),
        (["bench", "--net-bandwidth-gbs", "0"], "--net-bandwidth-gbs"),
        (["bench", "--loader-rows", "0"], "--loader-rows"),
        (["preprocess", "x", "--out", "o", "--days", "0"], "--days"),
        (["export-onnx", "--checkpoint", "c", "--out", "o", "--opset", "0"], "--opset"),
        (["kernels", "bench", "--reps", "0"], "--reps"),
        (["kernels", "bench", "--batch", "0"], "--batch"),
        (["kernels", "tune", "--budget-s", "-1"], "--budget-s"),
        (["train", "--threads", "two"], "--threads"),
    ],
)
def test_other_numeric_flags(capsys, argv, flag):
    _flag_refused(capsys, argv, flag)


def test_in_domain_flags_parse():
    args = cli.build_parser().parse_args(
        ["train", "--threads", "1", "--checkpoint-every", "0", "--keep-checkpoints", "1",
         "--learning-rate", "0.5", "--target-auc", "1", "--eval-batches", "1", "--steps", "0"])
    assert (args.threads, args.checkpoint_every, args.keep_checkpoints) == (1, 0, 1)
    assert (args.learning_rate, args.target_auc, args.eval_batches, args.steps) == (0.5, 1.0, 1, 0)
