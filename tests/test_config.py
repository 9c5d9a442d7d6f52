"""Config: presets, validation messages, TOML files, the reference's flags, memory check, LR."""

from __future__ import annotations

import dataclasses

import pytest

from dlrm_tvm.config import (
    CRITEO_TERABYTE_ROWS,
    MLPERF_DEFAULT_MAX_IND_RANGE,
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    mlperf_rows,
)

# ---------------------------------------------------------------- presets


def test_preset_tiny():
    c = PRESETS["tiny"]
    m = c.model
    assert c.name == "tiny"
    assert m.table_rows == (1000,) * 26
    assert m.embedding_dim == 16
    assert m.mlp_bot == (13, 64, 16)
    assert m.mlp_top == (64, 1)
    assert m.interaction == "dot" and m.interaction_itself is False
    assert c.train.batch_size == 128
    assert c.data.num_indices_per_lookup == 1
    # derived sizes: F = 27 features, 351 pairs, top MLP input 16 + 351 = 367 padded to 368
    assert m.num_tables == 26 and m.num_dense == 13 and m.num_features == 27
    assert m.num_pairs == 351
    assert m.interaction_width == 367 and m.interaction_width_padded == 368
    assert m.top_layers == [(367, 64), (64, 1)]
    assert m.bot_layers == [(13, 64), (64, 16)]
    assert m.total_rows == 26_000
    assert m.table_offsets[:3] == (0, 1000, 2000)


def test_preset_small():
    c = PRESETS["small"]
    m = c.model
    assert m.table_rows == (1_000_000,) * 8
    assert m.embedding_dim == 64
    assert m.mlp_bot == (512, 512, 64)
    assert m.mlp_top == (1024, 1024, 1024, 1)
    assert m.interaction == "dot"
    assert c.train.batch_size == 2048
    assert c.data.num_indices_per_lookup == 100
    assert m.num_pairs == 36 and m.interaction_width == 100
    assert m.interaction_width_padded == 112


def test_preset_mlperf():
    c = PRESETS["mlperf"]
    m = c.model
    assert len(CRITEO_TERABYTE_ROWS) == 26
    assert m.table_rows == tuple(min(r, MLPERF_DEFAULT_MAX_IND_RANGE) for r in CRITEO_TERABYTE_ROWS)
    assert max(m.table_rows) == 1_000_000
    assert m.table_rows == mlperf_rows(1_000_000)
    assert m.embedding_dim == 128
    assert m.mlp_bot == (13, 512, 256, 128)
    assert m.mlp_top == (1024, 1024, 512, 256, 1)
    assert m.interaction == "dot"
    assert c.train.batch_size == 2048
    assert c.train.learning_rate == 1.0
    assert c.data.num_indices_per_lookup == 1
    # "1M keeps the preset within a 24 GiB machine (3.5 GiB)"
    assert 3.0 * 2**30 < m.param_bytes() < 3.5 * 2**30
    assert m.interaction_width == 128 + 27 * 26 // 2


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_round_trips_through_dict(name):
    c = PRESETS[name]
    assert Config.from_dict(c.to_dict()) == c
    assert load_config(name) is c


def test_load_config_none_is_tiny():
    assert load_config(None) == PRESETS["tiny"]


# ---------------------------------------------------------------- validation


def _model(**kw):
    return dataclasses.replace(PRESETS["tiny"].model, **kw)


def test_bottom_mlp_must_end_at_embedding_dim():
    with pytest.raises(ConfigError, match=r"bottom MLP ends at width 32.*embedding dim is 16"):
        _model(mlp_bot=(13, 64, 32))
    with pytest.raises(ConfigError, match="embedding dim"):
        _model(embedding_dim=8)


def test_top_mlp_must_end_at_one():
    with pytest.raises(ConfigError, match=r"top MLP must end at width 1.*got 2"):
        _model(mlp_top=(64, 2))


@pytest.mark.parametrize("op", ["sum", "DOT", "", "concat"])
def test_interaction_must_be_dot_or_cat(op):
    with pytest.raises(ConfigError, match=r"interaction must be 'dot' or 'cat'"):
        _model(interaction=op)


