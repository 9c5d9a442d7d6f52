"""The ``dlrm-tvm`` command: parses arguments and calls one function per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from dlrm_tvm.config import (
    PRESETS,
    ConfigError,
    apply_overrides,
    auc_fraction,
    load_config,
    nonneg_int,
    positive_float,
    positive_int,
)

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
  dlrm-tvm eval --checkpoint runs/k --data criteo-kaggle --data-path data/kaggle --out runs/e
  dlrm-tvm export-onnx --checkpoint runs/k --out model.onnx --check
  dlrm-tvm plot runs/k
"""


def _threads_from_env() -> None:
    # TVM's pool otherwise takes half the hardware threads; must be set before TVM starts.
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def _add_config_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("config (a preset or TOML file, then the reference's flags)")
    g.add_argument("--config", default=None,
                   help=f"preset ({', '.join(PRESETS)}) or TOML file (default: tiny)")
    g.add_argument("--arch-sparse-feature-size", type=positive_int, help="embedding dim D")
    g.add_argument("--arch-embedding-size", help="rows per table, dash-separated: 1000-1000-...")
    g.add_argument("--arch-mlp-bot", help="bottom MLP incl. dense input width: 13-512-256-64")
    g.add_argument("--arch-mlp-top", help="top MLP without its input width: 512-256-1")
    g.add_argument("--arch-interaction-op", choices=("dot", "cat"))
    g.add_argument("--arch-interaction-itself", action="store_true", default=None,
                   help="include self dot products in the dot interaction")
    g.add_argument("--max-ind-range", type=positive_int, help="cap every table at this many rows")
    g.add_argument("--mini-batch-size", type=positive_int, help="batch size")
    g.add_argument("--learning-rate", type=positive_float, help="base learning rate (> 0)")
    g.add_argument("--lr-num-warmup-steps", type=nonneg_int, help="linear LR warmup (reference)")
    g.add_argument("--lr-decay-start-step", type=nonneg_int, help="polynomial decay starts here")
    g.add_argument("--lr-num-decay-steps", type=nonneg_int, help="decay length (0: no decay)")
    g.add_argument("--num-indices-per-lookup", type=positive_int,
                   help="lookups per bag (max if varied)")
    g.add_argument("--num-indices-per-lookup-fixed", type=int, choices=(0, 1),
                   help="1: every bag has exactly that many lookups; 0: sizes vary")
    g.add_argument("--precision", choices=("fp32", "bf16"),
                   help="bf16: bf16 GEMMs with Split-SGD-BF16 weights and tables (default fp32)")
    g.add_argument("--labels", choices=("random", "teacher"),
                   help="synthetic labels: random coin flips (reference) or a learnable teacher")
    g.add_argument("--optimizer", choices=("sgd", "rwsadagrad"),
                   help="sgd, or the reference's rwsadagrad: row-wise sparse Adagrad for the "
                        "tables, dense Adagrad for the MLPs (default sgd)")
    g.add_argument("--index-distribution", choices=("uniform", "zipf"),
                   help="synthetic indices: uniform (reference) or Zipf power law over rows")
    g.add_argument("--zipf-alpha", type=positive_float, help="Zipf exponent (default 1.05)")
    g.add_argument("--data", choices=("synthetic", "criteo-kaggle", "criteo-terabyte",
                                      "mlperf-bin"),
                   help="synthetic (default); criteo-kaggle / criteo-terabyte: raw train.txt "
                   "or day_N files (preprocessed into RUNDIR/data once) or a `dlrm-tvm "
                   "preprocess` directory; mlperf-bin: MLPerf binary files (40 int32 per row)")
    g.add_argument("--data-path", help="the data: file(s), comma-separated, or a directory")
    g.add_argument("--eval-data-path", help="mlperf-bin: held-out file(s) (criteo-*: the "
                   "preprocessed test split)")
    g.add_argument("--skip-bad-lines", action="store_true", default=None,
                   help="raw Criteo: skip malformed lines (counted in the summary) instead of "
                   "stopping at the first with its file and line")


