"""Markdown tables from `dlrm-tvm kernels bench --op embedding_bag_* --json` files (for docs/).

    python tools/embedding_tables.py docs/emb-fwd-v3.json docs/emb-update-v3.json
"""

from __future__ import annotations

import json
import sys


def markdown(r: dict) -> str:
    upd = r["op"] == "embedding_bag_update"
    out = [f"`{r['op']}`, tables {r['table_dtype']}" + (f", {r['optimizer']}" if upd else ""),
           "", "| case | dist | variant | ms | Mlookups/s | GB/s | % of gather | x torch |",
           "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        case = f"{row['rows'] / 1e6:g}M x {row['dim']}, {row['lookups_per_bag']}/bag"
        tref = row.get("torch", {}).get("update_ms" if upd else "fwd_ms")
        out.append(f"| {case} | {row['dist']} | plain gather | {row['gather_ms']:.2f} | "
                   f"{row['nnz'] / row['gather_ms'] / 1e3:.1f} | {row['gather_gbs']:.2f} | 100 | |")
        for name, v in row["variants"].items():
            if "ms" not in v:
                continue
            x = f"{tref / v['ms']:.2f}" if tref else ""
            bad = "" if v["status"] == "ok" else " WRONG"
            out.append(f"| | | `{name}`{bad} | {v['ms']:.2f} | {v['mlookups_s']:.1f} | "
                       f"{v['gbs']:.2f} | {100 * v['of_gather']:.0f} | {x} |")
        if tref:
            label = "torch sparse grad + step" if upd else "torch embedding_bag"
            out.append(f"| | | {label} | {tref:.2f} | {row['nnz'] / tref / 1e3:.1f} | "
                       f"{row['bytes'] / tref / 1e6:.2f} | | 1.00 |")
    return "\n".join(out)


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            print(markdown(json.load(f)) + "\n")
