"""``dlrm-tvm plan``: where every table's rows would live on N ranks, without mpiexec.

The same plan a distributed run makes on rank 0 (runtime/sharding.py ``make_plan``, with the
run's costs: each table's bytes and lookups per step), printed per rank (tables, rows, MiB,
lookups per step) and per table (its owner ranks and row ranges).
"""

from __future__ import annotations

from dlrm_tvm.config import Config


def plan_report(cfg: Config, ranks: int, sharding: str = "auto",
                rank_memory_gib: float | None = None) -> dict:
    """The plan as a JSON-able dict: the plan itself, per rank and per table summaries."""
    from dlrm_tvm.runtime.sharding import make_plan

    from dlrm_tvm.config import UNCAPPED_ROWS, available_memory

    budget_from = "given"
    if rank_memory_gib:
        budget = int(rank_memory_gib * 2**30)
    else:  # as `train` under `mpiexec -n RANKS` on this node: 80% of its memory over the ranks
        avail = available_memory()
        budget = None if avail is None else int(0.8 * avail / ranks)
        budget_from = "this node" if budget else "none"
        rank_memory_gib = None if budget is None else round(budget / 2**30, 2)
    plan = make_plan(cfg, ranks, sharding, budget)
    m, d = cfg.model, cfg.data
    per_bag = d.mean_bag_sizes(m.table_rows)  # lookups per bag of each table (multi-hot)
    # bytes per row: the row, plus rwsadagrad's accumulator or adagrad's row-shaped state
    bpr = 4 * m.embedding_dim + (4 if cfg.train.optimizer == "rwsadagrad" else 0) + \
        (4 * m.embedding_dim if cfg.train.optimizer == "adagrad" else 0)
    per_rank = []
    for r in range(ranks):
        sh = plan.shards_of(r)
        rows = sum(s.rows for s in sh)
        look = sum(per_bag[s.table] * cfg.train.batch_size
                   * s.rows / m.table_rows[s.table] for s in sh)
        per_rank.append({"rank": r, "shards": len(sh), "rows": rows, "mib": rows * bpr / 2**20,
                         "lookups_per_step": look,
                         "tables": sorted({s.table for s in sh})})
    per_table = []
    for t, rows in enumerate(m.table_rows):
        parts = sorted((s for s in plan.shards if s.table == t), key=lambda s: s.row_start)
        per_table.append({"table": t, "rows": rows,
                          "parts": [{"rank": s.rank, "row_start": s.row_start,
                                     "row_stop": s.row_stop} for s in parts]})
    full = UNCAPPED_ROWS.get(tuple(m.table_rows))
    capped = None
    if full is not None and tuple(full) != tuple(m.table_rows):
        capped = {"cap": max(m.table_rows), "full_max_rows": max(full),
                  "tables_capped": sum(a < b for a, b in zip(m.table_rows, full, strict=True))}
    return {"config": cfg.name, "ranks": ranks, "sharding": sharding,
            "rank_memory_gib": rank_memory_gib, "rank_memory_from": budget_from,
            "capped_preset": capped, "plan": plan.to_dict(),
            "per_rank": per_rank, "per_table": per_table}


def format_report(rep: dict) -> str:
    src = rep.get("rank_memory_from")
    lines = [f"config {rep['config']}: {len(rep['per_table'])} tables over {rep['ranks']} "
             f"ranks, sharding {rep['sharding']}"
             + (f", {rep['rank_memory_gib']} GiB per rank" if rep["rank_memory_gib"] else "")
             + (" (80% of this node's available memory over the ranks, as train takes it; "
                "--rank-memory-gib sets it)" if src == "this node" else "")]
    cap = rep.get("capped_preset")
    if cap:
        lines.append(f"the preset caps {cap['tables_capped']} tables at {cap['cap']:,} rows (its "
                     f"model's own tables reach {cap['full_max_rows']:,}; --max-ind-range R "
                     f"re-caps them at R)")
    lines += ["", f"{'rank':>4}  {'shards':>6}  {'rows':>12}  {'MiB':>9}  {'lookups/step':>12}"
              "  tables"]
    for r in rep["per_rank"]:
        lines.append(f"{r['rank']:>4}  {r['shards']:>6}  {r['rows']:>12,}  {r['mib']:>9.1f}  "
                     f"{r['lookups_per_step']:>12,.0f}  "
                     + (",".join(map(str, r["tables"])) or "-"))
    lines += ["", f"{'table':>5}  {'rows':>12}  where"]
    for t in rep["per_table"]:
        whole = len(t["parts"]) == 1
        where = (f"rank {t['parts'][0]['rank']}" if whole else "; ".join(
            f"rank {p['rank']} rows {p['row_start']}:{p['row_stop']}" for p in t["parts"]))
        lines.append(f"{t['table']:>5}  {t['rows']:>12,}  {where}")
    return "\n".join(lines)
