"""The ``dlrm-tvm`` command line: every subcommand's arguments (cli.py runs them).

The config flags shared by the subcommands that take a config come from one table,
dlrm_tvm/config_io.py ``CONFIG_FLAGS``, which also applies their values (``apply_overrides``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

from dlrm_tvm.config import PRECISIONS, PRESETS
from dlrm_tvm.config_io import (
    CONFIG_FLAGS,
    auc_fraction,
    nonneg_int,
    positive_float,
    positive_int,
)
from dlrm_tvm.runtime.sharding import SHARDINGS

EPILOG = """examples:
  dlrm-tvm train --config tiny --steps 100 --out runs/tiny
  dlrm-tvm compile --config small --target cooperlake --out artifacts/small-cpx
  dlrm-tvm train --artifact artifacts/tiny --steps 50 --out runs/t2
  dlrm-tvm bench --config small --precisions fp32,bf16 --json bench.json
  dlrm-tvm kernels list --config small
  dlrm-tvm kernels bench --op gemm --shape 2048,1024,1024 --rule gemm_packed_fp32
  mpiexec -n 2 dlrm-tvm train --config small --steps 50 --out runs/s2
  dlrm-tvm preprocess train.txt --out data/kaggle --max-ind-range 10000000
  dlrm-tvm train --config mlperf --data criteo-kaggle --data-path data/kaggle --eval-every 1000
  dlrm-tvm materialize-multihot --config dcnv2-tiny --multi-hot-sizes 2 --out data/mh
  dlrm-tvm train --config dcnv2-tiny --data criteo-multihot --data-path data/mh --out runs/mh
  dlrm-tvm eval --checkpoint runs/k --data criteo-kaggle --data-path data/kaggle --out runs/e
  dlrm-tvm export-onnx --checkpoint runs/k --out model.onnx --check
  dlrm-tvm plot runs/k