def _resolve_config(args: argparse.Namespace, **extra):
    cfg = load_config(args.config)
    flags = {k: getattr(args, k, None) for k in (
        "arch_sparse_feature_size", "arch_embedding_size", "arch_mlp_bot", "arch_mlp_top",
        "arch_interaction_op", "arch_interaction_itself", "max_ind_range", "mini_batch_size",
        "learning_rate", "num_indices_per_lookup", "labels", "precision", "optimizer",
        "index_distribution", "zipf_alpha", "lr_num_warmup_steps", "lr_decay_start_step",
        "lr_num_decay_steps", "data", "data_path", "eval_data_path", "skip_bad_lines")}
    fixed = getattr(args, "num_indices_per_lookup_fixed", None)
    flags["num_indices_per_lookup_fixed"] = None if fixed is None else bool(fixed)
    flags.update(extra)
    return apply_overrides(cfg, **flags)


def _write_json(path: str | None, obj) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)


def _tuning(args) -> dict | None:
    if not getattr(args, "tuning", None):
        return None
    from dlrm_tvm.kernels import read_tuning

    return read_tuning(args.tuning)


def cmd_compile(args) -> int:
    from dlrm_tvm.artifact import compile_artifact
    from dlrm_tvm.targets import resolve_target

    cfg = _resolve_config(args)
    target = resolve_target(args.target)
    art = compile_artifact(cfg, target, args.out, prefer=tuple(args.rule or ()),
                           dump_dir=args.dump_ir, tuning=_tuning(args))
    print(f"compiled {cfg.name} for {target.name} (mcpu {target.mcpu}; features "
          f"{','.join(target.features) or '-'}) in "
          f"{sum(art.meta['compile_seconds'].values()):.1f}s -> {art.path}")
    rules: dict[str, int] = {}
    for v in art.meta["schedules"].values():
        key = f"{v['op']} -> {v['rule']}"
        rules[key] = rules.get(key, 0) + 1
    for k, n in sorted(rules.items()):
        print(f"  {n:3d} x {k}")
    if args.tuning:
        tuned = sum(1 for v in art.meta["schedules"].values() if v.get("params", {}).get("tuned"))
        print(f"  tuning record {args.tuning}: {tuned} kernel(s) scheduled with its tiles"
              + ("" if tuned else " (none of its kernels is in this config's step)"))
    return 0


def cmd_train(args) -> int:
    from dlrm_tvm.train import train

    if args.artifact and args.config is None:
        from dlrm_tvm.artifact import read_artifact

        base = read_artifact(args.artifact).config
        if args.precision and args.precision != base.train.precision:
            raise ValueError(f"the artifact was compiled for {base.train.precision}; "
                             f"recompile for --precision {args.precision}")
        if args.optimizer and args.optimizer != base.train.optimizer:
            raise ValueError(f"the artifact was compiled for --optimizer {base.train.optimizer}; "
                             f"recompile for --optimizer {args.optimizer}")
        cfg = apply_overrides(base, steps=args.steps, seed=args.seed,
                              learning_rate=args.learning_rate, labels=args.labels,
                              index_distribution=args.index_distribution,
                              zipf_alpha=args.zipf_alpha)
    else:
        cfg = _resolve_config(args, steps=args.steps, seed=args.seed)
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    dist = {"sharding": args.sharding, "rank_memory_gib": args.rank_memory_gib,
            "threads": args.threads, "comm_timeout": args.comm_timeout,
            "progress_thread": not args.no_progress_thread,
            "progress_poll_us": args.progress_poll_us}
    from dlrm_tvm.train import RunOptions

    opts = RunOptions(eval_every=args.eval_every, eval_batches=args.eval_batches,
                      final_eval=False if args.no_eval else (True if args.eval else None),
                      target_auc=args.target_auc,
                      checkpoint_every=args.checkpoint_every,
                      keep_checkpoints=args.keep_checkpoints,
                      resume=(args.out if args.resume == "auto" else args.resume),
                      init_from=args.init_from,
                      save_params=args.save_params,
                      final_checkpoint=not args.no_final_checkpoint,
                      overwrite=args.overwrite)
    if args.tuning and args.artifact:
        raise ValueError("--tuning applies when compiling: it has no effect on a given "
                         "--artifact (compile it with `dlrm-tvm compile --tuning`)")
    summary = train(cfg, args.out, artifact=args.artifact, target=args.target,
                    prefer=tuple(args.rule or ()), quiet=args.quiet, dist=dist, opts=opts,
                    tuning=_tuning(args))
    if summary.get("rank", 0) != 0:
        return 0  # only rank 0 reports
    ev = summary.get("eval")
    evs = (f"  held-out loss {ev['loss']:.5f} accuracy {ev['accuracy']:.4f} auc "
           f"{ev['auc']:.4f} ({ev['rows']} rows)") if ev else ""
    tgt = summary.get("target_auc")
    if tgt:
        r = tgt["reached"]
        evs += (f"  target auc {tgt['target']} reached at step {r['step']} after "
                f"{r['time_s']:.1f} s" if r else f"  target auc {tgt['target']} not reached")
    sps = summary["samples_per_s"]
    print(f"{summary['steps']} steps  final loss {summary['final_loss']:.5f}  "
          f"{summary['ms_per_step_median']:.2f} ms/step (median)  "
          f"{sps:.0f} samples/s{evs}  -> {args.out}/summary.json" if sps else
          f"{summary['steps']} steps  -> {args.out}/summary.json")
    return 0