@pytest.mark.parametrize(
    "kw,where",
    [
        ({"table_rows": (10, 0, 5)}, r"table_rows\[1\]"),
        ({"table_rows": (10, -3)}, r"table_rows\[1\]"),
        ({"table_rows": ()}, "at least one embedding table"),
        ({"embedding_dim": 0, "mlp_bot": (13, 0)}, "embedding_dim"),
        ({"embedding_dim": -16, "mlp_bot": (13, -16)}, "embedding_dim"),
        ({"mlp_bot": (0, 64, 16)}, r"mlp_bot\[0\]"),
        ({"mlp_bot": (13, -64, 16)}, r"mlp_bot\[1\]"),
        ({"mlp_top": (0, 1)}, r"mlp_top\[0\]"),
        ({"mlp_top": (-5, 1)}, r"mlp_top\[0\]"),
    ],
)
def test_model_sizes_must_be_positive(kw, where):
    with pytest.raises(ConfigError, match=where):
        _model(**kw)


@pytest.mark.parametrize(
    "kw,where",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer"),
        ({"batch_size": -2}, "batch_size must be a positive integer"),
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"learning_rate": -0.1}, "learning_rate must be > 0"),
        ({"steps": -1}, "steps must be a non-negative integer"),
        ({"lr_num_warmup_steps": -1}, "lr_num_warmup_steps"),
        ({"log_every": 0}, "log_every"),
    ],
)
def test_train_sizes_must_be_positive(kw, where):
    with pytest.raises(ConfigError, match=where):
        TrainConfig(**kw)


def test_data_validation():
    with pytest.raises(ConfigError, match="num_indices_per_lookup must be a positive integer"):
        DataConfig(num_indices_per_lookup=0)
    with pytest.raises(ConfigError, match="labels must be 'random' or 'teacher'"):
        DataConfig(labels="noise")
    with pytest.raises(ConfigError, match="data kind must be one of"):
        DataConfig(kind="criteo")
    with pytest.raises(ConfigError, match="needs --data-path"):
        DataConfig(kind="criteo-kaggle")


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------- TOML files


def test_toml_preset_with_overrides(tmp_path):
    p = tmp_path / "mine.toml"
    p.write_text(
        'preset = "tiny"\n'
        "[model]\n"
        "embedding_dim = 8\n"
        "mlp_bot = [13, 32, 8]\n"
        "table_rows = [100, 200, 300]\n"
        "[train]\n"
        "batch_size = 64\n"
        "learning_rate = 0.25\n"
        "[data]\n"
        "num_indices_per_lookup = 3\n"
        "num_indices_per_lookup_fixed = false\n"
    )
    c = load_config(p)
    tiny = PRESETS["tiny"]
    assert c.model.embedding_dim == 8
    assert c.model.mlp_bot == (13, 32, 8)
    assert c.model.table_rows == (100, 200, 300)
    assert c.model.mlp_top == tiny.model.mlp_top  # kept from the preset
    assert c.model.interaction == tiny.model.interaction
    assert c.train.batch_size == 64
    assert c.train.learning_rate == 0.25
    assert c.train.steps == tiny.train.steps
    assert c.data.num_indices_per_lookup == 3
    assert c.data.num_indices_per_lookup_fixed is False
    assert isinstance(c.model.table_rows, tuple)


def test_toml_without_preset(tmp_path):
    p = tmp_path / "plain.toml"
    p.write_text("[model]\ntable_rows = [10, 20]\n[train]\nbatch_size = 4\n")
    c = load_config(p)
    assert c.name == "plain"
    assert c.model.table_rows == (10, 20)
    assert c.train.batch_size == 4
    assert c.model.embedding_dim == ModelConfig().embedding_dim


@pytest.mark.parametrize(
    "text,match",
    [
        ('preset = "tiny"\n[model]\nembeding_dim = 8\n',
         r"unknown keys in \[model\].*embeding_dim"),
        ("[train]\nbatchsize = 8\n", r"unknown keys in \[train\].*batchsize"),
        ("[data]\nlookups = 8\n", r"unknown keys in \[data\].*lookups"),
        ('preset = "tiny"\n[optimizer]\nmomentum = 0.9\n', r"unknown config sections.*optimizer"),
        ('preset = "huge"\n', "unknown preset 'huge'"),
        ("[model\nbroken", "not valid TOML"),
        ('preset = "tiny"\n[model]\nmlp_top = [64, 3]\n', "top MLP must end at width 1"),
    ],
    ids=["model-key", "train-key", "data-key", "section", "preset", "syntax", "invalid-value"],
)
def test_toml_errors(tmp_path, text, match):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(p)


