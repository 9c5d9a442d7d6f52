"""facebookresearch/dlrm's ``dlrm_s_pytorch.py`` flags on ``dlrm-tvm train``.

A command line pasted from the reference runs: its model flags (``--arch-*``,
``--mini-batch-size``, ``--learning-rate``, ...) are ours already (config_io.CONFIG_FLAGS); the
rest are declared here, one row each in ``REFERENCE_FLAGS``, and ``translate`` turns their
values into ours before the run starts. A row is one of:

* **mapped**: the same meaning through one of our flags or options (``--numpy-rand-seed`` is
  ``--seed``, ``--test-freq`` is ``--eval-every``, ``--raw-data-file`` is ``--data-path``...);
* **accepted**: nothing to do here, and the help says why (``--memory-map``: training always
  memory-maps; ``--test-num-workers``: no loader workers);
* **refused**: a feature we do not have, refused with the reason and what to use instead (exit
  status 2) -- never silently ignored. Some are refused only for values other than the
  reference's default (``--loss-function`` accepts ``bce``).

``docs/reference-flags.md`` lists every flag with its treatment.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlrm_tvm.config import ConfigError
from dlrm_tvm.config_io import nonneg_int, positive_int


def _ref_bool(s: str) -> bool:
    """The reference declares these ``type=bool``, so any non-empty string (even "False")
    reads as True there; here "False"/"0"/"no" read as False, the evident intent."""
    return s.strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class RefFlag:
    flag: str
    kind: str  # "mapped", "accepted" or "refused"
    help: str
    type: Any = None
    choices: tuple | None = None
    switch: bool = False  # store_true in the reference
    nargs: str | None = None
    ok_values: tuple = ()  # refused: these values are accepted (the reference's default, ours)
    origin = "reference"  # whose flag, in its help line

    @property
    def dest(self) -> str:
        return "ref_" + self.flag.lstrip("-").replace("-", "_")

    def add_to(self, g, hidden: bool = False) -> None:
        """Add the flag to ``g``; ``hidden``: out of --help (``--help-aliases`` lists it)."""
        kw: dict[str, Any] = {"help": argparse.SUPPRESS if hidden else
                              f"[{self.origin}, {self.kind}] {self.help}", "dest": self.dest,
                              "default": None}
        if self.switch:
            kw["action"] = "store_true"
        else:
            if self.type is not None:
                kw["type"] = self.type
            if self.choices is not None:
                kw["choices"] = self.choices
            if self.nargs is not None:
                kw["nargs"] = self.nargs
        g.add_argument(self.flag, **kw)


R = RefFlag
REFERENCE_FLAGS: tuple[RefFlag, ...] = (
    # ---- mapped: the same meaning through ours
    R("--numpy-rand-seed", "mapped", "the seed of initialisation and data (= --seed)",
      nonneg_int),
    R("--print-freq", "mapped", "print the mean loss of the last N steps every N steps (and "
      "write a metrics.jsonl line per N steps)", positive_int),
    R("--print-time", "mapped", "add ms/step to the --print-freq lines", switch=True),
    R("--print-wall-time", "accepted", "metrics.jsonl lines always carry the wall-clock time "
      "(\"wall\")", switch=True),
    R("--print-precision", "accepted", "digits of the printed loss (ours prints 5)",
      positive_int),
    R("--test-freq", "mapped", "evaluate on the held-out split every N steps (= --eval-every; "
      "<= 0: only at the end)", int),
    R("--test-mini-batch-size", "accepted", "evaluation predicts in batches of "
      "--mini-batch-size (the compiled batch); a row's prediction does not depend on its "
      "batch, so the results are the same", int),
    R("--test-num-workers", "accepted", "no loader workers: batches come from memory-mapped "
      "files in the training process, far faster than the step uses them", int),
    R("--num-workers", "accepted", "as --test-num-workers", int),
    R("--nepochs", "mapped", "passes over the training rows: --steps becomes NEPOCHS x "
      "(--num-batches or the training rows // --mini-batch-size)", positive_int),
    R("--num-batches", "mapped", "batches per epoch (reference: 0 = the whole data)",
      nonneg_int),
    R("--data-size", "mapped", "--data-generation random: samples per epoch (steps per epoch "
      "= ceil(DATA_SIZE / --mini-batch-size) unless --num-batches)", positive_int),
    R("--data-generation", "mapped", "random: our synthetic generator with the reference's "
      "coin-flip labels (unless --labels); dataset: Criteo files (--data-set, "
      "--raw-data-file)", choices=("random", "dataset", "synthetic")),
    R("--data-set", "mapped", "kaggle (= --data criteo-kaggle) or terabyte (= --data "
      "criteo-terabyte) with --data-generation dataset", choices=("kaggle", "terabyte")),
    R("--raw-data-file", "mapped", "the raw Criteo file (kaggle: train.txt; terabyte: the "
      "prefix of day_0, day_1, ... as in the reference) (= --data-path)"),
    R("--memory-map", "accepted", "preprocessed data is always memory-mapped", switch=True),
    R("--mlperf-bin-loader", "mapped", "the preprocessed data is always the MLPerf binary "
      "layout; as the reference's binary loader, rows are read in file order (--data-randomize "
      "none) unless --data-randomize or --mlperf-bin-shuffle says otherwise", switch=True),
    R("--dataset-multiprocessing", "accepted", "use `dlrm-tvm preprocess --workers N` to "
      "preprocess in parallel", switch=True),
    R("--mlperf-auc-threshold", "mapped", "stop when the held-out AUC reaches it "
      "(= --target-auc; 0: no target)", float),
    R("--save-model", "mapped", "at the end also write the model as the reference's "
      "torch.save file (needs torch; our own checkpoint is RUNDIR/checkpoints)"),
    R("--load-model", "mapped", "start from the weights of a reference torch.save file (or "
      "ours) at step 0 with fresh optimizer state (= --init-from)"),
    R("--loss-function", "refused", "bce (ours, on the logits) is the only loss",
      choices=("mse", "bce", "wbce"), ok_values=("bce",)),
    R("--round-targets", "accepted", "targets are always 0/1 clicks (the reference's True); "
      "synthetic labels are drawn as 0/1", _ref_bool),
    R("--activation-function", "refused", "the MLPs use relu only", ok_values=("relu",)),
    R("--sync-dense-params", "accepted", "MLP gradients are always allreduced every step",
      _ref_bool),
    R("--rand-data-dist", "refused", "synthetic indices are uniform (reference) or zipf "
      "(--index-distribution)", ok_values=("uniform",)),
    # ---- refused: not built; the reason and what to use
    R("--arch-project-size", "refused", "the projection interaction is not built",
      ok_values=("0",)),
    R("--weighted-pooling", "refused", "weighted pooling is not built (bags are sums)"),
    R("--md-flag", "refused", "mixed-dimension embeddings are not built", switch=True),
    R("--qr-flag", "refused", "quotient-remainder embeddings are not built", switch=True),
    R("--loss-weights", "refused", "bce only: no loss weights"),
    R("--loss-threshold", "refused", "bce on the logits needs no threshold",
      ok_values=("0", "0.0")),
    R("--data-trace-file", "refused", "trace-driven synthetic data is not built"),
    R("--data-sub-sample-rate", "refused", "negative down-sampling is not built",
      ok_values=("0", "0.0")),
    R("--use-gpu", "refused", "dlrm-tvm trains on x86 CPUs", switch=True),
    R("--use-ipex", "refused", "dlrm-tvm compiles its own kernels", switch=True),
    R("--inference-only", "refused", "use `dlrm-tvm eval --checkpoint CKPT` (it takes a "
      "reference torch.save file too)", switch=True),
    R("--save-onnx", "refused", "use `dlrm-tvm export-onnx --checkpoint RUNDIR --out F` "
      "after the run", switch=True),
    R("--enable-profiling", "refused", "use `dlrm-tvm bench` (per-kernel times) or the "
      "phases in summary.json", switch=True),
    R("--plot-compute-graph", "refused", "use `dlrm-tvm kernels list` or `compile "
      "--dump-ir`", switch=True),
    R("--tensor-board-filename", "refused", "use `dlrm-tvm plot RUNDIR` (metrics.jsonl)"),
    R("--debug-mode", "refused", "use -v (debug logging)", switch=True),
    R("--dist-backend", "refused", "launch N ranks with mpiexec (see docs/cluster.md); the "
      "backend is MPI"),
    R("--local_rank", "refused", "launch N ranks with mpiexec (see docs/cluster.md)"),
    R("--mlperf-acc-threshold", "refused", "use --mlperf-auc-threshold / --target-auc",
      ok_values=("0", "0.0")),
    R("--mlperf-grad-accum-iter", "refused", "gradient accumulation is not built",
      ok_values=("1",)),
    R("--quantize-mlp-with-bit", "refused", "quantised inference is not built",
      ok_values=("32",)),
    R("--quantize-emb-with-bit", "refused", "quantised inference is not built",
      ok_values=("32",)),
)
del R
_BY_FLAG = {f.flag: f for f in REFERENCE_FLAGS}


def add_reference_args(p: argparse.ArgumentParser, hidden: bool = False) -> None:
    """The reference's flags on ``p``; ``hidden``: parsed but out of --help."""
    g = p if hidden else p.add_argument_group(
        "facebookresearch/dlrm compatibility (dlrm_s_pytorch.py's flags; docs/reference-flags.md)")
    for f in REFERENCE_FLAGS:
        f.add_to(g, hidden)