def _bench_ranks(args, cfg) -> int:
    from dlrm_tvm.scaling import format_ranks, measure_ranks, model_tables, plot_scaling

    try:
        ranks = tuple(int(x) for x in args.ranks.split(","))
        assert ranks and min(ranks) > 0
    except (ValueError, AssertionError) as e:
        raise ValueError(f"--ranks takes rank counts such as 1,2; got {args.ranks!r}") from e
    res = measure_ranks(cfg, ranks, steps=args.steps, target=args.target,
                        sharding=args.sharding, threads_per_rank=args.threads_per_rank)
    res["model"] = model_tables(cfg, res, args.net_bandwidth_gbs, args.net_latency_us)
    print(format_ranks(res))
    _write_json(args.json, res)
    if args.plot:
        plot_scaling([res], args.plot)
        print(f"plot -> {args.plot}")
    return 0


def cmd_eval(args) -> int:
    from dlrm_tvm.evaluate import eval_checkpoint

    r = eval_checkpoint(args.checkpoint, _resolve_config(args), args.out, target=args.target,
                        save_predictions=args.save_predictions, eval_batches=args.eval_batches,
                        split=args.split)
    print(f"{r['rows']} rows  loss {r['loss']:.5f}  accuracy {r['accuracy']:.4f}  "
          f"auc {r['auc']:.5f}  -> {args.out}/summary.json")
    return 0


def cmd_preprocess(args) -> int:
    from dlrm_tvm.criteo import preprocess

    t0 = time.perf_counter()
    meta = preprocess(args.inputs, args.out, fmt=args.format,
                      max_ind_range=args.max_ind_range, remap=args.remap,
                      skip_bad_lines=args.skip_bad_lines, days=args.days)
    secs = time.perf_counter() - t0
    splits = {k: sum(b - a for _, a, b in v) for k, v in meta["splits"].items()}
    print(f"{meta['rows']} rows in {secs:.1f} s ({meta['rows'] / max(secs, 1e-9):.0f} rows/s); "
          f"skipped {meta['skipped']} bad lines, {meta['padded']} lines with missing trailing "
          f"fields read as empty; splits {splits}; ids {meta['id_mode']} -> {args.out}")
    _write_json(args.json, meta)
    return 0


def _export_state(args):
    from dlrm_tvm.state_io import load_state

    return load_state(args.checkpoint, _resolve_config(args))


def cmd_export_onnx(args) -> int:
    from dlrm_tvm.onnx_export import export_onnx

    cfg, state, desc = _export_state(args)
    path = export_onnx(cfg, state, args.out, opset=args.opset)
    print(f"ONNX model of {desc['path']} -> {path} (inputs dense [B, {cfg.model.num_dense}], "
          f"indices [nnz], offsets [{cfg.model.num_tables}*B+1]; output p [B])")
    if args.check:
        import onnxruntime as ort

        from dlrm_tvm.data import SyntheticData
        from dlrm_tvm.onnx_export import predict_numpy

        b = SyntheticData(cfg.model, cfg.data, 64, 0).next_batch()
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = sess.run(["p"], {"dense": b.dense, "indices": b.indices,
                               "offsets": b.offsets})[0]
        err = float(abs(got - predict_numpy(cfg, state, b)).max())
        print(f"onnxruntime vs NumPy on 64 synthetic rows: max difference {err:.2e}")
        if err > 1e-5:
            return 1
    return 0


