"""Every setting of dlrm-tvm: validated dataclasses and presets.

A config is three parts: ``ModelConfig`` (what is computed), ``TrainConfig`` (how it is trained)
and ``DataConfig`` (what it is fed). ``Config`` holds all three. Sizes follow the
facebookresearch/dlrm conventions: ``mlp_bot`` includes the dense input width and must end at the
embedding dim; ``mlp_top`` excludes its input width, which the interaction fixes, and ends at 1.

Reading a preset or TOML file, writing TOML, and the reference's command-line flags (one table
for argparse and ``apply_overrides``, and the argparse types that check each flag's domain) are
in config_io.py; their names are importable from here too (``load_config``, ``apply_overrides``,
``positive_int``, ...), as before.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

# Criteo Terabyte per-column category counts (the MLPerf DLRM benchmark's table sizes).
CRITEO_TERABYTE_ROWS = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)

# MLPerf DLRM-DCNv2's table sizes (mlcommons/training recommendation_v2).
DCNV2_ROWS = (
    40000000, 39060, 17295, 7424, 20265, 3, 7122, 1543, 63, 40000000, 3067956, 405282, 10,
    2209, 11938, 155, 4, 976, 14, 40000000, 40000000, 40000000, 590152, 12973, 108, 36,
)

# MLPerf DLRM-DCNv2's multi-hot bag sizes, one per table of DCNV2_ROWS (214 lookups a sample;
# torchrec's --multi_hot_sizes): DataConfig.multi_hot_sizes
DCNV2_MULTI_HOT_SIZES = (3, 2, 1, 2, 6, 1, 1, 1, 1, 7, 3, 8, 1, 6, 9, 5, 1, 1, 1, 12, 100, 27, 10,
                         3, 1, 1)

# Feature widths are padded to a multiple of this many fp32 lanes where the graph owns the layout
# (the interaction output feeding the top MLP), so every GEMM runs on whole vector tiles.
FEATURE_ALIGN = 16


# The values of the choice fields (and of their flags' choices).
INTERACTIONS = ("dot", "cat", "dcn")
PRECISIONS = ("fp32", "bf16")
# "adagrad": exact (elementwise) Adagrad on every parameter, tables included (docs/adagrad.md)
OPTIMIZERS = ("sgd", "rwsadagrad", "adagrad")
# Adagrad's eps, w -= lr * g / (sqrt(state) + eps): the reference's (and torch's default) for
# rwsadagrad; MLPerf DLRM-DCNv2's for adagrad. Compiled into the kernels (graphs/common.py).
OPTIMIZER_EPS = {"rwsadagrad": 1e-10, "adagrad": 1e-8}
LABELS = ("random", "teacher")
INDEX_DISTRIBUTIONS = ("uniform", "zipf")
DATA_KINDS = ("synthetic", "criteo-kaggle", "criteo-terabyte", "mlperf-bin", "criteo-multihot")
SHUFFLES = ("none", "day", "total")  # the reference's --data-randomize
TABLE_SIZE_SOURCES = ("data", "config")


class ConfigError(ValueError):
    """A configuration that cannot work; the message says why."""


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _is_real(value: Any) -> bool:
    """An int or float, but not a bool (which Python counts as an int)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class ModelConfig:
    """The DLRM architecture.

    table_rows: rows of each embedding table (one table per categorical feature).
    embedding_dim: D, the width of every embedding row and of the bottom MLP's output.
    mlp_bot: dense input width followed by the bottom MLP's layer widths (ends at D).
    mlp_top: the top MLP's layer widths, without its input width (ends at 1).
    interaction: "dot" (pairwise dot products + bottom output), "cat" (concatenation) or
        "dcn" (DLRM-DCNv2: the concatenation x0 = [bottom output, pooled rows], width
        N = (T+1)*D, through ``dcn_num_layers`` low-rank cross layers
        x_{l+1} = x0 * (V_l (U_l x_l) + b_l) + x_l, torchrec's LowRankCrossNet; docs/dcn.md).
    interaction_itself: include the diagonal (self dot products) in "dot".
    dcn_num_layers, dcn_low_rank_dim: the cross layers' count L and rank r (torchrec's
        --dcn_num_layers, --dcn_low_rank_dim); read only when interaction is "dcn".
    """

    table_rows: tuple[int, ...] = (1000,) * 26
    embedding_dim: int = 16
    mlp_bot: tuple[int, ...] = (13, 64, 16)
    mlp_top: tuple[int, ...] = (64, 1)
    interaction: str = "dot"
    interaction_itself: bool = False
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "table_rows", tuple(int(r) for r in self.table_rows))
        object.__setattr__(self, "mlp_bot", tuple(int(w) for w in self.mlp_bot))
        object.__setattr__(self, "mlp_top", tuple(int(w) for w in self.mlp_top))
        if not self.table_rows:
            raise ConfigError("the model needs at least one embedding table")
        for i, r in enumerate(self.table_rows):
            _positive(f"table_rows[{i}]", r)
        _positive("embedding_dim", self.embedding_dim)
        if len(self.mlp_bot) < 2:
            raise ConfigError("mlp_bot needs the dense input width and at least one layer width")
        if len(self.mlp_top) < 1:
            raise ConfigError("mlp_top needs at least one layer width")
        for name, widths in (("mlp_bot", self.mlp_bot), ("mlp_top", self.mlp_top)):
            for i, w in enumerate(widths):
                _positive(f"{name}[{i}]", w)
        if self.interaction not in INTERACTIONS:
            raise ConfigError(f"interaction must be 'dot' or 'cat' or 'dcn' (DCN v2 cross "
                              f"layers), got {self.interaction!r}")
        _positive("dcn_num_layers", self.dcn_num_layers)
        _positive("dcn_low_rank_dim", self.dcn_low_rank_dim)
        if self.mlp_bot[-1] != self.embedding_dim:
            raise ConfigError(
                f"the bottom MLP ends at width {self.mlp_bot[-1]} but the embedding dim is "
                f"{self.embedding_dim}: the interaction needs both to be equal "
                f"(change --arch-mlp-bot's last width or --arch-sparse-feature-size)"
            )
        if self.mlp_top[-1] != 1:
            raise ConfigError(
                f"the top MLP must end at width 1 (one click logit), got {self.mlp_top[-1]}"
            )

    @property
    def num_tables(self) -> int:
        return len(self.table_rows)

    @property
    def num_dense(self) -> int:
        return self.mlp_bot[0]

    @property
    def num_features(self) -> int:
        """F: the bottom MLP output plus one pooled vector per table."""
        return self.num_tables + 1

    @property
    def num_pairs(self) -> int:
        f = self.num_features
        return f * (f + 1) // 2 if self.interaction_itself else f * (f - 1) // 2

    @property
    def interaction_width(self) -> int:
        """The top MLP's true input width (the reference's ``num_int``)."""
        if self.interaction == "dot":
            return self.embedding_dim + self.num_pairs
        return self.num_features * self.embedding_dim

    @property
    def interaction_width_padded(self) -> int:
        w = self.interaction_width
        return -(-w // FEATURE_ALIGN) * FEATURE_ALIGN

    @property
    def bot_layers(self) -> list[tuple[int, int]]:
        """(in, out) of each bottom layer."""
        return list(zip(self.mlp_bot[:-1], self.mlp_bot[1:], strict=True))

    @property
    def top_layers(self) -> list[tuple[int, int]]:
        """(in, out) of each top layer; the first input is the interaction width."""
        widths = (self.interaction_width, *self.mlp_top)
        return list(zip(widths[:-1], widths[1:], strict=True))

    @property
    def table_offsets(self) -> tuple[int, ...]:
        """First row of each table in the concatenated table storage."""
        out, acc = [], 0
        for r in self.table_rows:
            out.append(acc)
            acc += r
        return tuple(out)

    @property
    def total_rows(self) -> int:
        return sum(self.table_rows)

    @property
    def num_cross_layers(self) -> int:
        """L: the DCN cross layers (0 unless the interaction is "dcn")."""
        return self.dcn_num_layers if self.interaction == "dcn" else 0

    def mlp_param_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of every MLP parameter in the compiled module's order: for each bottom
        then top layer ``{part}{i}_w`` = Wt [in, out] and ``{part}{i}_b`` [out]; the first top
        Wt has ``interaction_width_padded`` rows (the rows past the true width stay zero).

        With the "dcn" interaction the L cross layers come between the bottom and the top
        layers, each as ``cross{l}_u`` = U_l^T [Np, r], ``cross{l}_v`` = V_l^T [r, Np] and
        ``cross{l}_b`` [Np] (Np = ``interaction_width_padded``; the entries past the true width
        N stay zero), so that the layer is x0 * (x_l @ u @ v + b) + x_l in the MLPs' Wt [in, out]
        convention. torchrec's LowRankCrossNet: u = V_kernels[l]^T, v = W_kernels[l]^T,
        b = bias[l] (docs/dcn.md)."""
        specs: list[tuple[str, tuple[int, ...]]] = []
        for part, layers in (("bot", self.bot_layers), ("top", self.top_layers)):
            if part == "top":
                specs += self.cross_param_specs()
            for i, (k, n) in enumerate(layers):
                if part == "top" and i == 0:
                    k = self.interaction_width_padded
                specs.append((f"{part}{i}_w", (k, n)))
                specs.append((f"{part}{i}_b", (n,)))
        return specs

    def cross_param_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """The DCN cross layers' part of ``mlp_param_specs`` ([] unless "dcn")."""
        npad, r = self.interaction_width_padded, self.dcn_low_rank_dim
        return [spec for li in range(self.num_cross_layers)
                for spec in ((f"cross{li}_u", (npad, r)), (f"cross{li}_v", (r, npad)),
                             (f"cross{li}_b", (npad,)))]

    def mlp_param_count(self) -> int:
        """The dense parameters (MLPs and cross layers) at their true widths."""
        n = self.interaction_width
        cross = self.num_cross_layers * (2 * n * self.dcn_low_rank_dim + n)
        return sum(i * o + o for i, o in self.bot_layers + self.top_layers) + cross

    def param_bytes(self) -> int:
        return 4 * (self.total_rows * self.embedding_dim + self.mlp_param_count())


@dataclass(frozen=True)
class TrainConfig:
    """SGD training. The LR schedule is the reference's: linear warmup, then polynomial decay."""

    batch_size: int = 128
    learning_rate: float = 0.1
    steps: int = 100
    seed: int = 0
    lr_num_warmup_steps: int = 0
    lr_decay_start_step: int = 0
    lr_num_decay_steps: int = 0
    log_every: int = 1
    precision: str = "fp32"  # "bf16": bf16 GEMMs and Split-SGD-BF16 weights and tables
    # "rwsadagrad": the reference's row-wise sparse Adagrad (one accumulator per table row)
    # for the embeddings and dense Adagrad for the MLPs, as its --optimizer rwsadagrad;
    # "adagrad": exact Adagrad (torch.optim.Adagrad, eps 1e-8, MLPerf DLRM-DCNv2's) on every
    # parameter, with an fp32 state of each table's shape (docs/adagrad.md)
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _positive("batch_size", self.batch_size)
        _positive("log_every", self.log_every)
        if not (_is_real(self.learning_rate) and self.learning_rate > 0
                and math.isfinite(self.learning_rate)):
            raise ConfigError(f"learning_rate must be > 0 and finite, got {self.learning_rate!r}")
        for name in ("steps", "lr_num_warmup_steps", "lr_decay_start_step", "lr_num_decay_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {v!r}")

    def lr_at(self, step: int) -> float:
        """Learning rate for 0-based ``step`` (the reference's LRPolicyScheduler)."""
        base = self.learning_rate
        if step < self.lr_num_warmup_steps:
            return base * (1.0 - (self.lr_num_warmup_steps - step) / self.lr_num_warmup_steps)
        if self.lr_num_decay_steps > 0:
            end = self.lr_decay_start_step + self.lr_num_decay_steps
            if step >= self.lr_decay_start_step:
                done = min(step, end) - self.lr_decay_start_step
                scale = ((self.lr_num_decay_steps - done) / self.lr_num_decay_steps) ** 2
                return max(1e-7, base * scale)
        return base


@dataclass(frozen=True)
class DataConfig:
    """Input data. ``synthetic`` follows the reference's random generator.

    num_indices_per_lookup: the bag size (the maximum when not fixed).
    num_indices_per_lookup_fixed: every bag has exactly that many lookups; otherwise each bag
        draws its size uniformly in [1, num_indices_per_lookup] as the reference does.
    multi_hot_sizes: multi-hot bags (DLRM-DCNv2; torchrec's --multi_hot_sizes): every bag of
        table t has exactly multi_hot_sizes[t] lookups (one value: every table). () (default):
        the bags follow num_indices_per_lookup(_fixed). When given it replaces those two for
        every table (they are then ignored; a varied size with it is refused), and a bag is
        not capped at its table's rows (duplicates are kept). One value per table, or one for
        all (``bag_sizes``); synthetic data, or ``criteo-multihot`` (MLPerf DCNv2's
        materialised multi-hot files: given sizes must match the data's, else they are taken
        from it); the other Criteo files are one-hot.
    labels: "teacher" (default: labels from a fixed random linear model of the inputs, a task
        the model can learn, so a first run shows the loss falling and a held-out AUC) or
        "random" (the reference's 0/1 coin flips, nothing to learn: for reference parity).
    index_distribution: "uniform" (the reference) or "zipf": row ranks drawn with P(rank k)
        proportional to k^-zipf_alpha over the table's rows (a power law, as real Criteo
        indices), the hot ranks spread over the table by a fixed per-table permutation.
    shuffle: the order Criteo training rows are read in, a new one each epoch (the
        reference's --data-randomize): "total" (default, as the reference: every training row
        shuffled across days), "day" (within each day, the days in order) or "none" (file
        order). Held-out rows are never shuffled; synthetic data is unaffected.
    shuffle_batches: also shuffle the order of each epoch's whole batches (the reference's
        --mlperf-bin-shuffle).
    table_sizes: where a run on Criteo data takes its tables' rows from: "data" (default:
        the preprocessing's meta.json, the remapped ids' counts or max_ind_range, capped at
        max_ind_range) or "config" (model.table_rows as given; set by --arch-embedding-size
        and by a config file that sets table_rows). Ids that do not fit are folded
        (id % rows) with a warning.
    """

    kind: str = "synthetic"  # or criteo-kaggle, criteo-terabyte, mlperf-bin (DATA_KINDS)
    # criteo-kaggle/terabyte: a raw file or a `dlrm-tvm preprocess` directory; mlperf-bin: .bin;
    # criteo-multihot: the directory of MLPerf DCNv2's day_{i}_* files (data/criteo/multihot.py)
    path: str = ""
    eval_path: str = ""  # mlperf-bin: held-out .bin file(s) (criteo-*: the test split)
    # criteo-* raw files: the directory their preprocessed form is written to and reused from
    # ("": RUNDIR/data); the reference's --processed-data-file
    processed_path: str = ""
    max_ind_range: int = 0  # criteo raw files: categories int(hex, 16) % this (0: raw hash)
    skip_bad_lines: bool = False
    num_indices_per_lookup: int = 1
    num_indices_per_lookup_fixed: bool = True
    multi_hot_sizes: tuple[int, ...] = ()
    labels: str = "teacher"
    index_distribution: str = "uniform"
    zipf_alpha: float = 1.05
    shuffle: str = "total"  # SHUFFLES
    shuffle_batches: bool = False
    table_sizes: str = "data"  # TABLE_SIZE_SOURCES

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ConfigError(f"data kind must be one of {DATA_KINDS}, got {self.kind!r}")
        if self.kind != "synthetic" and not self.path:
            raise ConfigError(f"--data {self.kind} needs --data-path")
        if self.max_ind_range < 0:
            raise ConfigError(f"max_ind_range must be >= 0, got {self.max_ind_range}")
        _positive("num_indices_per_lookup", self.num_indices_per_lookup)
        object.__setattr__(self, "multi_hot_sizes", tuple(self.multi_hot_sizes))
        for i, n in enumerate(self.multi_hot_sizes):
            _positive(f"multi_hot_sizes[{i}]", n)
            if n >= 2**31:
                raise ConfigError(f"multi_hot_sizes[{i}] must be < 2^31, got {n}")
        if self.multi_hot_sizes and not self.num_indices_per_lookup_fixed:
            raise ConfigError("multi-hot bags have fixed sizes (multi_hot_sizes): drop "
                              "--num-indices-per-lookup-fixed 0")
        if self.multi_hot_sizes and self.kind in ("criteo-kaggle", "criteo-terabyte",
                                                  "mlperf-bin"):
            raise ConfigError(f"--multi-hot-sizes applies to synthetic data; the {self.kind} "
                              f"files are one-hot")
        if self.labels not in LABELS:
            raise ConfigError(f"labels must be 'random' or 'teacher', got {self.labels!r}")
        if self.index_distribution not in INDEX_DISTRIBUTIONS:
            raise ConfigError(f"index_distribution must be one of {INDEX_DISTRIBUTIONS}, "
                              f"got {self.index_distribution!r}")
        if not (_is_real(self.zipf_alpha) and self.zipf_alpha > 0
                and math.isfinite(self.zipf_alpha)):
            raise ConfigError(f"zipf_alpha must be > 0 and finite, got {self.zipf_alpha!r}")
        if self.shuffle not in SHUFFLES:
            raise ConfigError(f"shuffle must be one of {SHUFFLES}, got {self.shuffle!r}")
        if self.table_sizes not in TABLE_SIZE_SOURCES:
            raise ConfigError(f"table_sizes must be one of {TABLE_SIZE_SOURCES}, got "
                              f"{self.table_sizes!r}")

    def bag_sizes(self, num_tables: int) -> tuple[int, ...] | None:
        """The multi-hot bag size of each of ``num_tables`` tables (one value repeated), or
        None when bags follow num_indices_per_lookup."""
        if not self.multi_hot_sizes:
            return None
        if len(self.multi_hot_sizes) == 1:
            return self.multi_hot_sizes * num_tables
        if len(self.multi_hot_sizes) != num_tables:
            raise ConfigError(f"multi_hot_sizes has {len(self.multi_hot_sizes)} values for "
                              f"{num_tables} tables: give one per table, or one for all")
        return self.multi_hot_sizes

    def mean_bag_sizes(self, table_rows: tuple[int, ...]) -> list[float]:
        """The mean lookups per bag of each table: its multi-hot size; else
        num_indices_per_lookup (the mean of a varied size, (L + 1) / 2), at most its rows (the
        synthetic generator caps those bags at the table's rows). A table's lookups per step
        are this times the batch (the sharding plan's costs, the benchmarks' floors)."""
        sizes = self.bag_sizes(len(table_rows))
        if sizes is not None:
            return [float(n) for n in sizes]
        per_bag = self.num_indices_per_lookup if self.num_indices_per_lookup_fixed else \
            (self.num_indices_per_lookup + 1) / 2
        return [min(r, per_bag) for r in table_rows]

    def max_lookups_per_sample(self, num_tables: int) -> int:
        """The most lookups one sample can make over all tables (what a step's scratch is
        sized for)."""
        sizes = self.bag_sizes(num_tables)
        return sum(sizes) if sizes is not None else num_tables * self.num_indices_per_lookup


@dataclass(frozen=True)
class Config:
    name: str = "tiny"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self) -> None:
        self.data.bag_sizes(self.model.num_tables)  # multi_hot_sizes: one per table, or one

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Config:
        """A Config from nested dicts (a TOML file, ``to_dict``, a checkpoint's JSON): every
        value's type is checked against its field's before anything is built."""
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a table of sections, got {_describe(d)}")
        unknown = set(d) - {"name", "model", "train", "data"}
        if unknown:
            raise ConfigError(f"unknown config sections: {sorted(unknown)}")
        name = d.get("name", "custom")
        if not isinstance(name, str):
            raise ConfigError(f"name must be a string, got {_describe(name)}")
        return Config(
            name=name,
            model=_make(ModelConfig, d.get("model", {}), "model"),
            train=_make(TrainConfig, d.get("train", {}), "train"),
            data=_make(DataConfig, d.get("data", {}), "data"),
        )

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)

    def check_fits(self, available_bytes: int | None = None) -> int:
        """Refuse a config whose peak memory in one process exceeds what is available; return
        that estimate (bytes). It counts what the trainer holds (runtime/trainer.py):
        parameters (4 bytes each: fp32, or bf16's two Split-SGD halves), rwsadagrad's
        accumulators or adagrad's state (4 bytes per parameter, tables included), plus the
        larger of the initialisation transient (tables are drawn into their final buffers a
        chunk at a time, at most 48 MiB: runtime/params.py INIT_CHUNK_VALUES and
        SparseParams.CHUNK_VALUES; and the MLP's copies) and one step's workspace (the batch,
        MLP activations and gradients, the embedding update's scratch per lookup), and 256 MiB
        for the runtime. Data sets held in memory are not counted."""
        m, t = self.model, self.train
        GiB, MiB = 2**30, 2**20
        mlp = 4 * m.mlp_param_count()
        parts = [("parameters", m.param_bytes())]
        if t.optimizer == "rwsadagrad":  # a row accumulator, an MLP-sized one
            parts.append(("rwsadagrad accumulators", 4 * (m.total_rows + m.mlp_param_count())))
        elif t.optimizer == "adagrad":  # an fp32 state of every parameter's shape
            parts.append(("adagrad state", 4 * (m.total_rows * m.embedding_dim
                                                 + m.mlp_param_count())))
        init = 64 * MiB + 3 * mlp
        lookups = t.batch_size * self.data.max_lookups_per_sample(m.num_tables)
        # the (rw)adagrad kernel coalesces rows per chunk: their summed gradients, 7 int64 and
        # the bag per lookup; sgd's bucketed kernel: the bag, a bucket slot and a row per lookup
        scratch = lookups * (4 * m.embedding_dim + 60 if t.optimizer != "sgd" else 16)
        widths = (sum(m.mlp_bot[1:]) + m.num_tables * m.embedding_dim
                  + m.interaction_width_padded + sum(m.mlp_top)
                  # dcn: per cross layer x_l, z and x_l's gradient [B, Np] and u [B, r]
                  + m.num_cross_layers * (3 * m.interaction_width_padded + m.dcn_low_rank_dim))
        step = 32 * lookups + scratch + 3 * 4 * t.batch_size * widths + mlp
        parts.append(("initialisation transient" if init >= step else "a step's workspace",
                      max(init, step)))
        parts.append(("runtime", 256 * MiB))
        need = sum(b for _, b in parts)
        avail = available_bytes if available_bytes is not None else available_memory()
        if avail is not None and need > avail:
            counted = " + ".join(f"{what} {b / GiB:.2f}" for what, b in parts)
            raise ConfigError(
                f"the model needs {need / GiB:.1f} GiB at its peak ({counted} GiB; "
                f"{m.total_rows:,} embedding rows x {m.embedding_dim}, {t.precision} "
                f"{t.optimizer}, batch {t.batch_size}) but only {avail / GiB:.1f} GiB of "
                f"memory is available: "
                f"lower the table sizes (e.g. --max-ind-range), the embedding dim or the batch"
            )
        return need


