"""The sharding plan (pure Python: no ranks needed)."""

from __future__ import annotations

import json

import pytest
from dlrm_tvm.runtime.sharding import ShardingPlan, plan_shards


def _covered_once(plan):
    for t, rows in enumerate(plan.table_rows):
        spans = sorted((s.row_start, s.row_stop) for s in plan.shards if s.table == t)
        assert spans[0][0] == 0 and spans[-1][1] == rows
        for (a0, b0), (a1, b1) in zip(spans, spans[1:], strict=False):
            assert b0 == a1, f"table {t}: gap or overlap at {b0}/{a1}"


def test_table_wise_balances_memory():
    rows = (1000, 900, 800, 700, 600, 500, 400, 300)
    plan = plan_shards(rows, 16, 3)
    _covered_once(plan)
    assert all(s.rows == rows[s.table] for s in plan.shards)  # whole tables
    mb = plan.rank_bytes()
    bound = max(sum(mb) / 3, max(rows) * 16 * 4)  # no plan does better than this
    assert max(mb) <= 4 / 3 * bound  # the LPT guarantee
    assert plan == plan_shards(rows, 16, 3)  # deterministic


def test_a_table_too_big_for_one_rank_is_cut_row_wise():
    rows = (10_000, 100, 100)
    budget = 4000 * 8 * 4  # a rank holds 4000 rows of D=8
    plan = plan_shards(rows, 8, 4, rank_budget_bytes=budget)
    _covered_once(plan)
    big = [s for s in plan.shards if s.table == 0]
    assert len(big) == 3 and len({s.rank for s in big}) == 3
    assert all(b <= budget for b in plan.rank_bytes())
    assert plan.owner(0, 9_999) == big[-1].rank


def test_more_ranks_than_tables_and_lookup_cost():
    plan = plan_shards((100, 100), 4, 5, lookups_per_table=(1000, 1))
    _covered_once(plan)
    assert sum(1 for r in range(5) if not plan.shards_of(r)) == 3  # idle ranks are fine
    assert "rank 4" in plan.format()


def test_refuses_what_cannot_fit():
    with pytest.raises(ValueError, match="GiB"):
        plan_shards((1000,), 8, 2, rank_budget_bytes=100 * 8 * 4)


def test_round_trips_through_json(tmp_path):
    plan = plan_shards((50, 60, 70), 8, 2, rank_budget_bytes=40 * 8 * 4 * 3)
    plan.save(tmp_path / "p.json")
    again = ShardingPlan.from_dict(json.loads((tmp_path / "p.json").read_text()))
    assert again == plan


def test_lookups_balance_even_when_memory_is_dominated_by_a_few_tables():
    # Criteo-like: a few huge tables and many tiny ones, one lookup each per sample
    rows = (1_000_000,) * 6 + (1000,) * 20
    plan = plan_shards(rows, 16, 16, lookups_per_table=[1.0] * 26)
    per_rank = [len(plan.shards_of(r)) for r in range(16)]
    assert max(per_rank) == 2  # 26 tables over 16 ranks: no rank serves 3 tables' lookups
    big_ranks = [s.rank for s in plan.shards if s.rows == 1_000_000]
    assert len(set(big_ranks)) == 6  # and no rank holds two huge tables


def test_row_wise_puts_range_i_on_rank_i_and_plan_command_reports_it():
    from dlrm_tvm.config import apply_overrides, load_config
    from dlrm_tvm.plan import format_report, plan_report
    from dlrm_tvm.runtime.sharding import make_plan

    cfg = apply_overrides(load_config("tiny"), arch_embedding_size="1000-1001-2-7")
    plan = make_plan(cfg, 3, "row")
    for t, rows in enumerate(cfg.model.table_rows):
        parts = sorted((s for s in plan.shards if s.table == t), key=lambda s: s.row_start)
        assert [s.row_start for s in parts] == [rows * i // len(parts)
                                                for i in range(len(parts))]
        assert parts[-1].row_stop == rows and len(parts) == min(3, rows)
        if rows >= 3:
            assert [s.rank for s in parts] == [0, 1, 2]
    assert sorted(s.rank for s in plan.shards if s.table == 2) == [0, 2]  # ranks 2, 0
    rep = plan_report(cfg, 3, "row")
    assert rep["per_table"][1]["parts"][2] == {"rank": 2, "row_start": 667, "row_stop": 1001}
    assert sum(r["rows"] for r in rep["per_rank"]) == sum(cfg.model.table_rows)
    text = format_report(rep)
    assert "rank 2 rows 667:1001" in text
    auto = plan_report(load_config("mlperf"), 4)
    owners = [len(t["parts"]) for t in auto["per_table"]]
    assert owners == [1] * 26  # 1M-row tables fit a rank: table-wise


def test_plan_command_prints_and_writes_json(tmp_path, capsys):
    import json

    from dlrm_tvm import cli

    out = tmp_path / "plan.json"
    assert cli.main(["plan", "--config", "mlperf", "--ranks", "4", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    rep = json.loads(out.read_text())
    owner = rep["per_table"][7]["parts"]
    assert len(owner) == 1 and f"    7         1,543  rank {owner[0]['rank']}" in text
    assert sorted(t for r in rep["per_rank"] for t in r["tables"]) == list(range(26))
    # a budget below a table's size cuts it row-wise; one below the total is refused
    assert cli.main(["plan", "--config", "small", "--ranks", "16", "--rank-memory-gib",
                     "0.2", "--json", str(out)]) == 0  # 244 MiB tables, 205 MiB per rank
    rep = json.loads(out.read_text())
    assert all(len(t["parts"]) == 2 for t in rep["per_table"])
    assert max(r["mib"] for r in rep["per_rank"]) <= 0.2 * 1024
    assert cli.main(["plan", "--config", "small", "--ranks", "4", "--rank-memory-gib",
                     "0.3"]) == 2
    assert "cannot shard the tables over 4 ranks" in capsys.readouterr().err


def test_plan_takes_trains_memory_budget_and_says_the_preset_caps_its_tables(capsys,
                                                                            monkeypatch):
    """plan and train agree: without --rank-memory-gib the plan takes train's default budget
    (80% of the node's available memory over the ranks), and mlperf's plan says its tables are
    the preset's 1M-row caps of bigger ones."""
    from dlrm_tvm import cli, config

    monkeypatch.setattr(config, "available_memory", lambda: 10 * 2**30)
    assert cli.main(["plan", "--config", "mlperf", "--ranks", "4", "--json", "/dev/null"]) == 0
    out = capsys.readouterr().out
    assert "2.0 GiB per rank (80% of this node's available memory" in out, out
    assert "the preset caps 6 tables at 1,000,000 rows" in out
    from dlrm_tvm.plan import plan_report

    rep = plan_report(config.PRESETS["tiny"], 2, rank_memory_gib=1.5)
    assert rep["rank_memory_gib"] == 1.5 and rep["rank_memory_from"] == "given"
    assert rep["capped_preset"] is None
