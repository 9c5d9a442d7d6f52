"""Which rank holds which embedding rows: the sharding plan of model-parallel tables.

Computed once (on rank 0, then broadcast, when ranks exist), printed and saved with the run.
Pure Python: the plan does not depend on MPI, so it is tested and inspected without ranks.

A *shard* is a contiguous row range [row_start, row_stop) of one table, owned by one rank.
Table-wise placement first: tables go whole to ranks, largest cost first, each to the rank with
the least load so far (LPT) in two dimensions: a table's share of all table memory and its
share of all lookups; a table goes to the rank whose larger share stays lowest (memory bounds
what a rank holds, lookups bound its embedding time; one cost in raw bytes let GB-sized tables
drown the lookups and piled the many small tables of a Criteo model, each with as many
lookups as a big one, onto one rank). A table bigger than one rank's memory budget is cut
row-wise into the fewest equal ranges that fit, and the ranges are placed the same way. The
result is deterministic: it depends only on the inputs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Shard:
    table: int
    row_start: int
    row_stop: int
    rank: int

    @property
    def rows(self) -> int:
        return self.row_stop - self.row_start


@dataclass(frozen=True)
class ShardingPlan:
    ranks: int
    table_rows: tuple[int, ...]
    dim: int
    shards: tuple[Shard, ...]

    def shards_of(self, rank: int) -> list[Shard]:
        """The shards ``rank`` holds, in (table, first row) order: the order of its tables in
        its compiled embedding functions and of its blocks in every exchange."""
        return sorted((s for s in self.shards if s.rank == rank),
                      key=lambda s: (s.table, s.row_start))

    def rank_bytes(self, bytes_per_value: int = 4) -> list[int]:
        out = [0] * self.ranks
        for s in self.shards:
            out[s.rank] += s.rows * self.dim * bytes_per_value
        return out

    def owner(self, table: int, row: int) -> int:
        for s in self.shards:
            if s.table == table and s.row_start <= row < s.row_stop:
                return s.rank
        raise KeyError(f"row {row} of table {table} is in no shard")

    def to_dict(self) -> dict:
        return {"ranks": self.ranks, "table_rows": list(self.table_rows), "dim": self.dim,
                "shards": [asdict(s) for s in self.shards]}

    @staticmethod
    def from_dict(d: dict) -> ShardingPlan:
        return ShardingPlan(int(d["ranks"]), tuple(int(x) for x in d["table_rows"]),
                            int(d["dim"]), tuple(Shard(**s) for s in d["shards"]))

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    def format(self) -> str:
        mb = self.rank_bytes()
        lines = [f"sharding: {len(self.table_rows)} tables over {self.ranks} ranks "
                 f"({sum(s.row_stop > s.row_start for s in self.shards)} shards)"]
        for r in range(self.ranks):
            mine = ", ".join(
                f"t{s.table}" if s.rows == self.table_rows[s.table]
                else f"t{s.table}[{s.row_start}:{s.row_stop}]" for s in self.shards_of(r))
            lines.append(f"  rank {r}: {mb[r] / 2**20:9.1f} MiB  {mine or '-'}")
        return "\n".join(lines)


def plan_shards(table_rows: tuple[int, ...] | list[int], dim: int, ranks: int,
                lookups_per_table: tuple[float, ...] | list[float] | None = None,
                rank_budget_bytes: int | None = None,
                bytes_per_value: int = 4, min_parts: int = 1) -> ShardingPlan:
    """The plan for ``ranks`` ranks. ``lookups_per_table``: lookups per step of each table
    (default: 1 each); ``rank_budget_bytes``: the most table memory one rank may hold
    (default: no limit); ``min_parts``: cut every table into at least this many row ranges,
    each placed by load like a table (default 1: table-wise unless a table exceeds the
    budget; ``row_wise`` is torchrec's one range per rank). Raises ValueError when the tables
    cannot fit."""
    if ranks < 1:
        raise ValueError(f"ranks must be >= 1, got {ranks}")
    nt = len(table_rows)
    lookups = list(lookups_per_table) if lookups_per_table is not None else [1.0] * nt
    if len(lookups) != nt:
        raise ValueError(f"lookups_per_table has {len(lookups)} entries for {nt} tables")
    row_bytes = dim * bytes_per_value
    total = sum(table_rows) * row_bytes
    if rank_budget_bytes is not None and total > rank_budget_bytes * ranks:
        raise ValueError(f"the tables need {total / 2**30:.2f} GiB but {ranks} ranks of "
                         f"{rank_budget_bytes / 2**30:.2f} GiB hold "
                         f"{rank_budget_bytes * ranks / 2**30:.2f} GiB")
    total_rows = max(1, sum(table_rows))
    total_lookups = sum(lookups) or 1.0
    pieces = []  # (cost, table, start, stop)
    for t, rows in enumerate(table_rows):
        parts = max(1, min(min_parts, rows))
        if rank_budget_bytes is not None:
            parts = max(parts, -(-rows * row_bytes // rank_budget_bytes))
            if parts > ranks:
                raise ValueError(f"table {t} ({rows:,} rows) does not fit in {ranks} ranks")
        bounds = [rows * i // parts for i in range(parts + 1)]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            share = (b - a) / rows if rows else 0.0
            # memory and lookups, each as a fraction of its total
            pieces.append(((b - a) / total_rows, lookups[t] * share / total_lookups, t, a, b))
    pieces.sort(key=lambda p: (-max(p[0], p[1]), -(p[0] + p[1]), p[2], p[3]))
    mem = [0.0] * ranks
    look = [0.0] * ranks
    used = [0] * ranks
    placed: list[Shard] = []
    for pm, pl, t, a, b in pieces:
        fits = [r for r in range(ranks) if rank_budget_bytes is None
                or used[r] + (b - a) * row_bytes <= rank_budget_bytes]
        if not fits:
            raise ValueError(f"no rank has room for rows {a}:{b} of table {t}")
        # the rank whose worse dimension stays lowest (two-dimensional LPT)
        r = min(fits, key=lambda r: (max(mem[r] + pm, look[r] + pl),
                                     mem[r] + pm + look[r] + pl, r))
        mem[r] += pm
        look[r] += pl
        used[r] += (b - a) * row_bytes
        placed.append(Shard(t, a, b, r))
    placed.sort(key=lambda s: (s.table, s.row_start))
    return ShardingPlan(ranks, tuple(int(x) for x in table_rows), dim, tuple(placed))


def whole_tables(table_rows: tuple[int, ...] | list[int], dim: int) -> ShardingPlan:
    """The plan of one rank: every table whole, in table order."""
    return ShardingPlan(ranks=1, table_rows=tuple(table_rows), dim=dim,
                        shards=tuple(Shard(t, 0, r, 0) for t, r in enumerate(table_rows)))


SHARDINGS = ("auto", "table", "row")


def make_plan(cfg, ranks: int, sharding: str = "auto",
              rank_budget_bytes: int | None = None) -> ShardingPlan:
    """The sharding plan of ``cfg`` (a dlrm_tvm Config) over ``ranks``: "table" places whole
    tables; "row" cuts every table into ``ranks`` row ranges; "auto" places whole tables and
    cuts only those over ``rank_budget_bytes``. Each table's cost is its bytes (rows x D x 4,
    plus a row accumulator under rwsadagrad, twice that under adagrad: a state of the table's
    shape) and its lookups per step (batch x its mean bag size: ``DataConfig.mean_bag_sizes``,
    the multi-hot size of each table, or the bag size at most its rows)."""
    import math

    from dlrm_tvm.config import ConfigError

    if sharding not in SHARDINGS:
        raise ConfigError(f"sharding must be one of {SHARDINGS}, got {sharding!r}")
    m, d = cfg.model, cfg.data
    lookups = [n * cfg.train.batch_size for n in d.mean_bag_sizes(m.table_rows)]
    per_row = 4 + (4 / m.embedding_dim if cfg.train.optimizer == "rwsadagrad" else 0) + \
        (4 if cfg.train.optimizer == "adagrad" else 0)
    if sharding == "row":
        plan = row_wise(m.table_rows, m.embedding_dim, ranks)
        worst = max(plan.rank_bytes(int(math.ceil(per_row))))
        if rank_budget_bytes is not None and worst > rank_budget_bytes:
            raise ConfigError(f"cannot shard the tables over {ranks} ranks: row-wise, a rank "
                              f"holds {worst / 2**30:.2f} GiB, over its budget of "
                              f"{rank_budget_bytes / 2**30:.2f} GiB")
        return plan
    try:
        return plan_shards(m.table_rows, m.embedding_dim, ranks, lookups,
                           None if sharding == "table" else rank_budget_bytes,
                           bytes_per_value=int(math.ceil(per_row)))
    except ValueError as e:
        raise ConfigError(f"cannot shard the tables over {ranks} ranks: {e}") from e


def row_wise(table_rows: tuple[int, ...] | list[int], dim: int, ranks: int) -> ShardingPlan:
    """torchrec's row-wise sharding: every table cut into ``ranks`` contiguous row ranges of
    near-equal size (bounds rows * i // ranks), range i on rank i; a table with fewer rows
    than ranks has one range per row, on ranks (t + i) mod ranks, so small tables spread."""
    shards = []
    for t, rows in enumerate(table_rows):
        parts = max(1, min(ranks, rows))
        bounds = [rows * i // parts for i in range(parts + 1)]
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
            shards.append(Shard(t, a, b, (t + i) % ranks if parts < ranks else i))
    return ShardingPlan(ranks, tuple(int(x) for x in table_rows), dim, tuple(shards))