def given(args: argparse.Namespace) -> dict[str, Any]:
    """The reference flags given on this command line: {flag: value}."""
    return {f.flag: getattr(args, f.dest) for f in REFERENCE_FLAGS
            if getattr(args, f.dest, None) not in (None, False)}


def _set(args, name: str, value, flag: str, ours: str, unset: tuple = (None,)) -> None:
    """args.name = value, unless our own flag already says otherwise (``unset``: the values
    our flag has when not given)."""
    cur = getattr(args, name, None)
    if cur not in unset and cur != value:
        raise ConfigError(f"{flag} and {ours} disagree ({value!r} against {cur!r}): give one")
    setattr(args, name, value)


def terabyte_days(prefix: str) -> list[str]:
    """The reference's terabyte ``--raw-data-file ./input/day``: the files day_0, day_1, ... that
    exist, in order (a file given whole is itself)."""
    if Path(prefix).is_file():
        return [prefix]
    days = []
    while Path(f"{prefix}_{len(days)}").is_file():
        days.append(f"{prefix}_{len(days)}")
    if not days:
        raise ConfigError(f"--raw-data-file {prefix}: neither a file nor the prefix of "
                          f"{prefix}_0, {prefix}_1, ... (the Terabyte days)")
    return days


@dataclass
class ReferenceRun:
    """What the reference flags ask of the run beyond our flags (train.RunOptions reads it)."""

    print_every: int = 0
    print_time: bool = False
    epochs: int | None = None
    batches_per_epoch: int | None = None
    save_model: str | None = None
    data_size: int | None = None
    notes: tuple[str, ...] = ()