def test_unknown_keys_error_lists_known_keys(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[model]\nembeding_dim = 8\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "embedding_dim" in str(e.value)  # the known keys are listed


def test_missing_file_or_preset():
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config("/nonexistent/dir/none.toml")


# ---------------------------------------------------------------- the reference's flags


def test_apply_overrides_reference_flags():
    c = apply_overrides(
        PRESETS["tiny"],
        arch_sparse_feature_size=8,
        arch_embedding_size="10-20-30",
        arch_mlp_bot="13-32-8",
        arch_mlp_top="64-32-1",
        arch_interaction_op="cat",
        mini_batch_size=32,
        learning_rate=0.05,
        num_indices_per_lookup=4,
    )
    m = c.model
    assert m.embedding_dim == 8
    assert m.table_rows == (10, 20, 30)
    assert m.mlp_bot == (13, 32, 8)
    assert m.mlp_top == (64, 32, 1)
    assert m.interaction == "cat"
    assert m.interaction_width == 4 * 8
    assert c.train.batch_size == 32
    assert c.train.learning_rate == 0.05
    assert c.data.num_indices_per_lookup == 4
    assert c.name == "tiny"


def test_apply_overrides_none_means_unset():
    base = PRESETS["tiny"]
    c = apply_overrides(base, arch_sparse_feature_size=None, arch_mlp_bot=None,
                        mini_batch_size=None, learning_rate=None)
    assert c == base


def test_apply_overrides_partial_keeps_the_rest():
    base = PRESETS["small"]
    c = apply_overrides(base, mini_batch_size=512, max_ind_range=1000)
    assert c.train.batch_size == 512
    assert c.model.table_rows == (1000,) * 8
    assert c.model.mlp_bot == base.model.mlp_bot
    assert c.train.learning_rate == base.train.learning_rate


def test_apply_overrides_inconsistent_dim_is_explained():
    # changing D without the bottom MLP's last width: the message names both flags
    with pytest.raises(ConfigError, match="--arch-mlp-bot.*--arch-sparse-feature-size"):
        apply_overrides(PRESETS["tiny"], arch_sparse_feature_size=32)


@pytest.mark.parametrize(
    "flag,value",
    [("arch_mlp_bot", "13-x-16"), ("arch_embedding_size", "10,20"), ("arch_mlp_top", "64--1")],
)
def test_apply_overrides_bad_dash_list(flag, value):
    with pytest.raises(ConfigError, match="dash-separated integers"):
        apply_overrides(PRESETS["tiny"], **{flag: value})


def test_apply_overrides_bad_values():
    with pytest.raises(ConfigError, match="interaction must be"):
        apply_overrides(PRESETS["tiny"], arch_interaction_op="sum")
    with pytest.raises(ConfigError, match="batch_size"):
        apply_overrides(PRESETS["tiny"], mini_batch_size=0)
    with pytest.raises(ConfigError, match="learning_rate"):
        apply_overrides(PRESETS["tiny"], learning_rate=-1.0)
    with pytest.raises(ConfigError, match="num_indices_per_lookup"):
        apply_overrides(PRESETS["tiny"], num_indices_per_lookup=0)
    with pytest.raises(ConfigError, match="max-ind-range"):
        apply_overrides(PRESETS["tiny"], max_ind_range=0)


# ---------------------------------------------------------------- memory check


def test_check_fits_refuses_with_gib_message():
    c = PRESETS["tiny"]
    with pytest.raises(ConfigError, match="GiB") as e:
        c.check_fits(available_bytes=1024)
    msg = str(e.value)
    assert "26,000 embedding rows" in msg
    assert "memory" in msg


def test_check_fits_accepts_enough_memory():
    c = PRESETS["mlperf"]
    c.check_fits(available_bytes=64 * 2**30)  # no error
    with pytest.raises(ConfigError, match="GiB"):
        c.check_fits(available_bytes=2 * 2**30)
    # the 80% margin: exactly the parameter size is not enough
    with pytest.raises(ConfigError):
        c.check_fits(available_bytes=c.model.param_bytes())


# ---------------------------------------------------------------- learning-rate schedule


def test_lr_constant_without_schedule():
    t = TrainConfig(learning_rate=0.3)
    assert all(t.lr_at(s) == 0.3 for s in range(0, 1000, 37))


def test_lr_warmup_then_decay():
    base, warm, start, ndecay = 2.0, 10, 20, 8
    t = TrainConfig(learning_rate=base, lr_num_warmup_steps=warm, lr_decay_start_step=start,
                    lr_num_decay_steps=ndecay)
    lrs = [t.lr_at(s) for s in range(40)]
    # warmup: linear rise from 0 towards base (the reference's LRPolicyScheduler)
    for s in range(warm):
        assert lrs[s] == pytest.approx(base * s / warm)
    steps = [lrs[s + 1] - lrs[s] for s in range(warm - 1)]
    assert all(d == pytest.approx(base / warm) for d in steps)
    assert all(lrs[s] < lrs[s + 1] for s in range(warm))
    # plateau at base until the decay starts
    assert all(lrs[s] == base for s in range(warm, start + 1))
    # polynomial (squared) decay, non-increasing, never below 1e-7
    for s in range(start, 40):
        done = min(s, start + ndecay) - start
        assert lrs[s] == pytest.approx(max(1e-7, base * ((ndecay - done) / ndecay) ** 2))
        assert lrs[s] >= 1e-7
    assert all(lrs[s + 1] <= lrs[s] for s in range(start, 39))
    assert lrs[start + ndecay // 2] == pytest.approx(base * 0.25)
    assert lrs[start + ndecay] == 1e-7
    assert lrs[39] == 1e-7  # stays at the floor after the decay ends
    assert max(lrs) == base


def test_lr_warmup_only():
    t = TrainConfig(learning_rate=1.0, lr_num_warmup_steps=4)
    assert [t.lr_at(s) for s in range(6)] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.0])



def test_check_fits_counts_rwsadagrad_state():
    """rwsadagrad adds a row accumulator and an MLP-sized one: a budget that fits SGD can
    refuse it."""
    c = dataclasses.replace(PRESETS["small"], train=dataclasses.replace(
        PRESETS["small"].train, optimizer="rwsadagrad"))
    need_sgd = c.model.param_bytes()
    budget = int(need_sgd / 0.8) + 1024  # SGD fits exactly, the accumulators do not
    PRESETS["small"].check_fits(available_bytes=budget)
    with pytest.raises(ConfigError, match="rwsadagrad accumulators"):
        c.check_fits(available_bytes=budget)


def test_max_ind_range_lifts_a_presets_table_cap():
    """dcnv2 and mlperf cap their tables at 1M rows; --max-ind-range re-caps from the model's
    own sizes, so a larger value lifts the cap and a smaller one lowers it."""
    from dlrm_tvm.config import CRITEO_TERABYTE_ROWS, DCNV2_ROWS

    lifted = apply_overrides(PRESETS["dcnv2"], max_ind_range=40_000_000)
    assert lifted.model.table_rows == DCNV2_ROWS
    assert max(PRESETS["dcnv2"].model.table_rows) == 1_000_000
    assert apply_overrides(PRESETS["dcnv2"], max_ind_range=5_000_000).model.table_rows == \
        tuple(min(r, 5_000_000) for r in DCNV2_ROWS)
    assert max(apply_overrides(PRESETS["mlperf"], max_ind_range=200_000).model.table_rows) == \
        200_000
    assert apply_overrides(PRESETS["mlperf"], max_ind_range=10**9).model.table_rows == \
        CRITEO_TERABYTE_ROWS
    # a config's own tables (not a preset's capped copy) are only ever lowered
    tiny = apply_overrides(PRESETS["tiny"], max_ind_range=10**6)
    assert tiny.model.table_rows == PRESETS["tiny"].model.table_rows


@pytest.mark.parametrize("argv,says", [
    (["--dcn-num-layers", "7"], "add --arch-interaction-op dcn"),
    (["--arch-interaction-op", "cat", "--dcn-low-rank-dim", "8"], "the interaction is cat"),
    (["--arch-interaction-op", "dcn", "--arch-interaction-itself"], "the interaction is dcn"),
    (["--data", "criteo-kaggle", "--synthetic_multi_hot_criteo_path", "d"], "give one"),
    (["--data-path", "raw.txt"], "--data is synthetic"),
    (["--eval-data-path", "a.bin"], "--data is synthetic"),
])
def test_a_flag_the_config_would_ignore_is_refused(argv, says, tmp_path, capsys):
    """Every flag acts or is refused with the conflict named (was: accepted and ignored)."""
    from dlrm_tvm import cli

    assert cli.main(["train", *argv, "--steps", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert not (tmp_path / "r" / "summary.json").exists()


def test_an_artifacts_run_with_a_data_path_but_no_kind_is_refused(tmp_path, capsys):
    from dlrm_tvm import cli

    art = tmp_path / "a"
    assert cli.main(["compile", "--config", "tiny", "--out", str(art)]) == 0
    assert cli.main(["train", "--artifact", str(art), "--data-path", "raw.txt", "--steps", "1",
                     "--out", str(tmp_path / "r")]) == 2
    assert "--data is synthetic" in capsys.readouterr().err