def cmd_export_reference(args) -> int:
    from dlrm_tvm.interop import save_reference_checkpoint

    cfg, state, desc = _export_state(args)
    save_reference_checkpoint(args.out, cfg, state)
    print(f"{desc['path']} -> {args.out} (facebookresearch/dlrm layout: state_dict with "
          f"emb_l.*, bot_l.*, top_l.*; load it with its --load-model)")
    return 0


def cmd_plot(args) -> int:
    from dlrm_tvm.plot import plot_run

    path = plot_run(args.run_dir, args.out)
    print(f"plot -> {path}")
    return 0


def cmd_mpi_probe(args) -> int:
    from dlrm_tvm.runtime.distributed import probe_mpi

    r = probe_mpi()
    if r is not None:
        print(json.dumps({k: v for k, v in r.items() if k.endswith(("_s", "_Bps"))}, indent=1))
        _write_json(args.json, r)
    return 0


def cmd_bench(args) -> int:
    from dlrm_tvm.bench import format_table, run_bench

    # TVM's idle workers otherwise spin after each parallel call and slow torch (TVM_NOTES)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    cfg = _resolve_config(args)
    if args.ranks:
        return _bench_ranks(args, cfg)
    if args.loader:
        from dlrm_tvm.loader_bench import bench_loader, format_loader

        r = bench_loader(cfg, rows=args.loader_rows, steps=max(args.steps, 4),
                         target=args.target)
        print(format_loader(r))
        _write_json(args.json, r)
        return 0
    precs = tuple(p.strip() for p in args.precisions.split(",")) if args.precisions else (
        cfg.train.precision,)
    bad = [p for p in precs if p not in ("fp32", "bf16")]
    if bad:
        raise ValueError(f"--precisions takes fp32 and/or bf16, got {bad}")
    result = run_bench(cfg, steps=args.steps, warmup=args.warmup, target=args.target,
                       torch_baseline=not args.no_torch, precisions=precs,
                       torch_compile=not args.no_torch_compile, tuning=_tuning(args))
    print(format_table(result))
    _write_json(args.json, result)
    return 0


def cmd_kernels_list(args) -> int:
    from dlrm_tvm.kernels import format_list, list_kernels

    r = list_kernels(_resolve_config(args), args.target)
    print(format_list(r))
    _write_json(args.json, r)
    return 0


def _kernels_bench_embedding(args) -> int:
    from dlrm_tvm.embedding_bench import DEFAULT_CASES, bench_embedding, format_embedding

    cases = DEFAULT_CASES
    if args.shape:
        try:
            cases = tuple(tuple(int(x) for x in c.split(",")) for c in args.shape.split(";"))
            assert all(len(c) == 3 and min(c) > 0 for c in cases)
        except (ValueError, AssertionError) as e:
            raise ValueError(f"--shape for embedding ops expects ROWS,DIM,LOOKUPS_PER_BAG "
                             f"(several separated by ';'), got {args.shape!r}") from e
    dists = tuple(x.strip() for x in args.dist.split(","))
    bad = [x for x in dists if x not in ("uniform", "zipf")]
    if bad:
        raise ValueError(f"--dist takes uniform and/or zipf, got {bad}")
    r = bench_embedding(args.op, cases, dists, args.rule, args.optimizer or "sgd", args.dtype,
                        args.batch, args.reps, not args.no_torch, args.zipf_alpha or 1.05,
                        args.target)
    print(format_embedding(r))
    _write_json(args.json, r)
    return 0 if all(v.get("status") != "WRONG" for row in r["rows"]
                    for v in row["variants"].values()) else 1


