"""Markdown tables and one plot from `dlrm-tvm bench --ranks ... --json` files.

    python tools/scaling_report.py docs/ranks-small-v1.json docs/ranks-mlperf-v1.json \
        --plot docs/scaling.png [--measured other-machine.json ...]

Prints, per file: the measured rows (ms/step split into compute, exposed and overlapped
communication, bytes per exchange) and the model's efficiency for 1 to 64 sockets, strong and
weak, per network. ``--measured`` adds points measured elsewhere (e.g. 1 to 16 ranks on a
16-core host) to the plot, matched by config name.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlrm_tvm.bench.scaling import efficiency, plot_scaling  # noqa: E402


def measured_table(r: dict) -> str:
    out = ["| ranks x threads | ms/step | compute | exposed comm (mean; least-waiting rank) | "
           "overlapped comm | exposed share | speed vs first | core-time efficiency | "
           "MB/rank/step (sent + received) |",
           "|---|---|---|---|---|---|---|---|---|"]
    b0 = r["rows"][0]
    for row in r["rows"]:
        mb = ", ".join(f"{k} {v / 1e6:.2f}" for k, v in sorted(row["bytes_per_rank"].items())
                       if v >= 1e3) or "-"
        out.append(f"| {row['ranks']} x {row['threads_per_rank']} | {row['ms_per_step']:.1f} | "
                   f"{row['compute_ms']:.1f} | {row['exposed_comm_ms']:.1f}; "
                   f"{row.get('exposed_min_rank_ms', row['exposed_comm_ms']):.1f} | "
                   f"{row['overlapped_comm_ms']:.1f} | {100 * row['exposed_share']:.1f}% | "
                   f"{b0['ms_per_step'] / row['ms_per_step']:.2f}x | "
                   f"{100 * efficiency(b0, row):.0f}% | {mb} |")
    return "\n".join(out)


def model_table(r: dict) -> str:
    tabs = r.get("model", {}).get("tables", {})
    if not tabs:
        return "(no 1-rank row: no model)"
    names = list(tabs)
    socks = [x["sockets"] for x in tabs[names[0]]]
    out = ["| sockets | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for i, s in enumerate(socks):
        cells = [f"{tabs[n][i]['step_ms']:.1f} ms, {100 * tabs[n][i]['efficiency']:.0f}%"
                 for n in names]
        out.append(f"| {s} | " + " | ".join(cells) + " |")
    v = r["model"].get("validation")
    if v:
        out.append("")
        out.append(f"Model check against the measured 2-rank run: predicted "
                   f"{v['predicted_ms']:.1f} ms/step ({v['predicted_exposed_ms']:.1f} exposed), "
                   f"measured {v['measured_ms']:.1f} (exposed: mean over ranks "
                   f"{v['measured_exposed_ms']:.1f}, least-waiting rank "
                   f"{v['measured_exposed_min_rank_ms']:.1f}).")
    nets = r["model"]["networks"]
    out.append("")
    out.append("Networks: " + "; ".join(
        f"{k}: {v['latency_us']:.1f} us, {v['bandwidth_GBps']:.2f} GB/s alltoall, "
        f"{v['allreduce_bandwidth_GBps']:.2f} GB/s allreduce" for k, v in nets.items()))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+")
    ap.add_argument("--plot")
    ap.add_argument("--measured", nargs="*", default=[])
    ap.add_argument("--remodel", action="store_true",
                    help="recompute the model from the measured rows (after a model change)")
    a = ap.parse_args(argv)
    results = [json.loads(Path(f).read_text()) for f in a.files]
    if a.remodel:
        from dlrm_tvm.bench.scaling import model_tables
        from dlrm_tvm.config import Config

        for r in results:
            r["model"] = model_tables(Config.from_dict(r["config"]), r)
    extra = [json.loads(Path(f).read_text()) for f in a.measured]
    for f, r in zip(a.files, results, strict=True):
        print(f"### {r['name']} ({f})\n")
        print(measured_table(r))
        print()
        print(f"Model (step time and efficiency; strong keeps the global batch "
              f"{r['config']['train']['batch_size']}, weak keeps it per socket):\n")
        print(model_table(r))
        print()
    if a.plot:
        plot_scaling(results, a.plot, extra)
        print(f"plot -> {a.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
