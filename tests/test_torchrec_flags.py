"""torchrec's dlrm_main.py flags on `dlrm-tvm train`: each mapped onto ours, accepted with a
reason or refused with one (dlrm_tvm/torchrec_cli.py; docs/torchrec-flags.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dlrm_tvm import cli
from dlrm_tvm.torchrec_cli import TORCHREC_FLAGS, doc_table, translate

from dlrm_tvm.config import ConfigError

REPO = Path(__file__).resolve().parents[1]


def _args(*argv):
    return cli.build_parser().parse_args(["train", *argv])


def test_the_doc_table_is_the_flag_table():
    text = (REPO / "docs" / "torchrec-flags.md").read_text()
    assert doc_table() in text
    assert len({f.flag for f in TORCHREC_FLAGS}) == len(TORCHREC_FLAGS)


def test_every_torchrec_flag_parses_on_train():
    for f in TORCHREC_FLAGS:
        value = [] if f.switch else [{"--interaction_type": "original",
                                      "--dataset_name": "criteo_1t",
                                      "--multi_hot_distribution_type": "uniform",
                                      "--learning_rate": "0.5",
                                      "--validation_auroc": "0.8",
                                      "--synthetic_multi_hot_criteo_path": "d",
                                      "--in_memory_binary_criteo_path": "d",
                                      "--interaction_branch1_layer_sizes": "8,8",
                                      "--interaction_branch2_layer_sizes": "8,8",
                                      }.get(f.flag, "4,4" if "sizes" in f.flag or
                                            "per_feature" in f.flag else "4")]
        _args(f.flag, *value)


def test_an_mlperf_dcnv2_command_line_maps_onto_our_config():
    args = _args("--embedding_dim", "128", "--dense_arch_layer_sizes", "512,256,128",
                 "--over_arch_layer_sizes", "1024,1024,512,256,1", "--interaction_type",
                 "dcn", "--dcn_num_layers", "3", "--dcn_low_rank_dim", "512", "--adagrad",
                 "--learning_rate", "0.004", "--batch_size", "16384", "--multi_hot_sizes",
                 "3,2,1", "--num_embeddings_per_feature", "40000000,39060,17295",
                 "--lr_warmup_steps", "10", "--lr_decay_start", "20", "--lr_decay_steps",
                 "30", "--validation_freq_within_epoch", "100", "--validation_auroc",
                 "0.80275", "--shuffle_training_set", "--evaluate_on_training_end",
                 "--epochs", "2", "--pin_memory", "--mmap_mode")
    run = translate(args, ranks=8)
    assert args.arch_sparse_feature_size == 128
    assert args.arch_mlp_bot == "13-512-256-128" and args.arch_mlp_top == "1024-1024-512-256-1"
    assert args.arch_interaction_op == "dcn" and args.optimizer == "adagrad"
    assert args.dcn_num_layers == 3 and args.dcn_low_rank_dim == 512
    assert args.learning_rate == 0.004 and args.mini_batch_size == 16384 * 8
    assert tuple(args.multi_hot_sizes) == (3, 2, 1)
    assert args.arch_embedding_size == "40000000-39060-17295"
    assert (args.lr_num_warmup_steps, args.lr_decay_start_step, args.lr_num_decay_steps) == (
        10, 20, 30)
    assert args.eval_every == 100 and args.target_auc == 0.80275
    assert args.data_randomize == "total" and args.eval is True
    assert run.epochs == 2 and run.batches_per_epoch is None
    assert any("--pin_memory: accepted" in n for n in run.notes)
    assert any("per rank" in n for n in run.notes)


@pytest.mark.parametrize("argv,says", [
    (["--interaction_type", "projection"], "DLRM_Projection"),
    (["--interaction_branch1_layer_sizes", "8,8"], "projection interaction"),
    (["--in_memory_binary_criteo_path", "d"], "dlrm-tvm preprocess"),
    (["--limit_val_batches", "3"], "every held-out row"),
    (["--shuffle_batches"], "--data-randomize"),
    (["--evaluate_on_epoch_end"], "--eval-every"),
    (["--collect_multi_hot_freqs_stats"], "not collected"),
    (["--multi_hot_distribution_type", "pareto"], "pareto is not built"),
    (["--dataset_name", "criteo_kaggle"], "--data"),
    (["--batch_size", "64", "--mini-batch-size", "128"], "disagree"),
    (["--epochs", "1", "--steps", "5"], "not both"),
])
def test_refused_with_the_reason(argv, says, tmp_path, capsys):
    assert cli.main(["train", *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert says in err, err
    assert not (tmp_path / "r" / "summary.json").exists()


def test_a_torchrec_command_line_trains(tmp_path):
    out = tmp_path / "tr"
    assert cli.main(["train", "--config", "dcnv2-tiny", "--embedding_dim", "16",
                     "--dense_arch_layer_sizes", "64,16", "--over_arch_layer_sizes", "64,1",
                     "--interaction_type", "dcn", "--dcn_num_layers", "2",
                     "--dcn_low_rank_dim", "32", "--adagrad", "--learning_rate", "0.004",
                     "--batch_size", "64", "--epochs", "1", "--limit_train_batches", "3",
                     "--no-eval", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    m, t = s["config"]["model"], s["config"]["train"]
    assert s["steps"] == 3 and t["batch_size"] == 64 and t["optimizer"] == "adagrad"
    assert m["embedding_dim"] == 16 and list(m["mlp_bot"]) == [13, 64, 16]
    assert list(m["mlp_top"]) == [64, 1] and m["dcn_num_layers"] == 2