def cmd_kernels_tune(args) -> int:
    from dlrm_tvm.kernels import format_sweep, sweep_gemms, tune_gemms

    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    cfg = _resolve_config(args)
    if cfg.train.precision != "bf16":
        raise ValueError("kernels tune searches the bf16 microkernel GEMMs: add --precision bf16")
    if args.budget_s <= 0:
        raise ValueError(f"--budget-s must be positive, got {args.budget_s}")
    print(f"tuning every packed bf16 GEMM of {cfg.name} on {args.target} within "
          f"{args.budget_s:.0f} s ...", flush=True)
    rec = tune_gemms(cfg, args.target, args.budget_s, args.reps,
                     log=lambda s: print(s, flush=True))
    _write_json(args.out, rec)
    print(f"wrote {args.out} ({len(rec['kernels'])} kernels, {rec['seconds']:.0f} s); use it "
          f"with `dlrm-tvm compile/train --tuning {args.out}`")
    if args.check:
        r = sweep_gemms(cfg, args.target, args.reps, torch_baseline=not args.no_torch,
                        tuning=rec)
        print(format_sweep(r))
        _write_json(args.json, r)
    return 0


def cmd_kernels_bench(args) -> int:
    from dlrm_tvm.kernels import bench_gemm, format_bench, format_sweep, sweep_gemms

    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    if args.op in ("embedding_bag_fwd", "embedding_bag_update"):
        return _kernels_bench_embedding(args)
    if args.op != "gemm":
        raise ValueError(f"kernels bench takes --op gemm, embedding_bag_fwd or "
                         f"embedding_bag_update, not {args.op!r}")
    if args.shape is None:
        if args.config is None:
            raise ValueError("give --shape M,K,N, or --config C for every GEMM of a config")
        r = sweep_gemms(_resolve_config(args), args.target, args.reps,
                        torch_baseline=not args.no_torch, tuning=_tuning(args))
        print(format_sweep(r))
        _write_json(args.json, r)
        return 0 if all(row["status"] != "WRONG" for row in r["rows"] + r["packs"]) else 1
    try:
        shape = tuple(int(x) for x in args.shape.split(","))
        assert len(shape) == 3 and min(shape) > 0
    except (ValueError, AssertionError) as e:
        raise ValueError(
            f"--shape expects M,K,N (three positive integers), got {args.shape!r}"
        ) from e
    r = bench_gemm(shape, args.layout, args.b_layout, args.epilogue, args.rule, args.target,
                   args.reps, torch_baseline=not args.no_torch,
                   dtype="bfloat16" if args.dtype == "bf16" else "float32")
    print(format_bench(r))
    _write_json(args.json, r)
    return 0 if all(row["status"] != "WRONG" for row in r["rows"]) else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dlrm-tvm", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Compile DLRM with Apache TVM for an x86 CPU, and train it.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compile", help="compile the training step into a loadable artifact",
                       description="Compile the DLRM training step for a CPU target and write "
                       "DIR/module.so + DIR/artifact.json (config, target, CPU features needed, "
                       "TVM version, schedule rule per kernel). Works for any target on any host.")
    _add_config_args(c)
    c.add_argument("--target", default="host",
                   help="host (this CPU's features) or a named CPU: skylake-avx512, cascadelake, "
                   "icelake-server, cooperlake, sapphirerapids, znver3/4/5 (default: host)")
    c.add_argument("--out", required=True, help="artifact directory")
    c.add_argument("--rule", action="append", help="prefer this schedule rule (repeatable)")
    c.add_argument("--tuning", metavar="FILE",
                   help="a tuning record from `dlrm-tvm kernels tune` (register tiles per GEMM; "
                        "recorded in artifact.json)")
    c.add_argument("--dump-ir", help="write the scheduled IR to this directory")
    c.set_defaults(func=cmd_compile)

    t = sub.add_parser("train", help="train on synthetic data (compiling first if needed)",
                       description="Train DLRM; writes RUNDIR/metrics.jsonl (one line per logged "
                       "step), RUNDIR/summary.json and RUNDIR/config.json. Without --artifact the "
                       "step is compiled for --target into RUNDIR/artifact.")
    _add_config_args(t)
    t.add_argument("--artifact", help="a directory from `dlrm-tvm compile` (must match config)")
    t.add_argument("--target", default="host", help="target to compile for (default: host)")
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
    e.add_argument("--eval-every", type=nonneg_int, default=0,
                   help="evaluate on the held-out split every K steps (loss, accuracy, exact "
                   "ROC AUC; to metrics.jsonl as lines with \"kind\": \"eval\") and at the end")
    e.add_argument("--eval-batches", type=positive_int, default=2,
                   help="synthetic data: batches in the held-out stream (default 2)")
    e.add_argument("--eval", action="store_true",
                   help="evaluate at the end (the default with real data, --eval-every or "
                   "--target-auc)")
    e.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    e.add_argument("--target-auc", type=auc_fraction,
                   help="stop when the held-out AUC reaches this (checked at --eval-every); "
                   "the summary records the step and time it took (0 < AUC <= 1)")
    e.add_argument("--checkpoint-every", type=nonneg_int, default=0,
                   help="write the whole training state to RUNDIR/checkpoints/ every K steps "
                   "and at the end (atomic: a kill mid-write keeps the previous one)")
    e.add_argument("--no-final-checkpoint", action="store_true",
                   help="do not write a checkpoint of the last step (by default every run "
                   "ends with one, so `eval`/`export-onnx --checkpoint RUNDIR` work)")
    e.add_argument("--overwrite", action="store_true",
                   help="replace a run already in --out (its metrics, summary and checkpoints "
                   "are deleted); without it such a directory is refused unless --resume")
    e.add_argument("--keep-checkpoints", type=positive_int, default=2,
                   help="how many checkpoints to keep (default 2)")
    e.add_argument("--init-from", metavar="CKPT",
                   help="start from the weights of a checkpoint (ours, or a facebookresearch/"
                   "dlrm torch.save file) at step 0 with fresh optimizer state")
    e.add_argument("--resume", nargs="?", const="auto",
                   help="continue from a checkpoint (a checkpoint dir, a checkpoints/ dir or a "
                   "run dir; without a value: --out's latest), bit-exactly, at any rank count")
    t.add_argument("--threads", type=positive_int,
                   help="TVM threads (per rank under mpiexec; default: "
                   "all cores, or the rank's share of its node's cores)")
    g = t.add_argument_group("distributed (under mpiexec -n N)")
    g.add_argument("--sharding", default="auto", choices=("auto", "table", "row"),
                   help="auto: whole tables balanced by memory + lookups, row ranges for a "
                   "table over a rank's budget; table: whole tables only; row: every table "
                   "cut into N row ranges (default auto)")
    g.add_argument("--rank-memory-gib", type=positive_float,
                   help="table memory one rank may hold (default: 80%% of the node's "
                   "available memory over its ranks)")
    g.add_argument("--comm-timeout", type=positive_float, default=300.0,
                   help="seconds an exchange may wait before the job is aborted (default 300)")
    g.add_argument("--no-progress-thread", action="store_true",
                   help="do not advance MPI from a background thread while compiled code runs")
    g.add_argument("--progress-poll-us", type=positive_float, default=50.0,
                   help="how often the progress thread tests pending exchanges (default 50 us)")
    t.set_defaults(func=cmd_train)

    b = sub.add_parser("bench", help="ms/step vs PyTorch in the same process, per-op breakdown",
                       description="Benchmark the compiled step against a PyTorch DLRM with the "
                       "same weights (eager fp32 and bf16 autocast), run side by side in one "
                       "process; prints medians, ratios, per-kernel times and GFLOP/s vs peak.")
    _add_config_args(b)
    b.add_argument("--target", default="host")
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
    g.add_argument("--sharding", default="auto", choices=("auto", "table", "row"))
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
    b.set_defaults(func=cmd_bench)

    ev = sub.add_parser("eval", help="evaluate a checkpoint (ours or the reference's) on "
                        "held-out data",
                        description="Load a checkpoint (a dlrm-tvm checkpoint or run directory, "
                        "or a facebookresearch/dlrm torch.save file), compile its model for "
                        "this CPU and evaluate every held-out row: RUNDIR/summary.json with loss, "
                        "accuracy, auc (exact ROC AUC), rows; --save-predictions adds "
                        "RUNDIR/predictions.npy, one probability per row in file order.")
    ev.add_argument("--checkpoint", required=True, metavar="CKPT")
    _add_config_args(ev)
    ev.add_argument("--out", required=True, metavar="RUNDIR")
    ev.add_argument("--target", default="host")
    ev.add_argument("--save-predictions", action="store_true")
    ev.add_argument("--eval-batches", type=positive_int, default=2,
                    help="synthetic data: held-out batches (default 2)")
    ev.add_argument("--split", choices=("test", "val", "train", "all"),
                    help="rows of a preprocessed directory to evaluate (default test); raw "
                    "and binary files are evaluated whole, in file order")
    ev.set_defaults(func=cmd_eval)

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
    pp.set_defaults(func=cmd_preprocess)

    xo = sub.add_parser("export-onnx", help="a checkpoint as an ONNX model (embedding bags "
                        "included)")
    xo.add_argument("--checkpoint", required=True, metavar="CKPT")
    _add_config_args(xo)
    xo.add_argument("--out", required=True, help="the .onnx file")
    xo.add_argument("--opset", type=positive_int, default=17,
                    help="ONNX opset version (default 17)")
    xo.add_argument("--check", action="store_true",
                    help="run it under onnxruntime against a NumPy forward pass")
    xo.set_defaults(func=cmd_export_onnx)

    xr = sub.add_parser("export-reference", help="a checkpoint in facebookresearch/dlrm's "
                        "torch.save layout (needs torch)")
    xr.add_argument("--checkpoint", required=True, metavar="CKPT")
    _add_config_args(xr)
    xr.add_argument("--out", required=True, help="the .pt file")
    xr.set_defaults(func=cmd_export_reference)

    pl = sub.add_parser("plot", help="draw a run's loss and AUC curves to a PNG",
                        description="Read RUNDIR/metrics.jsonl and draw the training loss and "
                        "the held-out loss, accuracy and AUC against the step.")
    pl.add_argument("run_dir", metavar="RUNDIR")
    pl.add_argument("--out", help="PNG path (default RUNDIR/curves.png)")
    pl.set_defaults(func=cmd_plot)

    mp = sub.add_parser("mpi-probe", help="alltoall/allreduce latency and bandwidth (run under "
                        "mpiexec -n N)")
    mp.add_argument("--json", help="also write the result as JSON here")
    mp.set_defaults(func=cmd_mpi_probe)

    kp = sub.add_parser("kernels", help="which schedule rule runs each kernel; race rules",
                        description="Experiment with schedules: list the rule chosen per kernel, "
                        "or benchmark candidate rules for one op against torch.")
    ksub = kp.add_subparsers(dest="kcmd", required=True)
    kl = ksub.add_parser("list", help="per kernel: the applicable rules and the one chosen")
    _add_config_args(kl)
    kl.add_argument("--target", default="host")
    kl.add_argument("--json", help="also write the table as JSON here")
    kl.set_defaults(func=cmd_kernels_list)
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
    _add_config_args(kb)
    kb.add_argument("--layout", default="mk", choices=("mk", "km"),
                    help="A as [M, K] (forward, input gradient) or [K, M] (weight gradient)")
    kb.add_argument("--b-layout", default="kn", choices=("kn", "nk"))
    kb.add_argument("--epilogue", default="none",
                    choices=("none", "bias", "bias_relu", "relu_mask"))
    kb.add_argument("--rule", action="append", help="candidate rule (repeatable; default: all)")
    kb.add_argument("--target", default="host")
    kb.add_argument("--reps", type=positive_int, default=10,
                    help="timed repetitions per candidate (default 10)")
    kb.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                    help="gemm: operand dtype (bf16: the AVX-512 BF16 rule where the CPU has "
                    "it); embedding ops: the table (bf16: Split-SGD-BF16 storage)")
    kb.add_argument("--no-torch", action="store_true")
    kb.add_argument("--json", help="also write the table as JSON here")
    kb.add_argument("--tuning", metavar="FILE",
                    help="--config: schedule with this tuning record (dlrm-tvm kernels tune)")
    kb.set_defaults(func=cmd_kernels_bench)
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
    kt.set_defaults(func=cmd_kernels_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    _threads_from_env()
    from dlrm_tvm.errors import EXIT_SIGINT, EXIT_USER_ERROR, DivergedError, RunInterrupted

    try:
        return args.func(args)
    except DivergedError as e:
        print(f"dlrm-tvm {args.cmd}: diverged: {e}", file=sys.stderr)
        return e.exit_code
    except (ConfigError, ValueError, RuntimeError, OSError) as e:
        if not getattr(e, "quiet", False):  # a distributed run's other ranks stay quiet
            print(f"dlrm-tvm {args.cmd}: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunInterrupted as e:
        print(f"interrupted by signal {e.signum}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGINT
