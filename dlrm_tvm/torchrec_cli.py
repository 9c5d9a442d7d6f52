"""torchrec's ``dlrm_main.py`` flags (MLPerf DLRM-DCNv2's trainer) on ``dlrm-tvm train``.

A command line pasted from torchrec's example (or MLPerf's recommendation_v2 reference) runs: each
of its flags is one row of ``TORCHREC_FLAGS``, as the facebookresearch/dlrm flags are in
reference_cli.py, and ``translate`` turns their values into ours before the run starts:

* **mapped**: the same meaning through one of our flags (``--batch_size`` is the per-rank
  batch, so ``--mini-batch-size`` = it x ranks; ``--dense_arch_layer_sizes 512,256,64`` is
  ``--arch-mlp-bot 13-512-256-64``; ``--adagrad`` is ``--optimizer adagrad``...);
* **accepted**: nothing to do here, and the help says why (``--pin_memory``: no GPU);
* **refused**: a feature we do not have, refused with the reason and what to use instead (exit
  status 2), never silently ignored (``--interaction_type projection``).

``docs/torchrec-flags.md`` lists every flag with its treatment (a test keeps it equal to
``doc_table``).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from dlrm_tvm.config import ConfigError
from dlrm_tvm.config_io import nonneg_int, positive_int
from dlrm_tvm.reference_cli import RefFlag, _set, refuse_unsupported
from dlrm_tvm.reference_cli import doc_table as reference_doc_table


@dataclass(frozen=True)
class TorchrecFlag(RefFlag):
    registered: bool = False  # already one of our own flags (config_io): not added again
    origin = "torchrec"

    @property
    def dest(self) -> str:
        return "tr_" + self.flag.lstrip("-")

    def add_to(self, g, hidden: bool = False) -> None:
        if not self.registered:
            super().add_to(g, hidden)


def _ints(s: str) -> list[int]:
    try:
        vals = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") \
            from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1, got {s!r}")
    return vals


def _auc(s: str) -> float:
    v = float(s)
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"an AUROC in (0, 1], got {s}")
    return v


T = TorchrecFlag
TORCHREC_FLAGS: tuple[TorchrecFlag, ...] = (
    # ---- mapped
    T("--epochs", "mapped", "epochs to train (= the reference's --nepochs; without --steps)",
      positive_int),
    T("--batch_size", "mapped", "the batch of each rank: --mini-batch-size is it x the ranks "
      "(ours is the global batch)", positive_int),
    T("--limit_train_batches", "mapped", "batches per epoch (= the reference's --num-batches)",
      positive_int),
    T("--num_embeddings", "mapped", "rows of every table (= --arch-embedding-size N-N-...)",
      positive_int),
    T("--num_embeddings_per_feature", "mapped", "rows per table, comma-separated "
      "(= --arch-embedding-size, dash-separated)", _ints),
    T("--dense_arch_layer_sizes", "mapped", "the bottom MLP without its input width "
      "(= --arch-mlp-bot 13-...)", _ints),
    T("--over_arch_layer_sizes", "mapped", "the top MLP (= --arch-mlp-top)", _ints),
    T("--embedding_dim", "mapped", "the embedding dimension (= --arch-sparse-feature-size)",
      positive_int),
    T("--dcn_num_layers", "mapped", "the DCN's cross layers (= --dcn-num-layers)",
      positive_int),
    T("--dcn_low_rank_dim", "mapped", "each cross layer's rank (= --dcn-low-rank-dim)",
      positive_int),
    T("--seed", "mapped", "the seed of initialisation and data (= our --seed)", nonneg_int,
      registered=True),
    T("--synthetic_multi_hot_criteo_path", "mapped", "MLPerf's materialised multi-hot days "
      "(= --data criteo-multihot --data-path DIR)", registered=True),
    T("--learning_rate", "mapped", "the learning rate (= --learning-rate)", float),
    T("--shuffle_training_set", "mapped", "shuffle the training rows (= --data-randomize "
      "total)", switch=True),
    T("--validation_freq_within_epoch", "mapped", "evaluate every N steps (= --eval-every)",
      positive_int),
    T("--validation_auroc", "mapped", "stop when the held-out AUC reaches it (= --target-auc)",
      _auc),
    T("--evaluate_on_training_end", "mapped", "evaluate at the end (= --eval)", switch=True),
    T("--adagrad", "mapped", "exact Adagrad, as torchrec's (= --optimizer adagrad)",
      switch=True),
    T("--interaction_type", "mapped", "original (= --arch-interaction-op dot) or dcn; "
      "projection is refused: DLRM_Projection's branches are not built",
      choices=("original", "dcn", "projection")),
    T("--multi_hot_sizes", "mapped", "the bag size of each table (= --multi-hot-sizes)", _ints),
    T("--lr_warmup_steps", "mapped", "linear warm-up steps (= --lr-num-warmup-steps)",
      nonneg_int),
    T("--lr_decay_start", "mapped", "the step decay starts (= --lr-decay-start-step)",
      nonneg_int),
    T("--lr_decay_steps", "mapped", "decay steps (= --lr-num-decay-steps)", nonneg_int),
    # ---- accepted: nothing to do
    T("--drop_last_training_batch", "accepted", "a partial last training batch is always "
      "dropped", switch=True),
    T("--test_batch_size", "accepted", "evaluation predicts in batches of --mini-batch-size",
      positive_int),
    T("--pin_memory", "accepted", "no GPU: nothing to pin", switch=True),
    T("--mmap_mode", "accepted", "the day files are always memory-mapped", switch=True),
    T("--allow_tf32", "accepted", "a GPU setting: no effect on CPUs", switch=True),
    T("--print_sharding_plan", "accepted", "the plan is always printed and written to "
      "RUNDIR/sharding.json", switch=True),
    T("--print_progress", "accepted", "progress is always shown (--quiet hides it)",
      switch=True),
    T("--print_lr", "accepted", "every metrics.jsonl line carries the learning rate",
      switch=True),
    # ---- refused
    T("--dataset_name", "refused", "the dataset is chosen by --data (criteo-kaggle, "
      "criteo-terabyte, criteo-multihot, mlperf-bin); only criteo_1t with "
      "--synthetic_multi_hot_criteo_path is taken", ok_values=("criteo_1t", "criteo_1tb")),
    T("--in_memory_binary_criteo_path", "refused", "torchrec's in-memory day_*_sparse.npy "
      "files are not read: preprocess the raw days with `dlrm-tvm preprocess`, or give the "
      "multi-hot days with --synthetic_multi_hot_criteo_path"),
    T("--limit_val_batches", "refused", "every held-out row is evaluated (synthetic data: "
      "--eval-batches)", positive_int),
    T("--limit_test_batches", "refused", "every held-out row is evaluated (synthetic data: "
      "--eval-batches)", positive_int),
    T("--interaction_branch1_layer_sizes", "refused", "the projection interaction "
      "(DLRM_Projection) is not built"),
    T("--interaction_branch2_layer_sizes", "refused", "the projection interaction "
      "(DLRM_Projection) is not built"),
    T("--shuffle_batches", "refused", "rows within a batch are not reshuffled; "
      "--data-randomize shuffles the training rows", switch=True),
    T("--evaluate_on_epoch_end", "refused", "evaluation runs every --eval-every steps and at "
      "the end; give --eval-every the batches of an epoch", switch=True),
    T("--collect_multi_hot_freqs_stats", "refused", "access-frequency statistics are not "
      "collected", switch=True),
    T("--multi_hot_distribution_type", "refused", "synthetic multi-hot ids follow "
      "--index-distribution (uniform or zipf); pareto is not built",
      choices=("uniform", "pareto"), ok_values=("uniform",)),
)
del T
_BY_FLAG = {f.flag: f for f in TORCHREC_FLAGS}


def add_torchrec_args(p: argparse.ArgumentParser, hidden: bool = False) -> None:
    """torchrec's flags on ``p``; ``hidden``: parsed but out of --help."""
    g = p if hidden else p.add_argument_group(
        "torchrec compatibility (dlrm_main.py's flags, MLPerf DLRM-DCNv2; "
        "docs/torchrec-flags.md)")
    for f in TORCHREC_FLAGS:
        f.add_to(g, hidden)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The torchrec flags (those not also ours) given on this command line: {flag: value}."""
    return {f.flag: getattr(args, f.dest) for f in TORCHREC_FLAGS
            if not f.registered and getattr(args, f.dest, None) not in (None, False)}


@dataclass
class TorchrecRun:
    """What the torchrec flags ask of the run beyond our flags (train.RunOptions reads it)."""

    epochs: int | None = None
    batches_per_epoch: int | None = None
    notes: tuple[str, ...] = ()


def _dash(vals: list[int]) -> str:
    return "-".join(str(v) for v in vals)


def translate(args: argparse.Namespace, ranks: int = 1) -> TorchrecRun:
    """Apply the torchrec flags of ``args`` to our own (in place); refuse what we do not
    support (ConfigError: exit status 2, naming the flag and why). ``ranks``: the world size
    (``--batch_size`` is per rank)."""
    g = given(args)
    run = TorchrecRun()
    notes: list[str] = []
    refuse_unsupported(g, _BY_FLAG)
    if g.get("--interaction_type") == "projection":
        raise ConfigError("--interaction_type projection: not supported by dlrm-tvm: "
                          "DLRM_Projection's branches are not built (original or dcn)")
    if "--batch_size" in g:
        _set(args, "mini_batch_size", g["--batch_size"] * ranks, "--batch_size",
             "--mini-batch-size")
        if ranks > 1:
            notes.append(f"--batch_size {g['--batch_size']}: per rank, so the global batch "
                         f"(--mini-batch-size) is {g['--batch_size'] * ranks} on {ranks} ranks")
    if "--num_embeddings_per_feature" in g:
        _set(args, "arch_embedding_size", _dash(g["--num_embeddings_per_feature"]),
             "--num_embeddings_per_feature", "--arch-embedding-size")
    elif "--num_embeddings" in g:
        tables = _num_tables(args)
        _set(args, "arch_embedding_size", _dash([g["--num_embeddings"]] * tables),
             "--num_embeddings", "--arch-embedding-size")
    if "--dense_arch_layer_sizes" in g:
        _set(args, "arch_mlp_bot", _dash([13, *g["--dense_arch_layer_sizes"]]),
             "--dense_arch_layer_sizes", "--arch-mlp-bot")
    simple = {"--over_arch_layer_sizes": ("arch_mlp_top", "--arch-mlp-top", _dash),
              "--embedding_dim": ("arch_sparse_feature_size", "--arch-sparse-feature-size", int),
              "--dcn_num_layers": ("dcn_num_layers", "--dcn-num-layers", int),
              "--dcn_low_rank_dim": ("dcn_low_rank_dim", "--dcn-low-rank-dim", int),
              "--learning_rate": ("learning_rate", "--learning-rate", float),
              "--multi_hot_sizes": ("multi_hot_sizes", "--multi-hot-sizes",
                                    lambda v: tuple(v)),
              "--lr_warmup_steps": ("lr_num_warmup_steps", "--lr-num-warmup-steps", int),
              "--lr_decay_start": ("lr_decay_start_step", "--lr-decay-start-step", int),
              "--lr_decay_steps": ("lr_num_decay_steps", "--lr-num-decay-steps", int),
              "--validation_freq_within_epoch": ("eval_every", "--eval-every", int),
              "--validation_auroc": ("target_auc", "--target-auc", float)}
    for flag, (dest, ours, conv) in simple.items():
        if flag in g:
            _set(args, dest, conv(g[flag]), flag, ours,
                 unset=(None, 0) if dest == "eval_every" else (None,))
    if "--interaction_type" in g:
        _set(args, "arch_interaction_op", "dot" if g["--interaction_type"] == "original"
             else "dcn", "--interaction_type", "--arch-interaction-op")
    if g.get("--adagrad"):
        _set(args, "optimizer", "adagrad", "--adagrad", "--optimizer")
    if g.get("--shuffle_training_set"):
        _set(args, "data_randomize", "total", "--shuffle_training_set", "--data-randomize")
    if g.get("--evaluate_on_training_end"):
        if getattr(args, "no_eval", False):
            raise ConfigError("--evaluate_on_training_end and --no-eval disagree: give one")
        args.eval = True
    if "--epochs" in g or "--limit_train_batches" in g:
        if getattr(args, "steps", None) is not None:
            raise ConfigError("give --steps or torchrec's --epochs/--limit_train_batches, not "
                              "both")
        run.epochs = g.get("--epochs", 1)
        run.batches_per_epoch = g.get("--limit_train_batches")
    for flag in g:
        if _BY_FLAG[flag].kind == "accepted" or _BY_FLAG[flag].ok_values:
            notes.append(f"{flag}: accepted; {_BY_FLAG[flag].help}")
    run.notes = tuple(notes)
    return run


def _num_tables(args) -> int:
    """The table count of the config the command line names (for --num_embeddings)."""
    from dlrm_tvm.config_io import load_config

    return load_config(getattr(args, "config", None)).model.num_tables


def doc_table() -> str:
    """docs/torchrec-flags.md's table (a test keeps the file equal to it)."""
    return reference_doc_table(TORCHREC_FLAGS)