def translate(args: argparse.Namespace) -> ReferenceRun:
    """Apply the reference flags of ``args`` to our own (in place); refuse what we do not
    support (ConfigError: exit status 2, naming the flag and why). Returns the rest."""
    g = given(args)
    run = ReferenceRun()
    notes: list[str] = []
    refuse_unsupported(g, _BY_FLAG)
    if "--numpy-rand-seed" in g:
        _set(args, "seed", g["--numpy-rand-seed"], "--numpy-rand-seed", "--seed")
    if "--print-freq" in g:
        run.print_every = g["--print-freq"]
    run.print_time = bool(g.get("--print-time"))
    tf = g.get("--test-freq")
    if tf is not None and tf > 0:
        _set(args, "eval_every", tf, "--test-freq", "--eval-every", unset=(None, 0))
    auc = g.get("--mlperf-auc-threshold")
    if auc:
        if not 0 < auc <= 1:
            raise ConfigError(f"--mlperf-auc-threshold must be in (0, 1], got {auc}")
        _set(args, "target_auc", auc, "--mlperf-auc-threshold", "--target-auc")
    if "--load-model" in g:
        _set(args, "init_from", g["--load-model"], "--load-model", "--init-from")
    if "--save-model" in g:
        run.save_model = g["--save-model"]
        import importlib.util

        if importlib.util.find_spec("torch") is None:
            raise ConfigError("--save-model writes the reference's torch.save file and needs "
                              "torch (pip install torch); our own checkpoint of the run is "
                              "RUNDIR/checkpoints without it")
    gen = g.get("--data-generation")
    if gen == "synthetic":
        raise ConfigError("--data-generation synthetic is the reference's trace-driven "
                          "generator, not built: use random (our synthetic data) or dataset")
    if gen == "dataset" or ("--data-set" in g and gen is None) or "--raw-data-file" in g:
        if gen == "random":
            raise ConfigError("--data-generation random takes no --raw-data-file")
        ds = g.get("--data-set", "kaggle")
        _set(args, "data", f"criteo-{ds}", "--data-set", "--data")
        raw = g.get("--raw-data-file")
        if raw is None and getattr(args, "data_path", None) is None:
            raise ConfigError("--data-generation dataset needs --raw-data-file (the raw "
                              "Criteo train.txt, or the Terabyte day prefix)")
        if raw is not None:
            path = ",".join(terabyte_days(raw)) if ds == "terabyte" else raw
            _set(args, "data_path", path, "--raw-data-file", "--data-path")
    elif getattr(args, "processed_data_file", None) and gen == "random":
        raise ConfigError("--processed-data-file goes with Criteo data, not --data-generation "
                          "random")
    if gen == "random":
        _set(args, "data", "synthetic", "--data-generation random", "--data")
        if getattr(args, "labels", None) is None:
            args.labels = "random"  # the reference's random generator: coin-flip labels
            notes.append("--data-generation random: the reference's coin-flip labels (nothing "
                         "to learn); --labels teacher gives a learnable task")
    if g.get("--mlperf-bin-loader") and getattr(args, "data_randomize", None) is None:
        args.data_randomize = "none"  # the reference's binary loader reads rows in order
    one_epoch = gen == "dataset" and getattr(args, "steps", None) is None
    if "--nepochs" in g or "--num-batches" in g or "--data-size" in g or one_epoch:
        # the reference trains --nepochs (default 1) epochs: a pasted Criteo command line
        # without --steps runs one epoch, as it would there
        if getattr(args, "steps", None) is not None:
            raise ConfigError("give --steps or the reference's --nepochs/--num-batches/"
                              "--data-size, not both")
        run.epochs = g.get("--nepochs", 1)
        run.batches_per_epoch = g.get("--num-batches") or None
        run.data_size = g.get("--data-size")
    for flag in ("--test-mini-batch-size", "--test-num-workers", "--num-workers",
                 "--memory-map", "--round-targets", "--print-wall-time",
                 "--print-precision", "--dataset-multiprocessing", "--sync-dense-params"):
        if flag in g:
            notes.append(f"{flag}: accepted; {_BY_FLAG[flag].help}")
    run.notes = tuple(notes)
    return run


def refuse_unsupported(given_flags: dict[str, Any], by_flag: dict[str, RefFlag]) -> None:
    """ConfigError (exit status 2) for the first refused flag given, with its reason (a
    refused flag given one of its ``ok_values`` passes)."""
    for flag, v in given_flags.items():
        f = by_flag[flag]
        if f.kind == "refused" and not (f.ok_values and str(v) in f.ok_values):
            raise ConfigError(f"{flag}{'' if f.switch else ' ' + str(v)}: not supported by "
                              f"dlrm-tvm: {f.help}")


def doc_table(flags: tuple[RefFlag, ...] = REFERENCE_FLAGS) -> str:
    """The markdown table of ``flags`` (docs/reference-flags.md's by default; tests keep each
    file equal to its table)."""
    rows = ["| flag | treatment | meaning here |", "|---|---|---|"]
    for f in flags:
        ok = f" (accepted: {', '.join(f.ok_values)})" if f.ok_values else ""
        rows.append(f"| `{f.flag}` | {f.kind}{ok} | {f.help.replace('|', '/')} |")
    return "\n".join(rows) + "\n"

