"""``dlrm-tvm bench --ranks``: measured rank scaling, and a model of it for 1 to 64 sockets.

Measured: for each rank count N, ``mpiexec -n N dlrm-tvm train`` (N = 1: the plain command) on
this machine, each rank with its share of the cores; from each run's summary: the median step,
each phase's time, and per exchange the bytes moved per rank, the seconds a rank waited for it
(exposed) and the seconds it was in flight while the rank computed (overlapped). Plus an MPI
probe (alltoall and allreduce latency and bandwidth, ``mpiexec -n 2``).

Model (``predict``): one rank per socket; a socket computes like the measured 1-rank run (its
phases scale with the work it gets); exchanges cost latency + bytes / bandwidth:

  dense compute     dense_1 * (local batch / measured batch)
  embedding compute emb_1 * (lookups on the busiest rank / lookups of the measured run); the
                    busiest rank from the real sharding plan (table-wise while there are at
                    least as many tables as ranks, row-wise beyond)
  input_dist        alltoall of each rank's lookups (8 bytes each) and bag lengths
  output_dist, grad_dist  alltoall of each rank's pooled rows: local batch x tables x D x 4 B
  allreduce         ring: 2 (N-1)/N x MLP bytes / bandwidth + 2 (N-1) latency
  other             the rest of the measured 1-rank step (input checks, set-up), scaled by
                    the local batch
  exposed           input_dist + max(0, output_dist - bottom MLP forward) + grad_dist
                    + max(0, allreduce - (top/bottom backward after the first layer + update))

Strong scaling keeps the global batch; weak scaling keeps the local batch (global = N x it).
The network is either the one measured here (shared memory within this VM) or an assumed
cluster link (``--net-bandwidth-gbs``, ``--net-latency-us``; default 12.5 GB/s and 2 us, a
100 Gb/s fabric like the paper's Omni-Path): an assumption, labelled as such.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dlrm_tvm.config import Config, ConfigError, to_toml

SOCKETS = (1, 2, 4, 8, 16, 32, 64)
COMPUTE_PHASES = ("embedding_forward", "embedding_update", "dense_forward_backward",
                  "dense_update")


def _run(cmd: list[str], timeout: float, env: dict) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:6])} ... failed ({p.returncode}):\n"
                           f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


def measure_ranks(cfg: Config, ranks: tuple[int, ...], steps: int = 8, target: str = "host",
                  sharding: str = "auto", cores: int | None = None, timeout: float = 1800,
                  threads_per_rank: int | None = None, log=print) -> dict:
    """Run the training of ``cfg`` at each rank count; returns the rows and the MPI probe.
    Each rank gets ``threads_per_rank`` threads (default: its share of ``cores``)."""
    mpiexec = shutil.which("mpiexec")
    cores = cores or len(os.sched_getaffinity(0))
    env = dict(os.environ)
    env.pop("TVM_NUM_THREADS", None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dlrm-ranks-") as tmp:
        cfg_file = Path(tmp) / "config.toml"
        cfg_file.write_text(to_toml(cfg.replace(train=_with_steps(cfg, steps))))
        for n in ranks:
            if n > 1 and mpiexec is None:
                raise RuntimeError("mpiexec is not on PATH (pip install mpich)")
            if cfg.train.batch_size % n:
                raise ConfigError(f"batch {cfg.train.batch_size} does not divide into {n} ranks")
            threads = threads_per_rank or max(1, cores // n)
            out = Path(tmp) / f"r{n}"
            cmd = [sys.executable, "-m", "dlrm_tvm", "train", "--config", str(cfg_file),
                   "--quiet", "--out", str(out), "--target", target, "--threads", str(threads),
                   "--sharding", sharding, "--no-final-checkpoint"]
            if n > 1:
                cmd = [mpiexec, "-n", str(n), *cmd]
            log(f"[ranks] {n} rank(s) x {threads} thread(s): {cfg.name}, {steps} steps ...")
            t0 = time.perf_counter()
            env_n = dict(env, TVM_NUM_THREADS=str(threads))
            _run(cmd, timeout, env_n)
            s = json.loads((out / "summary.json").read_text())
            rows.append(_row(n, threads, s, time.perf_counter() - t0))
        probe = None
        if mpiexec is not None:
            p = _run([mpiexec, "-n", "2", sys.executable, "-m", "dlrm_tvm", "mpi-probe",
                      "--json", str(Path(tmp) / "probe.json")], 600, env)
            del p
            probe = json.loads((Path(tmp) / "probe.json").read_text())
    return {"config": cfg.to_dict(), "name": cfg.name, "cores": cores, "rows": rows,
            "mpi_probe": probe}


def _with_steps(cfg: Config, steps: int):
    import dataclasses

    return dataclasses.replace(cfg.train, steps=steps)


def _row(n: int, threads: int, s: dict, wall: float) -> dict:
    ex = s.get("exchanges", {})
    exposed = sum(e["exposed_ms"] for e in ex.values())
    per_rank = [sum(d.values()) for d in s.get("per_rank_exposed_ms", [])]
    overlapped = sum(e["overlapped_ms"] for e in ex.values())
    step = s["ms_per_step_median"]
    return {
        "ranks": n, "threads_per_rank": threads, "ms_per_step": step,
        "compute_ms": step - exposed, "exposed_comm_ms": exposed,
        # the rank that waited least: closest to the exchanges' own cost (the others also wait
        # for a slower peer)
        "exposed_min_rank_ms": min(per_rank) if per_rank else exposed,
        "overlapped_comm_ms": overlapped,
        "exposed_share": exposed / step if step else None,
        "bytes_per_rank": {k: e["bytes_per_rank"] for k, e in ex.items()},
        "exchanges": ex, "phases_ms": s.get("phases_ms", {}), "final_loss": s["final_loss"],
        "wall_s": wall,
    }


def efficiency(base: dict, row: dict) -> float:
    """Core-time efficiency of ``row`` against ``base``: 1 when N times the cores give N times
    the speed; with the same cores (1 x 2 threads vs 2 x 1), simply the speed ratio."""
    cb = base["ranks"] * base["threads_per_rank"]
    cr = row["ranks"] * row["threads_per_rank"]
    return (base["ms_per_step"] * cb) / (row["ms_per_step"] * cr)


# --------------------------------------------------------------------------- the model
def _busiest_share(cfg: Config, n: int) -> float:
    """Fraction of all lookups the busiest of ``n`` ranks serves, from the real plan."""
    from dlrm_tvm.runtime.sharding import plan_shards

    m, d = cfg.model, cfg.data
    look = d.mean_bag_sizes(m.table_rows)  # lookups per sample of each table
    plan = plan_shards(m.table_rows, m.embedding_dim, n, look,
                       min_parts=1 if n <= m.num_tables else n)
    load = [0.0] * n
    for s in plan.shards:
        load[s.rank] += look[s.table] * s.rows / m.table_rows[s.table]
    return max(load) / sum(look)


def _mlp_flops(cfg: Config, batch: int) -> tuple[float, float]:
    """(bottom MLP forward FLOPs, all MLP forward+backward FLOPs) for ``batch`` samples."""
    m = cfg.model
    bot = sum(2 * batch * k * n for k, n in m.bot_layers)
    top = sum(2 * batch * k * n for k, n in m.top_layers)
    return bot, 3 * (bot + top)


def predict(cfg: Config, measured_1: dict, lat_s: float, bw_Bps: float,
            sockets=SOCKETS, weak: bool = False, allreduce_bw_Bps: float | None = None,
            compute_speedup: float = 1.0) -> list:
    """Predicted step per socket count (see the module docstring). ``measured_1``: the 1-rank
    row of ``measure_ranks`` for ``cfg`` (its phases at the config's batch);
    ``compute_speedup``: a socket computes this much faster than the measured run."""
    m, d = cfg.model, cfg.data
    ph = measured_1["phases_ms"]
    B0 = cfg.train.batch_size
    emb1 = (ph.get("embedding_forward", 0) + ph.get("embedding_update", 0)) / 1e3
    dense1 = (ph.get("dense_forward_backward", 0) + ph.get("dense_update", 0)) / 1e3
    # the rest of the measured step (input checks, tensor set-up): a fixed cost per step
    other = max(0.0, measured_1["ms_per_step"] / 1e3 - emb1 - dense1)
    emb1, dense1, other = (x / compute_speedup for x in (emb1, dense1, other))
    bot_f, all_f = _mlp_flops(cfg, B0)
    look_per_sample = sum(d.mean_bag_sizes(m.table_rows))
    mlp_bytes = 4 * m.mlp_param_count()
    arbw = allreduce_bw_Bps or bw_Bps
    out = []
    base = None
    for n in sockets:
        G = B0 * n if weak else B0
        Bl = G / n
        dense = dense1 * Bl / B0
        emb = emb1 * (G / B0) * _busiest_share(cfg, n)
        f = (n - 1) / n
        a2a = (lambda nbytes, n=n: (n - 1) * lat_s + nbytes / bw_Bps) if n > 1 else \
            (lambda nbytes: 0.0)
        inp = a2a(f * (Bl * look_per_sample * 8 + Bl * m.num_tables * 8))
        pooled_bytes = f * Bl * m.num_tables * m.embedding_dim * 4
        outd = a2a(pooled_bytes)
        gradd = a2a(pooled_bytes)
        ar = 2 * (n - 1) * lat_s + 2 * f * mlp_bytes / arbw if n > 1 else 0.0
        bot_fwd = dense * bot_f / all_f
        window = dense * (2 / 3) + emb * 0.5  # the backward, and the sparse update
        exposed = inp + max(0.0, outd - bot_fwd) + gradd + max(0.0, ar - window)
        rest = other * Bl / B0  # per-sample work: input checks, tensor set-up
        step = dense + emb + rest + exposed
        if base is None:
            base = step
        eff = (base / step) if weak else base / (n * step)
        out.append({"sockets": n, "global_batch": int(G), "step_ms": step * 1e3,
                    "compute_ms": (dense + emb + rest) * 1e3,
                    "exposed_comm_ms": exposed * 1e3,
                    "comm_total_ms": (inp + outd + gradd + ar) * 1e3,
                    "efficiency": eff,
                    "samples_per_s": G / step})
    return out


def model_tables(cfg: Config, result: dict, net_bw_gbs: float = 12.5,
                 net_lat_us: float = 2.0, socket_cores: int = 28) -> dict:
    """The model's tables: measured network (this machine's shared memory), the assumed
    fabric, and the assumed fabric with sockets of ``socket_cores`` cores computing
    socket_cores / (cores measured) times faster (an assumption: linear in cores)."""
    one = next((r for r in result["rows"] if r["ranks"] == 1), None)
    if one is None:
        return {}
    fabric = (net_lat_us * 1e-6, net_bw_gbs * 1e9, net_bw_gbs * 1e9)
    nets = {"assumed fabric": fabric}
    p = result.get("mpi_probe")
    if p:
        nets["measured here (shm)"] = (p["alltoall_latency_s"], p["alltoall_bandwidth_Bps"],
                                       p["allreduce_bandwidth_Bps"])
    measured_cores = one["ranks"] * one["threads_per_rank"]
    speedup = max(1.0, socket_cores / measured_cores)
    scenarios = [(name, net, 1.0) for name, net in nets.items()]
    scenarios.append((f"fabric, {socket_cores}-core sockets", fabric, speedup))
    tables = {}
    for name, (lat, bw, arbw), sp in scenarios:
        for kind in ("strong", "weak"):
            tables[f"{kind} / {name}"] = predict(cfg, one, lat, bw, weak=kind == "weak",
                                                 allreduce_bw_Bps=arbw, compute_speedup=sp)
    nets[f"fabric, {socket_cores}-core sockets"] = fabric
    two = next((r for r in result["rows"] if r["ranks"] == 2), None)
    validation = None
    if p and two:
        # the measured 2-rank run against the model of it: 2 ranks with that run's share of
        # the cores, on the probed network
        sp = (two["threads_per_rank"]) / measured_cores
        pred = predict(cfg, one, p["alltoall_latency_s"], p["alltoall_bandwidth_Bps"],
                       sockets=(1, 2), allreduce_bw_Bps=p["allreduce_bandwidth_Bps"],
                       compute_speedup=sp)[1]
        validation = {"predicted_ms": pred["step_ms"], "measured_ms": two["ms_per_step"],
                      "predicted_exposed_ms": pred["exposed_comm_ms"],
                      "measured_exposed_ms": two["exposed_comm_ms"],
                      "measured_exposed_min_rank_ms": two.get("exposed_min_rank_ms")}
    return {"networks": {k: {"latency_us": v[0] * 1e6, "bandwidth_GBps": v[1] / 1e9,
                             "allreduce_bandwidth_GBps": v[2] / 1e9} for k, v in nets.items()},
            "tables": tables, "validation": validation}


def format_ranks(result: dict) -> str:
    lines = [f"rank scaling  {result['name']}  {result['cores']} cores (each rank gets its "
             f"share); exposed: mean over ranks of the time waiting on exchanges, (least): "
             f"the rank that waited least (the others also wait for a slower peer)", ""]
    base = result["rows"][0]["ms_per_step"] if result["rows"] else None
    lines.append(f"{'ranks x threads':<16} {'ms/step':>9} {'compute':>9} {'exposed':>9} "
                 f"{'(least)':>9} {'overlap':>9} {'exp.share':>9} {'speed':>9}  "
                 f"bytes/rank per step")
    for r in result["rows"]:
        b = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(r["bytes_per_rank"].items())
                      if v >= 1e3) or "-"
        lines.append(f"{r['ranks']:>5} x {r['threads_per_rank']:<8} {r['ms_per_step']:9.2f} "
                     f"{r['compute_ms']:9.2f} {r['exposed_comm_ms']:9.2f} "
                     f"{r['exposed_min_rank_ms']:9.2f} {r['overlapped_comm_ms']:9.2f} "
                     f"{100 * (r['exposed_share'] or 0):8.1f}% "
                     f"{base / r['ms_per_step']:8.2f}x  {b}")
    if len(result["rows"]) > 1:
        b0 = result["rows"][0]
        lines.append("core-time efficiency vs the first row: " + ", ".join(
            f"{r['ranks']}x{r['threads_per_rank']} {100 * efficiency(b0, r):.0f}%"
            for r in result["rows"][1:]))
    p = result.get("mpi_probe")
    if p:
        lines.append("")
        lines.append(f"MPI probe (2 ranks): alltoall {p['alltoall_latency_s'] * 1e6:.1f} us + "
                     f"{p['alltoall_bandwidth_Bps'] / 1e9:.2f} GB/s; allreduce "
                     f"{p['allreduce_latency_s'] * 1e6:.1f} us + "
                     f"{p['allreduce_bandwidth_Bps'] / 1e9:.2f} GB/s")
    mod = result.get("model")
    if mod and mod.get("validation"):
        v = mod["validation"]
        lines.append(f"model check, 2 ranks here: predicted {v['predicted_ms']:.1f} ms/step "
                     f"(exposed {v['predicted_exposed_ms']:.1f}), measured "
                     f"{v['measured_ms']:.1f} (exposed: mean {v['measured_exposed_ms']:.1f}, "
                     f"least-waiting rank {v['measured_exposed_min_rank_ms']:.1f})")
    if mod:
        for name, rows in mod["tables"].items():
            lines.append("")
            lines.append(f"model, {name} scaling:")
            lines.append(f"{'sockets':>8} {'batch':>8} {'ms/step':>9} {'compute':>9} "
                         f"{'exposed':>9} {'comm':>9} {'eff.':>7}")
            for r in rows:
                lines.append(f"{r['sockets']:>8} {r['global_batch']:>8} {r['step_ms']:9.2f} "
                             f"{r['compute_ms']:9.2f} {r['exposed_comm_ms']:9.2f} "
                             f"{r['comm_total_ms']:9.2f} {100 * r['efficiency']:6.1f}%")
    return "\n".join(lines)


def plot_scaling(results: list[dict], path: str | Path, measured_extra: list[dict] = ()) -> None:
    """Efficiency vs sockets (model curves) with the measured points, one panel per config."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.2), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for name, rows in res.get("model", {}).get("tables", {}).items():
            ax.plot([r["sockets"] for r in rows], [100 * r["efficiency"] for r in rows],
                    marker="o", ms=3, label=f"model: {name}")
        for src in (res, *[e for e in measured_extra if e.get("name") == res["name"]]):
            rows = src["rows"]
            if len(rows) < 2:
                continue
            b = rows[0]
            xs = [r["ranks"] for r in rows]
            ys = [100 * efficiency(b, r) for r in rows]
            ax.plot(xs, ys, "k*" if src is res else "rs", ms=9,
                    label=f"measured core-time efficiency ({src.get('machine', 'this VM')})")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("sockets (ranks)")
        ax.set_ylabel("scaling efficiency %")
        ax.set_ylim(0, 110)
        ax.set_title(res["name"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
