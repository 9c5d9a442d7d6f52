"""A Config from outside, and back: preset names and TOML files (``load_config``, ``to_toml``),
and the command line's flags over a config.

The flags are one table, ``CONFIG_FLAGS``: each row names the flag, its argparse type (a domain
check: ``positive_int`` etc., below) or choices, the config field it sets (``section.field``),
its help and the transform from the flag's value to the field's. The ``dlrm-tvm`` parser adds an
argument per row (``ConfigFlag.add_to``: cli_parser.py) and ``apply_overrides`` applies values
by the same rows, so each flag is named once. Rows with ``cli=False`` are ``apply_overrides``
keywords with no argument of their own (``--steps``/``--seed`` are train's own flags).

Every public name here is also importable from dlrm_tvm.config, its former home.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as the tomli package
    import tomli as tomllib

from dlrm_tvm.config import (
    DATA_KINDS,
    INDEX_DISTRIBUTIONS,
    INTERACTIONS,
    LABELS,
    OPTIMIZERS,
    PRECISIONS,
    PRESETS,
    SHUFFLES,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TrainConfig,
    UNCAPPED_ROWS,
    _describe,
    _positive,
)

# ---------------------------------------------------------------- preset names and TOML files


SMALL_FILE_LIMIT = 16 << 20  # configs, tuning records, artifact.json: far below this


def read_small_file(path: str | os.PathLike, what: str, limit: int = SMALL_FILE_LIMIT,
                    error: type[Exception] = ConfigError) -> bytes:
    """The bytes of a small regular file (a config, a tuning record, artifact.json); refused
    with ``error`` naming ``what`` and the path where it is not a regular file (a FIFO or a
    device such as /dev/zero would hang or fill memory) or larger than ``limit``."""
    import stat

    try:
        st = os.stat(path)
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is not a regular file (a FIFO, device or socket is never "
                    f"read)")
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise error(f"{what} {path}: {e.strerror}") from None
    if len(data) > limit:
        raise error(f"{what} {path} is over {limit >> 20} MiB: not a {what}")
    return data


def load_config(spec: str | os.PathLike | None) -> Config:
    """A preset name, a TOML file (optionally naming a ``preset`` to start from), or a JSON
    config as a run writes it (``RUNDIR/config.json``), or a run directory holding one."""
    if spec is None:
        return PRESETS["tiny"]
    s = str(spec)
    if s in PRESETS:
        return PRESETS[s]
    path = Path(s)
    if not path.exists():
        raise ConfigError(f"{s!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is a directory without config.json: give a preset, a "
                              f"TOML file, or a run directory's config.json")
        path = path / "config.json"
    if path.suffix == ".json":
        import json

        try:
            d = json.loads(read_small_file(path, "config").decode())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise ConfigError(f"{path}: not a readable JSON config ({e})") from e
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: a JSON config must be an object")
    else:
        try:
            d = tomllib.loads(read_small_file(path, "config").decode())
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a readable TOML config ({e})") from e
    # a file that gives the tables' rows keeps them on Criteo data (not the data's sizes)
    model, data = d.get("model"), d.get("data")
    own_rows = (isinstance(model, dict) and "table_rows" in model
                and not (isinstance(data, dict) and "table_sizes" in data))
    base = d.pop("preset", None)
    if base is not None:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: preset must be a string, got {_describe(base)}")
        if base not in PRESETS:
            raise ConfigError(f"{path}: unknown preset {base!r}")
        merged = PRESETS[base].to_dict()
        for section, values in d.items():
            if isinstance(values, dict) and isinstance(merged.get(section), dict):
                merged[section].update(values)
            else:
                merged[section] = values
        merged.setdefault("name", base)
        d = merged
    d.setdefault("name", path.stem)
    if own_rows and isinstance(d.get("data", {}), dict):
        d["data"] = {**d.get("data", {}), "table_sizes": "config"}
    try:
        return Config.from_dict(d)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def to_toml(cfg: Config) -> str:
    """``cfg`` as a TOML file that ``load_config`` reads back to an equal Config."""

    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, (tuple, list)):
            return "[" + ", ".join(val(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    d = cfg.to_dict()
    lines = [f"name = {val(d['name'])}"]
    for section in ("model", "train", "data"):
        lines.append(f"\n[{section}]")
        lines += [f"{k} = {val(v)}" for k, v in d[section].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- argparse types for numeric flags
# Each parses one flag's value and refuses one outside its domain with ArgumentTypeError, which
# argparse reports as "argument --flag: ..." with exit status 2.


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(s: str) -> int:
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {s!r}") from None
        if v < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {s!r}")
        return v

    parse.__name__ = f"int_at_least_{low}"
    return parse


positive_int = _int_at_least(1)
positive_int.__name__ = "positive_int"
positive_int.__doc__ = "An argparse type: an integer >= 1."
nonneg_int = _int_at_least(0)
nonneg_int.__name__ = "nonneg_int"
nonneg_int.__doc__ = "An argparse type: an integer >= 0."


def _float_where(ok: Callable[[float], bool], domain: str, s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {s!r}") from None
    if not (math.isfinite(v) and ok(v)):
        raise argparse.ArgumentTypeError(f"must be {domain}, got {s!r}")
    return v


def positive_ints(s: str) -> tuple[int, ...]:
    """An argparse type: comma-separated integers >= 1 (``3,2,1``; torchrec's
    --multi_hot_sizes)."""
    try:
        v = tuple(int(x) for x in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers like 3,2,1, got {s!r}") from None
    if any(x < 1 for x in v):
        raise argparse.ArgumentTypeError(f"every value must be an integer >= 1, got {s!r}")
    return v


def finite_float(s: str) -> float:
    """An argparse type: a finite number (no nan, inf)."""
    return _float_where(lambda v: True, "a finite number", s)


def positive_float(s: str) -> float:
    """An argparse type: a finite number > 0."""
    return _float_where(lambda v: v > 0, "a finite number > 0", s)


def nonneg_float(s: str) -> float:
    """An argparse type: a finite number >= 0."""
    return _float_where(lambda v: v >= 0, "a finite number >= 0", s)


def auc_fraction(s: str) -> float:
    """An argparse type: an AUC to reach, a number with 0 < x <= 1."""
    return _float_where(lambda v: 0 < v <= 1, "a number with 0 < x <= 1", s)


# ---------------------------------------------------------------- the flags over a config
# Transforms: (the flag's value, the flag's name for messages) -> the field's value.


def _as_is(v: Any, flag: str) -> Any:
    return v


def _int(v: Any, flag: str) -> int:
    return int(v)


def _float(v: Any, flag: str) -> float:
    return float(v)


def _bool(v: Any, flag: str) -> bool:
    return bool(v)


def _str(v: Any, flag: str) -> str:
    return str(v)


def _dash_ints(s: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in s.split("-"))
    except ValueError as e:
        raise ConfigError(
            f"{flag} expects dash-separated integers like 13-512-256, got {s!r}"
        ) from e


def _comma_ints(v: Any, flag: str) -> tuple[int, ...]:
    """A tuple of ints from "3,2,1" (the command line) or a sequence (apply_overrides)."""
    if isinstance(v, str):
        try:
            return positive_ints(v)
        except argparse.ArgumentTypeError as e:
            raise ConfigError(f"{flag}: {e}") from e
    return tuple(int(x) for x in v)


def _processed_dir(v: Any, flag: str) -> str:
    s = str(v)
    return s[:-4] if s.endswith(".npz") else s


def _cap_tables(sections: dict[str, dict[str, Any]], value: Any) -> None:
    """--max-ind-range R: every table capped at R rows, and raw categories folded modulo R
    (the reference's flag does both)."""
    r = int(value)
    _positive("--max-ind-range", r)
    rows = tuple(sections["model"]["table_rows"])
    full = UNCAPPED_ROWS.get(rows, rows)  # a preset's capped tables: re-cap the full model's
    sections["model"]["table_rows"] = tuple(min(x, r) for x in full)
    sections["data"]["max_ind_range"] = r


def _multihot_dir(sections: dict[str, dict[str, Any]], value: Any) -> None:
    """torchrec's --synthetic_multi_hot_criteo_path DIR: --data criteo-multihot --data-path DIR."""
    sections["data"]["kind"] = "criteo-multihot"
    sections["data"]["path"] = str(value)


def _given_table_rows(sections: dict[str, dict[str, Any]], value: Any) -> None:
    """--arch-embedding-size: the tables' rows as given, kept on Criteo data too (instead of
    the sizes of the data's meta.json: data.table_sizes = "config")."""
    sections["model"]["table_rows"] = _dash_ints(value, "--arch-embedding-size")
    sections["data"]["table_sizes"] = "config"


@dataclass(frozen=True)
class ConfigFlag:
    """One flag over one config field (``field``: "section.name")."""

    flag: str
    field: str
    help: str | None = None
    type: Callable[[str], Any] | None = None  # argparse's: parses and checks the domain
    choices: tuple[Any, ...] | None = None
    transform: Callable[[Any, str], Any] = _as_is  # the flag's value -> the field's
    switch: bool = False  # store_true, None (unset) when not given
    cli: bool = True  # False: an apply_overrides keyword only, no argparse argument
    apply: Callable[[dict[str, dict[str, Any]], Any], None] | None = None  # sets several fields
    aliases: tuple[str, ...] = ()  # other spellings of the flag on the command line

    @property
    def dest(self) -> str:
        """The argparse dest and the apply_overrides keyword: ``--max-ind-range`` ->
        ``max_ind_range``."""
        return self.flag.lstrip("-").replace("-", "_")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        kw: dict[str, Any] = {"help": self.help}
        if not self.switch and self.choices is None and self.flag in _METAVARS:
            kw["metavar"] = _METAVARS[self.flag]
        if self.switch:
            kw.update(action="store_true", default=None)
        if self.type is not None:
            kw["type"] = self.type
        if self.choices is not None:
            kw["choices"] = self.choices
        parser.add_argument(self.flag, *self.aliases, dest=self.dest, **kw)

    def set(self, sections: dict[str, dict[str, Any]], value: Any) -> None:
        """Write ``value`` (not None) into ``sections`` ({"model": {...}, "train": ...})."""
        if self.apply is not None:
            self.apply(sections, value)
            return
        section, name = self.field.split(".")
        sections[section][name] = self.transform(value, self.flag)


# short names for --help (argparse's default repeats the flag in capitals)
_METAVARS = {"--arch-sparse-feature-size": "D", "--arch-embedding-size": "ROWS",
             "--arch-mlp-bot": "SIZES", "--arch-mlp-top": "SIZES", "--dcn-num-layers": "N",
             "--dcn-low-rank-dim": "R", "--max-ind-range": "N", "--mini-batch-size": "B",
             "--learning-rate": "LR", "--lr-num-warmup-steps": "N",
             "--lr-decay-start-step": "STEP", "--lr-num-decay-steps": "N",
             "--num-indices-per-lookup": "N", "--multi-hot-sizes": "SIZES", "--zipf-alpha": "A",
             "--data-path": "PATH", "--synthetic-multi-hot-criteo-path": "DIR",
             "--eval-data-path": "PATH", "--processed-data-file": "DIR"}

F = ConfigFlag
# In this order: argparse's help lists them so, and apply_overrides applies them so (the tables'
# sizes before --max-ind-range caps them; data_max_ind_range after --max-ind-range).
CONFIG_FLAGS: tuple[ConfigFlag, ...] = (
    F("--arch-sparse-feature-size", "model.embedding_dim", "embedding dim D", positive_int,
      transform=_int),
    F("--arch-embedding-size", "model.table_rows",
      "rows per table, dash-separated: 1000-1000-... (on Criteo data: instead of the sizes "
      "the data's preprocessing found)", apply=_given_table_rows),
    F("--arch-mlp-bot", "model.mlp_bot", "bottom MLP incl. dense input width: 13-512-256-64",
      transform=_dash_ints),
    F("--arch-mlp-top", "model.mlp_top", "top MLP without its input width: 512-256-1",
      transform=_dash_ints),
    F("--arch-interaction-op", "model.interaction", choices=INTERACTIONS),
    F("--arch-interaction-itself", "model.interaction_itself",
      "include self dot products in the dot interaction", switch=True, transform=_bool),
    F("--dcn-num-layers", "model.dcn_num_layers",
      "dcn interaction: the low-rank cross layers (torchrec's --dcn_num_layers; default 3)",
      positive_int, transform=_int),
    F("--dcn-low-rank-dim", "model.dcn_low_rank_dim",
      "dcn interaction: each cross layer's rank (torchrec's --dcn_low_rank_dim; default 512)",
      positive_int, transform=_int),
    F("--max-ind-range", "data.max_ind_range", "cap every table at this many rows",
      positive_int, apply=_cap_tables),
    F("--mini-batch-size", "train.batch_size", "batch size", positive_int, transform=_int),
    F("--learning-rate", "train.learning_rate", "base learning rate (> 0)", positive_float,
      transform=_float),
    F("--lr-num-warmup-steps", "train.lr_num_warmup_steps", "linear LR warmup (reference)",
      nonneg_int, transform=_int),
    F("--lr-decay-start-step", "train.lr_decay_start_step", "polynomial decay starts here",
      nonneg_int, transform=_int),
    F("--lr-num-decay-steps", "train.lr_num_decay_steps", "decay length (0: no decay)",
      nonneg_int, transform=_int),
    F("--num-indices-per-lookup", "data.num_indices_per_lookup",
      "lookups per bag (max if varied)", positive_int, transform=_int),
    F("--num-indices-per-lookup-fixed", "data.num_indices_per_lookup_fixed",
      "1: every bag has exactly that many lookups; 0: sizes vary", int, (0, 1),
      transform=_bool),
    F("--multi-hot-sizes", "data.multi_hot_sizes",
      "multi-hot bags: table t's bags have exactly the t-th size (3,2,1,...; one for all "
      "tables; replaces --num-indices-per-lookup)", positive_ints, transform=_comma_ints),
    F("--precision", "train.precision",
      "bf16: bf16 GEMMs with Split-SGD-BF16 weights and tables (default fp32)",
      choices=PRECISIONS),
    F("--labels", "data.labels",
      "synthetic labels: random coin flips (reference) or a learnable teacher", choices=LABELS),
    F("--optimizer", "train.optimizer",
      "sgd (default), rwsadagrad (the reference's row-wise Adagrad) or adagrad (exact, as "
      "MLPerf DLRM-DCNv2)", choices=OPTIMIZERS),
    F("--index-distribution", "data.index_distribution",
      "synthetic indices: uniform (reference) or Zipf power law over rows",
      choices=INDEX_DISTRIBUTIONS),
    F("--zipf-alpha", "data.zipf_alpha", "Zipf exponent (default 1.05)", positive_float,
      transform=_float),
    F("--data", "data.kind",
      "synthetic (default); criteo-kaggle/-terabyte: raw files or a preprocess directory; "
      "mlperf-bin: MLPerf .bin files; criteo-multihot: MLPerf DLRM-DCNv2's day files "
      "(docs/data.md)", choices=DATA_KINDS),
    F("--data-path", "data.path", "the data: file(s), comma-separated, or a directory",
      transform=_str),
    F("--synthetic-multi-hot-criteo-path", "data.path",
      "= --data criteo-multihot --data-path DIR (torchrec's spelling too)",
      apply=_multihot_dir, aliases=("--synthetic_multi_hot_criteo_path",)),
    F("--eval-data-path", "data.eval_path",
      "mlperf-bin: held-out file(s) (criteo-*: the preprocessed test split)", transform=_str),
    F("--processed-data-file", "data.processed_path",
      "raw criteo-* files: keep their preprocessed form here, reused while the inputs are "
      "unchanged (default RUNDIR/data)", transform=_processed_dir),
    F("--data-randomize", "data.shuffle",
      "Criteo training rows: total (across days, anew each epoch; default), day, none",
      choices=SHUFFLES),
    F("--mlperf-bin-shuffle", "data.shuffle_batches",
      "also shuffle the order of each epoch's whole batches (the reference's flag)",
      switch=True, transform=_bool),
    F("--skip-bad-lines", "data.skip_bad_lines",
      "raw Criteo: skip malformed lines (counted in the summary) instead of stopping at the "
      "first with its file and line", switch=True, transform=_bool),
    # keywords of apply_overrides with no config flag of their own
    F("--steps", "train.steps", transform=_int, cli=False),
    F("--seed", "train.seed", transform=_int, cli=False),
    F("--data-max-ind-range", "data.max_ind_range", transform=_int, cli=False),
)
del F
_BY_DEST = {f.dest: f for f in CONFIG_FLAGS}


def apply_overrides(cfg: Config, **flags: Any) -> Config:
    """``cfg`` with the reference's flags applied, by their dest (``arch_sparse_feature_size``,
    ``mini_batch_size``, ``steps``, ...: ``CONFIG_FLAGS``); None means unset. The new Config is
    validated as any other; an unknown keyword is a TypeError."""
    unknown = sorted(set(flags) - set(_BY_DEST))
    if unknown:
        raise TypeError(f"apply_overrides: unknown flag(s) {unknown}; known: {sorted(_BY_DEST)}")
    sections = {"model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
                "data": dataclasses.asdict(cfg.data)}
    for f in CONFIG_FLAGS:
        if flags.get(f.dest) is not None:
            f.set(sections, flags[f.dest])
    out = Config(name=cfg.name, model=ModelConfig(**sections["model"]),
                 train=TrainConfig(**sections["train"]), data=DataConfig(**sections["data"]))
    _refuse_flags_that_would_not_act(out, {k for k, v in flags.items() if v is not None}, flags)
    return out


def _refuse_flags_that_would_not_act(cfg: Config, given: set[str], flags: dict) -> None:
    """A flag given must act: one the resulting config would ignore is refused, naming the
    conflict (ConfigError, exit status 2)."""
    inter = cfg.model.interaction
    dcn = [f"--{k.replace('_', '-')}" for k in ("dcn_num_layers", "dcn_low_rank_dim")
           if k in given]
    if dcn and inter != "dcn":
        raise ConfigError(f"{' and '.join(dcn)} shape the DCN cross layers, but the "
                          f"interaction is {inter}: add --arch-interaction-op dcn or drop them")
    if flags.get("arch_interaction_itself") and inter != "dot":
        raise ConfigError(f"--arch-interaction-itself adds the self dot products of the dot "
                          f"interaction, but the interaction is {inter}")
    if "synthetic_multi_hot_criteo_path" in given and "data" in given and \
            flags["data"] != "criteo-multihot":
        raise ConfigError(f"--synthetic_multi_hot_criteo_path means --data criteo-multihot, "
                          f"but --data {flags['data']} is given: give one")
    paths = [f"--{k.replace('_', '-')}" for k in ("data_path", "eval_data_path",
                                                   "processed_data_file") if k in given]
    if paths and cfg.data.kind == "synthetic":
        raise ConfigError(f"{', '.join(paths)} names data files, but --data is synthetic (the "
                          f"default): give --data criteo-kaggle, criteo-terabyte, mlperf-bin "
                          f"or criteo-multihot")