def _describe(value: Any) -> str:
    """``value`` in TOML's words, for error messages: "the string '1111'", "the integer 5"."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the float {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (list, tuple)):
        return f"the list {list(value)!r}"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _check_type(section: str, key: str, hint: Any, value: Any) -> Any:
    """``value`` if it has the field type ``hint`` (ints widened to float for float fields),
    else a ConfigError naming ``[section] key``."""
    where = f"[{section}] {key}"
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {_describe(value)}")
        return value
    if hint is int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where} must be an integer, got {_describe(value)}")
        return value
    if hint is float:
        if not _is_real(value):
            raise ConfigError(f"{where} must be a number, got {_describe(value)}")
        try:
            return float(value)
        except OverflowError as e:
            raise ConfigError(f"{where} is too large: {value}") from e
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {_describe(value)}")
        return value
    if typing.get_origin(hint) is tuple and typing.get_args(hint) == (int, Ellipsis):
        if not isinstance(value, (list, tuple)) or any(
            not isinstance(x, int) or isinstance(x, bool) for x in value
        ):
            raise ConfigError(f"{where} must be a list of integers, got {_describe(value)}")
        return tuple(value)
    raise TypeError(f"no type check for {where}'s type {hint!r}")  # a new field type: add one


def _make(cls: type, d: Any, section: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(
            f"{section} must be a table ([{section}] with its keys), got {_describe(d)}"
        )
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown keys in [{section}]: {sorted(unknown)}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kw = {k: _check_type(section, k, hints[k], v) for k, v in d.items()}
    try:
        return cls(**kw)
    except TypeError as e:
        raise ConfigError(f"[{section}]: {e}") from e


def available_memory() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def mlperf_rows(max_ind_range: int) -> tuple[int, ...]:
    return tuple(min(r, max_ind_range) for r in CRITEO_TERABYTE_ROWS)


# The MLPerf reference caps the tables at 40M rows (about 100 GB of fp32); 1M keeps the preset
# within a 24 GiB machine (3.5 GiB). Raise it with --max-ind-range where memory allows.
MLPERF_DEFAULT_MAX_IND_RANGE = 1_000_000

PRESETS: dict[str, Config] = {
    "tiny": Config(
        name="tiny",
        model=ModelConfig(),
        train=TrainConfig(batch_size=128),
        data=DataConfig(num_indices_per_lookup=1),
    ),
    "small": Config(
        name="small",
        model=ModelConfig(
            table_rows=(1_000_000,) * 8,
            embedding_dim=64,
            mlp_bot=(512, 512, 64),
            mlp_top=(1024, 1024, 1024, 1),
        ),
        train=TrainConfig(batch_size=2048),
        data=DataConfig(num_indices_per_lookup=100),
    ),
    "mlperf": Config(
        name="mlperf",
        model=ModelConfig(
            table_rows=mlperf_rows(MLPERF_DEFAULT_MAX_IND_RANGE),
            embedding_dim=128,
            mlp_bot=(13, 512, 256, 128),
            mlp_top=(1024, 1024, 512, 256, 1),
        ),
        train=TrainConfig(batch_size=2048, learning_rate=1.0),
        data=DataConfig(num_indices_per_lookup=1),
    ),
    # DLRM-DCNv2 (docs/dcn.md), small enough for the tests: 26 tables, 2 cross layers of rank 32
    "dcnv2-tiny": Config(
        name="dcnv2-tiny",
        model=ModelConfig(table_rows=(1000,) * 26, embedding_dim=16, mlp_bot=(13, 64, 16),
                          mlp_top=(64, 32, 1), interaction="dcn", dcn_num_layers=2,
                          dcn_low_rank_dim=32),
        train=TrainConfig(batch_size=128),
        data=DataConfig(num_indices_per_lookup=1),
    ),
    # MLPerf's DLRM-DCNv2 (mlcommons/training recommendation_v2): its shapes, multi-hot bag
    # sizes (214 lookups per sample) and exact Adagrad at lr 0.004, every table capped at
    # MLPERF_DEFAULT_MAX_IND_RANGE rows (4.2 GiB of fp32 tables and as much Adagrad state;
    # --max-ind-range lifts the cap); a batch of 2048 per process (MLPerf's global 65,536 is
    # --mini-batch-size 65536 over the ranks)
    "dcnv2": Config(
        name="dcnv2",
        model=ModelConfig(
            table_rows=tuple(min(r, MLPERF_DEFAULT_MAX_IND_RANGE) for r in DCNV2_ROWS),
            embedding_dim=128,
            mlp_bot=(13, 512, 256, 128),
            mlp_top=(1024, 1024, 512, 256, 1),
            interaction="dcn", dcn_num_layers=3, dcn_low_rank_dim=512,
        ),
        train=TrainConfig(batch_size=2048, learning_rate=0.004, optimizer="adagrad"),
        data=DataConfig(multi_hot_sizes=DCNV2_MULTI_HOT_SIZES),
    ),
}


# Presets whose tables are a capped copy of a bigger model: their capped rows -> the model's
# own rows, so that --max-ind-range R re-caps from the full sizes (R above the preset's cap
# lifts it) instead of only ever lowering the preset's cap.
UNCAPPED_ROWS: dict[tuple[int, ...], tuple[int, ...]] = {
    PRESETS["mlperf"].model.table_rows: CRITEO_TERABYTE_ROWS,
    PRESETS["dcnv2"].model.table_rows: DCNV2_ROWS,
}


# Names that moved to config_io.py, importable from here as before. Resolved on first use:
# config_io imports this module, so importing it here at the top would be circular.
_IN_CONFIG_IO = frozenset({
    "CONFIG_FLAGS", "ConfigFlag", "apply_overrides", "load_config", "to_toml", "auc_fraction",
    "finite_float", "nonneg_float", "nonneg_int", "positive_float", "positive_int",
})


def __getattr__(name: str) -> Any:
    if name in _IN_CONFIG_IO:
        from dlrm_tvm import config_io

        return getattr(config_io, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