"""



EMULATE_AMX_HELP = (
    "run the AMX tile instructions on a software executor of them (any x86-64 CPU; AMX counts "
    "as present, the permission is not asked; slow, a trap per instruction: small shapes; "
    "docs/amx.md)")


def _add_emulate_amx(p) -> None:
    p.add_argument("--emulate-amx", action="store_true", help=EMULATE_AMX_HELP)


CHECKPOINT_HELP = (
    "the model to read: a run directory (its latest checkpoint) or one of its checkpoints "
    "(RUNDIR/checkpoints/step_N), a facebookresearch/dlrm torch.save file, or a torchrec "
    "DLRM_DCN/DLRM state dict as export-torchrec writes")


# the flags of the data files a run reads: a command that reads none leaves them out
DATA_FILE_FLAGS = ("--data", "--data-path", "--synthetic-multi-hot-criteo-path",
                   "--eval-data-path", "--processed-data-file", "--data-randomize",
                   "--mlperf-bin-shuffle", "--skip-bad-lines", "--labels")


def _add_config_args(p: argparse.ArgumentParser, data_files: bool = True) -> None:
    """--config and one argument per row of config_io.CONFIG_FLAGS (the reference's flags);
    ``data_files`` False: without the flags of data files (``DATA_FILE_FLAGS``)."""
    g = p.add_argument_group("config (a preset or TOML file, then the reference's flags)")
    g.add_argument("--config", default=None,
                   help=f"preset ({', '.join(PRESETS)}), TOML file, or a run's config.json (or "
                   "its run directory) (default: tiny)")
    for flag in CONFIG_FLAGS:
        if flag.cli and (data_files or flag.flag not in DATA_FILE_FLAGS):
            flag.add_to(g)


def version_line() -> str:
    """dlrm-tvm's version with the TVM and Python it runs on (TVM read from its metadata, so
    --version does not import TVM)."""
    import platform
    from importlib import metadata

    from dlrm_tvm import __version__

    try:
        tvm_v = metadata.version("apache-tvm")
    except metadata.PackageNotFoundError:
        tvm_v = "not installed"
    return f"dlrm-tvm {__version__} (apache-tvm {tvm_v}, Python {platform.python_version()})"


_LEAF = "_cli_leaf_parser"  # namespace attribute: the (sub)parser that left arguments over


class _Formatter(argparse.HelpFormatter):
    """Help at up to 100 columns (the project's line length) where the terminal allows."""

    def __init__(self, prog: str, **kw) -> None:
        import shutil

        kw.setdefault("width", min(100, shutil.get_terminal_size((100, 24)).columns - 2))
        kw.setdefault("max_help_position", 26)
        super().__init__(prog, **kw)


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser without prefix matching (``--checkpoint`` is not taken as
    ``--checkpoint-every``) whose errors are one line: an unknown option is named, with the
    subcommand's options that it is close to, instead of the whole usage text."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if extras and not hasattr(ns, _LEAF):  # the innermost subcommand returns first
            setattr(ns, _LEAF, self)
        return ns, extras

    def parse_args(self, args=None, namespace=None):
        ns, extras = self.parse_known_args(args, namespace)
        leaf = vars(ns).pop(_LEAF, self)
        if extras:
            leaf.error(leaf.unknown_message(extras))
        return ns

    def unknown_message(self, extras: list[str]) -> str:
        """'unknown option --checkpoint (did you mean --checkpoint-every?)' for the first
        option in ``extras``; else the stray arguments."""
        import difflib

        opts = [a.split("=", 1)[0] for a in extras if a.startswith("-") and a != "-"]
        if not opts:
            return f"unexpected argument(s): {' '.join(extras)}"
        bad = opts[0]
        known = sorted(self._option_string_actions)
        close = [o for o in known if o.startswith(bad) and len(bad) > 2]
        close = close or difflib.get_close_matches(bad, known, n=3, cutoff=0.75)
        hint = f" (did you mean {' or '.join(close[:4])}?)" if close else ""
        more = f" (and {len(opts) - 1} more)" if len(opts) > 1 else ""
        return f"unknown option {bad}{hint}{more}"

    def error(self, message: str):
        """One line and exit status 2, pointing at --help rather than printing the usage."""
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`\n")


class _HelpAliases(argparse.Action):
    """``train --help-aliases``: the reference's and torchrec's flags, which --help leaves out."""

    def __call__(self, parser, namespace, values, option_string=None):
        from dlrm_tvm.reference_cli import add_reference_args
        from dlrm_tvm.torchrec_cli import add_torchrec_args

        p = argparse.ArgumentParser(
            prog=parser.prog, add_help=False, usage=argparse.SUPPRESS,
            description="Flags of facebookresearch/dlrm's dlrm_s_pytorch.py and torchrec's "
            "dlrm_main.py that `train` takes besides its own: mapped onto ours, accepted "
            "(nothing to do, and why), or refused with the reason (exit status 2). Tables: "
            "docs/reference-flags.md, docs/torchrec-flags.md.")
        add_reference_args(p)
        add_torchrec_args(p)
        p.print_help()
        parser.exit()


def build_parser(commands: Mapping[str, Callable[[argparse.Namespace], int]]
                 ) -> argparse.ArgumentParser:
    """The parser of every subcommand; each sets ``func`` to ``commands[its name]`` ("compile",
    "kernels list", ...)."""
    p = CliParser(
        prog="dlrm-tvm", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Compile DLRM with Apache TVM for an x86 CPU, and train it.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=version_line(),
                   help="print the versions of dlrm-tvm, TVM and Python, and exit")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="compile the training step into a loadable artifact",
                       description="Compile the DLRM training step for a CPU target and write "
                       "DIR/module.so + DIR/artifact.json (config, target, CPU features needed, "
                       "TVM version, schedule rule per kernel). Works for any target on any host.")
    _add_config_args(c)
    c.add_argument("--target", default="host",
                   help="host (this CPU: LLVM's CPU name with exactly the features /proc/cpuinfo "
                   "reports), a named CPU (skylake-avx512, cascadelake, icelake-server, "
                   "cooperlake, sapphirerapids, emeraldrapids, graniterapids, znver3/4/5, "
                   "x86-64-v3), a TVM target string ('llvm -mcpu=icelake-server', "
                   "'llvm -mtriple=x86_64-linux-gnu -mcpu=sapphirerapids -mattr=-amx-tile') or "
                   "a JSON target dict ('{\"kind\": \"llvm\", \"mcpu\": \"znver4\"}'); "
                   "the artifact records every CPU feature the target implies (default: host)")
    c.add_argument("--out", required=True, help="artifact directory")
    c.add_argument("--rule", action="append", help="prefer this schedule rule (repeatable)")
    c.add_argument("--tuning", metavar="FILE",
                   help="a tuning record from `dlrm-tvm kernels tune` (register tiles per GEMM; "
                        "recorded in artifact.json)")
    c.add_argument("--dump-ir", help="write the scheduled IR to this directory")
    _add_emulate_amx(c)
    c.set_defaults(func=commands["compile"])

    t = sub.add_parser("train", help="train on generated or Criteo data (compiling first if "
                       "needed)", usage="%(prog)s [--config C] [options]   (--help-aliases: the "
                       "reference's and torchrec's flags)",
                       description="Train DLRM; writes RUNDIR/metrics.jsonl (one line per logged "
                       "step), RUNDIR/summary.json and RUNDIR/config.json. Without --artifact the "
                       "step is compiled for --target into RUNDIR/artifact.")
    _add_config_args(t)
    t.add_argument("--artifact", help="a directory from `dlrm-tvm compile` (must match config)")
    t.add_argument("--target", default="host", help="target to compile for (default: host)")
    _add_emulate_amx(t)
    t.add_argument("--steps", type=nonneg_int, default=None,
                   help="training steps (default: config's)")
    t.add_argument("--seed", type=nonneg_int, default=None, help="seed for init and data")
    t.add_argument("--out", default="runs/latest", help="run directory (default: runs/latest)")
    t.add_argument("--rule", action="append", help="prefer this schedule rule (repeatable)")
    t.add_argument("--tuning", metavar="FILE",
                   help="a tuning record from `dlrm-tvm kernels tune`, used when compiling")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--save-params", action="store_true",
                   help="write every fp32 parameter to RUNDIR/params.npz at the end")
    e = t.add_argument_group("evaluation and checkpoints")
    e.add_argument("--eval-every", metavar="K", type=nonneg_int, default=0,
                   help="evaluate the held-out split every K steps (loss, accuracy, "
                   "exact AUC; to metrics.jsonl) and at the end")
    e.add_argument("--eval-batches", metavar="N", type=positive_int, default=2,
                   help="synthetic data: batches in the held-out stream (default 2)")
    e.add_argument("--eval", action="store_true",
                   help="evaluate at the end (the default on synthetic data)")
    e.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    e.add_argument("--target-auc", metavar="AUC", type=auc_fraction,
                   help="stop when the held-out AUC reaches this (checked at "
                   "--eval-every; 0 < AUC <= 1)")
    e.add_argument("--checkpoint-every", metavar="K", type=nonneg_int, default=0,
                   help="write the training state to RUNDIR/checkpoints/ every K "
                   "steps and at the end (atomically)")
    e.add_argument("--no-final-checkpoint", action="store_true",
                   help="no checkpoint of the last step (eval and export read it)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (else refused, unless --resume)")
    e.add_argument("--keep-checkpoints", metavar="N", type=positive_int, default=2,
                   help="how many checkpoints to keep (default 2)")
    e.add_argument("--init-from", metavar="CKPT",
                   help="start from a checkpoint's weights (ours, the reference's "
                   "or torchrec's) at step 0, fresh optimizer state")
    e.add_argument("--resume", nargs="?", const="auto",
                   help="continue from a checkpoint (or run) dir; bare: --out's "
                   "latest; bit-exact, at any rank count")
    t.add_argument("--threads", type=positive_int,
                   help="TVM threads (default: the cores, or this rank's share)")
    g = t.add_argument_group("distributed (under mpiexec -n N)")
    g.add_argument("--sharding", default="auto", choices=SHARDINGS,
                   help="auto (default): whole tables, row ranges only over a "
                   "rank's budget; table; row (docs/cluster.md)")
    g.add_argument("--rank-memory-gib", metavar="GIB", type=positive_float,
                   help="table memory one rank may hold (default: 80%% of the node's "
                   "available memory over its ranks)")
    g.add_argument("--comm-timeout", metavar="S", type=positive_float, default=300.0,
                   help="seconds an exchange may wait before the job is aborted (default 300)")
    g.add_argument("--no-progress-thread", action="store_true",
                   help="no background thread advancing MPI")
    g.add_argument("--progress-poll-us", metavar="US", type=positive_float, default=50.0,
                   help="how often the progress thread tests pending exchanges (default 50 us)")
    ml = t.add_argument_group("MLPerf logging (docs/dcn.md)")
    ml.add_argument("--mlperf-logging", nargs="?", const="auto", metavar="PATH",
                    help="write an MLPerf Training log (MLLOG) to PATH (bare: "
                   "RUNDIR/mlperf.log)")
    ml.add_argument("--mlperf-org", metavar="ORG", help="its submission_org (default dlrm-tvm)")
    ml.add_argument("--mlperf-platform", metavar="NAME",
                    help="its submission_platform (default <ranks>x<the CPU's model name>)")
    ml.add_argument("--mlperf-division", choices=("open", "closed"), default="open",
                    help="its submission_division (default open)")
    from dlrm_tvm.reference_cli import add_reference_args

    add_reference_args(t, hidden=True)
    from dlrm_tvm.torchrec_cli import add_torchrec_args

    add_torchrec_args(t, hidden=True)
    t.add_argument("--help-aliases", action=_HelpAliases, nargs=0,
                   help="list the facebookresearch/dlrm and torchrec flags train takes too")
    t.set_defaults(func=commands["train"])

    b = sub.add_parser("bench", help="ms/step vs PyTorch in the same process, per-op breakdown",
                       description="Benchmark the compiled step against a PyTorch DLRM with the "
                       "same weights (eager fp32 and bf16 autocast), run side by side in one "
                       "process; prints medians, ratios, per-kernel times and GFLOP/s vs peak.")
    _add_config_args(b)
    b.add_argument("--target", default="host")
    _add_emulate_amx(b)
    b.add_argument("--steps", type=positive_int, default=20, help="timed steps per contender")
    b.add_argument("--warmup", type=nonneg_int, default=3,
                   help="untimed steps per contender first (default 3)")
    b.add_argument("--precisions", help="ours at these precisions, e.g. fp32,bf16 "
                   "(default: the config's)")
    b.add_argument("--no-torch", action="store_true", help="skip the PyTorch baselines")
    b.add_argument("--tuning", metavar="FILE",
                   help="compile our bf16 step with this record of `dlrm-tvm kernels tune`")
    b.add_argument("--no-torch-compile", action="store_true",
                   help="skip the torch.compile + bf16 autocast contender (its compile, about "
                        "a minute, is timed apart and reported, never in ms/step)")
    b.add_argument("--json", help="also write the table as JSON here")
    g = b.add_argument_group("rank scaling (instead of the PyTorch comparison)")
    g.add_argument("--ranks", help="rank counts to run, e.g. 1,2: each runs `mpiexec -n N "
                   "dlrm-tvm train` (--steps steps) and reports ms/step split into compute, "
                   "exposed and overlapped communication, bytes per exchange, an MPI probe "
                   "and the scaling model for 1 to 64 sockets")
    g.add_argument("--threads-per-rank", type=positive_int,
                   help="threads of each rank (default: its share of this machine's cores)")
    g.add_argument("--sharding", default="auto", choices=SHARDINGS)
    g.add_argument("--plot", help="write the scaling efficiency plot (PNG) here")
    g.add_argument("--net-bandwidth-gbs", type=positive_float, default=12.5,
                   help="the model's assumed network bandwidth per socket (default 12.5 GB/s)")
    g.add_argument("--net-latency-us", type=positive_float, default=2.0,
                   help="the model's assumed network latency (default 2 us)")
    g = b.add_argument_group("data loading (instead of the PyTorch comparison)")
    g.add_argument("--loader", action="store_true",
                   help="Criteo raw parse, preprocess and memory-mapped batch rates (rows/s) "
                   "against the config's training step (rows/s it consumes)")
    g.add_argument("--loader-rows", type=positive_int, default=200_000,
                   help="raw rows to generate for --loader (default 200000)")
    b.set_defaults(func=commands["bench"])

    ev = sub.add_parser("eval", help="evaluate a checkpoint (ours, the reference's or "
                        "torchrec's) on held-out data",
                        description="Load a checkpoint (a dlrm-tvm checkpoint or run directory, "
                        "a facebookresearch/dlrm torch.save file, or a torchrec DLRM_DCN/DLRM "
                        "state dict as export-torchrec writes), compile its model for "
                        "this CPU and evaluate every held-out row: RUNDIR/summary.json with loss, "
                        "accuracy, auc (exact ROC AUC), rows; --save-predictions adds "
                        "RUNDIR/predictions.npy, one probability per row in file order.")
    ev.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    _add_config_args(ev)
    ev.add_argument("--out", required=True, metavar="RUNDIR",
                    help="where summary.json (and predictions) go")
    ev.add_argument("--overwrite", action="store_true",
                    help="replace the summary.json (and predictions) already in --out; "
                    "without it such a directory is refused")
    ev.add_argument("--target", default="host")
    _add_emulate_amx(ev)
    ev.add_argument("--save-predictions", action="store_true")
    ev.add_argument("--eval-batches", type=positive_int, default=2,
                    help="synthetic data: held-out batches (default 2)")
    ev.add_argument("--split", choices=("test", "val", "train", "all"),
                    help="rows of a preprocessed directory to evaluate (default test); raw "
                    "and binary files are evaluated whole, in file order")
    ev.add_argument("--no-labels", action="store_true",
                    help="the raw file(s) have no label column (39 fields a line, as Kaggle's "
                    "test.txt): write RUNDIR/predictions.npy and predictions.txt (one "
                    "probability a line, in file order) and a summary without loss or AUC")
    ev.add_argument("--quiet", action="store_true", help="no progress lines")
    ev.set_defaults(func=commands["eval"])

    pp = sub.add_parser("preprocess", help="raw Criteo files -> MLPerf binary shards, once",
                        description="Parse raw Criteo files (Kaggle train.txt or Terabyte "
                        "day_N: label, 13 counts, 26 hex categories, tab-separated), with the "
                        "reference's preprocessing, into 40-int32-per-row binary files plus "
                        "meta.json; training then memory-maps them (--data criteo-kaggle "
                        "--data-path OUT).")
    pp.add_argument("inputs", nargs="+", help="raw files (terabyte: day_0 day_1 ... in order)")
    pp.add_argument("--out", required=True, help="output directory")
    pp.add_argument("--format", choices=("kaggle", "terabyte"), default="kaggle",
                    help="kaggle: one file split into 7 days (days 0-5 train, day 6 halves "
                    "test/val); terabyte: one day per file (the last day halves test/val)")
    pp.add_argument("--max-ind-range", type=positive_int,
                    help="categories int(hex, 16) %% R (default: the raw 32-bit hash)")
    pp.add_argument("--remap", action="store_true",
                    help="contiguous ids per column in order of first appearance (counts saved)")
    pp.add_argument("--skip-bad-lines", action="store_true",
                    help="skip malformed lines (counted) instead of stopping at the first")
    pp.add_argument("--days", type=positive_int, default=7, help="kaggle: days to split into")
    pp.add_argument("--json", help="also write meta.json's content here")
    pp.add_argument("--workers", type=positive_int, default=None,
                    help="processes parsing byte ranges of the inputs in parallel (default: "
                    "the CPUs this process may use, one per 512 MiB of free memory); the "
                    "output is the same byte for byte with any number")
    pp.add_argument("--quiet", action="store_true", help="no progress lines")
    pp.set_defaults(func=commands["preprocess"])

    mh = sub.add_parser("materialize-multihot",
                        help="write a dataset in MLPerf DLRM-DCNv2's multi-hot format",
                        description="Write a multi-hot dataset in the on-disk format of MLPerf "
                        "DLRM-DCNv2 (mlcommons/training recommendation_v2): per day "
                        "day_{i}_dense.npy, day_{i}_labels.npy and day_{i}_sparse_multi_hot.npz "
                        "(docs/data.md), days 0..D-2 for training and the last day's halves "
                        "val/test; `dlrm-tvm train --data criteo-multihot --data-path OUT` "
                        "reads it memory-mapped. The rows come from the synthetic generator "
                        "of --config (its tables, --multi-hot-sizes, --labels, "
                        "--index-distribution; batches of --mini-batch-size in order), or "
                        "with --from-binary from one-hot Criteo binary rows, each id made a "
                        "bag of the id and size-1 seeded pseudo-random ids of its table.")
    _add_config_args(mh)
    mh.add_argument("--out", required=True, help="output directory")
    mh.add_argument("--days", type=positive_int, default=3,
                    help="days to write, >= 2 (default 3; MLPerf has 24)")
    mh.add_argument("--rows-per-day", type=positive_int, default=None,
                    help="synthetic rows per day (default: 8 batches of --mini-batch-size)")
    mh.add_argument("--seed", type=nonneg_int, default=None,
                    help="seed of the generator and of the multi-hot ids (default: config's)")
    mh.add_argument("--from-binary", metavar="PATH",
                    help="make the rows from one-hot Criteo binary rows instead: a `dlrm-tvm "
                    "preprocess` directory or MLPerf .bin file(s), comma-separated; ids "
                    "folded into the config's table rows, the rows split into --days days")
    mh.add_argument("--overwrite", action="store_true",
                    help="replace a multi-hot dataset already in --out")
    mh.add_argument("--quiet", action="store_true", help="no progress lines")
    mh.set_defaults(func=commands["materialize-multihot"])

    xo = sub.add_parser("export-onnx", help="a checkpoint as an ONNX model (embedding bags "
                        "included)")
    xo.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    _add_config_args(xo)
    xo.add_argument("--out", required=True, help="the .onnx file")
    xo.add_argument("--opset", type=positive_int, default=17,
                    help="ONNX opset version (default 17)")
    xo.add_argument("--check", action="store_true",
                    help="run it under onnxruntime against a NumPy forward pass")
    xo.set_defaults(func=commands["export-onnx"])

    xr = sub.add_parser("export-reference", help="a checkpoint in facebookresearch/dlrm's "
                        "torch.save layout (needs torch)",
                        description="Write the model as dlrm_s_pytorch.py's --save-model file "
                        "(state_dict emb_l.*, bot_l.*, top_l.*). A DCN model (--arch-"
                        "interaction-op dcn) adds its cross layers as crossnet.W_kernels.{l} "
                        "[N, r], crossnet.V_kernels.{l} [r, N], crossnet.bias.{l} (torchrec's "
                        "LowRankCrossNet names and layouts): dlrm_s_pytorch.py has no DCN "
                        "interaction and cannot load those; dlrm-tvm's eval, export-* and "
                        "train --init-from can. For torchrec's DLRM_DCN use export-torchrec.")
    xr.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    _add_config_args(xr)
    xr.add_argument("--out", required=True, help="the .pt file")
    xr.set_defaults(func=commands["export-reference"])

    xt = sub.add_parser("export-torchrec", help="a checkpoint as the state_dict of torchrec's "
                        "DLRM_DCN (or DLRM) (needs torch)",
                        description="Write the model as torch.save of a state_dict that "
                        "torchrec's DLRM_DCN (interaction dcn) or DLRM (dot, without the "
                        "diagonal) loads with load_state_dict(strict=True): tables "
                        "t_cat_0.. with features cat_0.. (mlcommons recommendation_v2's "
                        "names), dense_arch, inter_arch.crossnet, over_arch. The model "
                        "returns the logit (no sigmoid). The cat interaction and dot with "
                        "the diagonal are refused: torchrec has neither. Such a file reads "
                        "back as a --checkpoint / --init-from (the model from its shapes).")
    xt.add_argument("--checkpoint", required=True, metavar="CKPT", help=CHECKPOINT_HELP)
    _add_config_args(xt)
    xt.add_argument("--out", required=True, help="the .pt file")
    xt.set_defaults(func=commands["export-torchrec"])

    pl = sub.add_parser("plot", help="draw a run's loss and AUC curves to a PNG",
                        description="Read RUNDIR/metrics.jsonl and draw the training loss and "
                        "the held-out loss, accuracy and AUC against the step.")
    pl.add_argument("run_dir", metavar="RUNDIR")
    pl.add_argument("--out", help="PNG path (default RUNDIR/curves.png)")
    pl.set_defaults(func=commands["plot"])

    pn = sub.add_parser("plan", help="where every table's rows live on N ranks (no mpiexec)",
                        description="Print the sharding plan a distributed run of this config "
                        "makes on rank 0 (runtime/sharding.py): per rank its tables or row "
                        "ranges, rows, MiB and lookups per step; per table its ranks and rows.")
    _add_config_args(pn)
    pn.add_argument("--ranks", type=positive_int, required=True, help="rank count")
    pn.add_argument("--sharding", default="auto", choices=SHARDINGS,
                    help="auto: whole tables, row ranges only for a table over --rank-memory-"
                    "gib; table: whole tables only; row: every table in N row ranges, range i "
                    "on rank i (default auto)")
    pn.add_argument("--rank-memory-gib", type=positive_float,
                    help="table memory one rank may hold (default: as train takes it, 80%% of "
                    "this node's available memory over the ranks)")
    pn.add_argument("--json", help="also write the plan as JSON here")
    pn.set_defaults(func=commands["plan"])

    mp = sub.add_parser("mpi-probe", help="alltoall/allreduce latency and bandwidth (run under "
                        "mpiexec -n N)")
    mp.add_argument("--json", help="also write the result as JSON here")
    mp.set_defaults(func=commands["mpi-probe"])

    kp = sub.add_parser("kernels", help="which schedule rule runs each kernel; race rules",
                        description="Experiment with schedules: list the rule chosen per kernel, "
                        "or benchmark candidate rules for one op against torch.")
    ksub = kp.add_subparsers(dest="kcmd", required=True)
    kl = ksub.add_parser("list", help="per kernel: the applicable rules and the one chosen",
                         description="Build and schedule the config's training step as "
                         "`dlrm-tvm compile` does (its precision, optimizer, batch size, --rule "
                         "and --tuning) without compiling it; per kernel, the rule chosen (the "
                         "one artifact.json records) and the other rules that would take it.")
    _add_config_args(kl)
    kl.add_argument("--target", default="host")
    kl.add_argument("--rule", action="append", help="prefer this schedule rule (repeatable), as "
                    "compile --rule")
    kl.add_argument("--tuning", metavar="FILE",
                    help="a tuning record from `dlrm-tvm kernels tune`, as compile --tuning")
    kl.add_argument("--json", help="also write the table as JSON here")
    kl.set_defaults(func=commands["kernels list"])
    kb = ksub.add_parser("bench", help="check and time candidate rules for one op and shape",
                         description="Each candidate is checked against the NumPy reference "
                         "(outputs poisoned first) and timed; torch's matmul (fp32, bf16) runs "
                         "in the same process. Exit status 1 if a candidate is wrong.")
    kb.add_argument("--op", default="gemm",
                    choices=("gemm", "embedding_bag_fwd", "embedding_bag_update"),
                    help="operator (default gemm)")
    kb.add_argument("--shape", help="gemm: M,K,N (or --config C: every GEMM of that config); "
                    "embedding ops: ROWS,DIM,LOOKUPS_PER_BAG, several separated by ';' "
                    "(default: 1000000,64,100;1000000,128,1;10000000,64,1)")
    kb.add_argument("--dist", default="uniform,zipf",
                    help="embedding ops: index distributions to run (uniform,zipf)")
    kb.add_argument("--batch", type=positive_int,
                    help="embedding ops: bags per call (default: 204800 lookups' worth, at "
                    "least 2048)")
    _add_config_args(kb, data_files=False)  # it reads no data files
    kb.add_argument("--layout", default="mk", choices=("mk", "km"),
                    help="A as [M, K] (forward, input gradient) or [K, M] (weight gradient)")
    kb.add_argument("--b-layout", default="kn", choices=("kn", "nk"))
    kb.add_argument("--epilogue", default="none",
                    choices=("none", "bias", "bias_relu", "relu_mask"))
    kb.add_argument("--rule", action="append", help="candidate rule (repeatable; default: all)")
    kb.add_argument("--target", default="host")
    _add_emulate_amx(kb)
    kb.add_argument("--reps", type=positive_int, default=10,
                    help="timed repetitions per candidate (default 10)")
    kb.add_argument("--dtype", default="fp32", choices=PRECISIONS,
                    help="gemm: operand dtype (bf16: the AVX-512 BF16 rule where the CPU has "
                    "it); embedding ops: the table (bf16: Split-SGD-BF16 storage)")
    kb.add_argument("--no-torch", action="store_true")
    kb.add_argument("--json", help="also write the table as JSON here")
    kb.add_argument("--tuning", metavar="FILE",
                    help="--config: schedule with this tuning record (dlrm-tvm kernels tune)")
    kb.set_defaults(func=commands["kernels bench"])
    kt = ksub.add_parser("tune", help="search register tiles of a config's bf16 GEMMs on this "
                         "host; write a tuning record",
                         description="For every packed bf16 GEMM of the config's step, time the "
                         "default register tile and loop order, then other tiles that fit the "
                         "registers and the shape, each checked against NumPy, within the "
                         "budget; write the best per kernel as JSON for compile/train --tuning.")
    _add_config_args(kt)
    kt.add_argument("--target", default="host")
    kt.add_argument("--budget-s", type=positive_float, default=300.0,
                    help="seconds for the whole search (default 300)")
    kt.add_argument("--reps", type=positive_int, default=5,
                    help="timed repetitions per tile (default 5)")
    kt.add_argument("--out", default="tuning.json", help="the record (default tuning.json)")
    kt.add_argument("--check", action="store_true",
                    help="then run `kernels bench --config` with the record")
    kt.add_argument("--no-torch", action="store_true", help="--check without torch")
    kt.add_argument("--json", help="--check: also write its table as JSON here")
    kt.set_defaults(func=commands["kernels tune"])
    return p
