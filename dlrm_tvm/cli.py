"""The ``dlrm-tvm`` command: one function per subcommand, and ``main``.

The arguments of every subcommand are declared in cli_parser.py; ``build_parser`` here binds
them to these functions.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

from dlrm_tvm import cli_parser
from dlrm_tvm.config import ConfigError
from dlrm_tvm.config_io import CONFIG_FLAGS, apply_overrides, load_config


def _threads_from_env() -> None:
    # TVM's pool otherwise takes half the hardware threads; must be set before TVM starts.
    os.environ.setdefault("TVM_NUM_THREADS", str(os.cpu_count() or 1))


def _resolve_config(args: argparse.Namespace, **extra):
    """--config, then the config flags given (CONFIG_FLAGS), then ``extra``."""
    flags = {f.dest: getattr(args, f.dest, None) for f in CONFIG_FLAGS if f.cli}
    return apply_overrides(load_config(args.config), **{**flags, **extra})


def _write_json(path: str | None, obj) -> None:
    from dlrm_tvm.runtime.amx import emulated_instructions

    emulated = emulated_instructions()  # --emulate-amx: what the executor ran, in every table
    if emulated is not None and isinstance(obj, dict):
        print(f"emulated tile instructions: {emulated['total']} "
              f"({', '.join(f'{k} {v}' for k, v in emulated.items() if k != 'total') or '-'})")
        obj = {**obj, "emulated_tile_instructions": emulated}
    if path:
        from dlrm_tvm.targets import TargetInfo

        def resolved(o):  # an --emulate-amx target travels resolved: write its name
            if isinstance(o, TargetInfo):
                return o.name + (" (AMX emulated)" if o.emulate_amx else "")
            raise TypeError(f"{type(o).__name__} is not JSON serializable")
        with open(path, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=resolved)


def _tuning(args) -> dict | None:
    if not getattr(args, "tuning", None):
        return None
    from dlrm_tvm.tuning import read_tuning

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
    from dlrm_tvm.reference_cli import translate
    from dlrm_tvm.train import train

    ref = translate(args)  # facebookresearch/dlrm's flags, onto ours (or refused)
    from dlrm_tvm.runtime.comm import launched_ranks
    from dlrm_tvm.torchrec_cli import translate as translate_torchrec

    trc = translate_torchrec(args, launched_ranks())  # torchrec dlrm_main.py's, likewise
    if trc.epochs is not None and ref.epochs is not None:
        raise ValueError("give the reference's --nepochs/--num-batches or torchrec's "
                         "--epochs/--limit_train_batches, not both")
    if trc.epochs is not None:
        ref.epochs, ref.batches_per_epoch = trc.epochs, trc.batches_per_epoch
    for note in (*ref.notes, *trc.notes):
        logging.getLogger("dlrm_tvm").info("%s", note)
    if args.artifact and args.config is None:
        from dlrm_tvm.artifact import read_artifact

        base = read_artifact(args.artifact).config
        if args.precision and args.precision != base.train.precision:
            raise ValueError(f"the artifact was compiled for {base.train.precision}; "
                             f"recompile for --precision {args.precision}")
        if args.optimizer and args.optimizer != base.train.optimizer:
            raise ValueError(f"the artifact was compiled for --optimizer {base.train.optimizer}; "
                             f"recompile for --optimizer {args.optimizer}")
        # every config flag given applies (data, labels, learning rate...); one that changes
        # the compiled model or batch is refused when the artifact is loaded
        flags = {f.dest: getattr(args, f.dest, None) for f in CONFIG_FLAGS if f.cli}
        cfg = apply_overrides(base, **{**flags, "steps": args.steps, "seed": args.seed})
    else:
        cfg = _resolve_config(args, steps=args.steps, seed=args.seed)
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)
    from dlrm_tvm.launch import DistOptions

    dist = DistOptions(sharding=args.sharding, rank_memory_gib=args.rank_memory_gib,
                       threads=args.threads, comm_timeout=args.comm_timeout,
                       progress_thread=not args.no_progress_thread,
                       progress_poll_us=args.progress_poll_us)
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
                      overwrite=args.overwrite,
                      print_every=ref.print_every, print_time=ref.print_time,
                      epochs=ref.epochs, batches_per_epoch=ref.batches_per_epoch,
                      data_size=ref.data_size,
                      save_model=ref.save_model,
                      mlperf_log=(os.path.join(args.out, "mlperf.log")
                                  if args.mlperf_logging == "auto" else args.mlperf_logging),
                      mlperf_org=args.mlperf_org, mlperf_platform=args.mlperf_platform,
                      mlperf_division=args.mlperf_division)
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
    print(f"{summary['steps']} steps  last-batch loss {summary['final_loss']:.5f}  "
          f"loss(mean of last 10) {summary['mean_loss_last_10']:.5f}  "
          f"{summary['ms_per_step_median']:.2f} ms/step (median)  "
          f"{sps:.0f} samples/s{evs}  -> {args.out}/summary.json" if sps else
          f"{summary['steps']} steps  -> {args.out}/summary.json")
    if tgt and not tgt["reached"]:
        from dlrm_tvm.errors import EXIT_TARGET_MISSED

        return EXIT_TARGET_MISSED
    return 0


def _bench_ranks(args, cfg) -> int:
    from dlrm_tvm.bench.scaling import format_ranks, measure_ranks, model_tables, plot_scaling

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
                        split=args.split, no_labels=args.no_labels, progress=not args.quiet,
                        overwrite=args.overwrite)
    if args.no_labels:
        print(f"{r['rows']} rows predicted (no labels: no loss or AUC)  -> "
              f"{args.out}/predictions.txt, predictions.npy, summary.json")
        return 0
    print(f"{r['rows']} rows  loss {r['loss']:.5f}  accuracy {r['accuracy']:.4f}  "
          f"auc {r['auc']:.5f}  -> {args.out}/summary.json")
    return 0


def cmd_preprocess(args) -> int:
    from dlrm_tvm.data.criteo import preprocess

    t0 = time.perf_counter()
    meta = preprocess(args.inputs, args.out, fmt=args.format,
                      max_ind_range=args.max_ind_range, remap=args.remap,
                      skip_bad_lines=args.skip_bad_lines, days=args.days,
                      workers=args.workers, progress=not args.quiet)
    secs = time.perf_counter() - t0
    splits = {k: sum(b - a for _, a, b in v) for k, v in meta["splits"].items()}
    print(f"{meta['rows']} rows in {secs:.1f} s ({meta['rows'] / max(secs, 1e-9):.0f} rows/s); "
          f"skipped {meta['skipped']} bad lines, {meta['padded']} lines with missing trailing "
          f"fields read as empty; splits {splits}; ids {meta['id_mode']} -> {args.out}")
    _write_json(args.json, meta)
    return 0


def cmd_materialize_multihot(args) -> int:
    from dlrm_tvm.data.criteo.multihot_writer import materialize_multihot

    materialize_multihot(args.out, _resolve_config(args), days=args.days,
                         rows_per_day=args.rows_per_day, seed=args.seed,
                         from_binary=args.from_binary, overwrite=args.overwrite,
                         progress=not args.quiet)
    return 0


def _export_state(args):
    from dlrm_tvm.interop.state_io import load_state

    _refuse_output_into_input(args.out, args.checkpoint)
    return load_state(args.checkpoint, _resolve_config(args))


def _refuse_output_into_input(out, source) -> None:
    """An export's --out that is its --checkpoint, lies in a checkpoint it reads, or is one of
    a run directory's own files would overwrite what it reads or the run: refused
    (ValueError, exit 2). A new file beside them in the run directory is fine."""
    from pathlib import Path

    from dlrm_tvm.train import RUN_FILES

    o, c = Path(out).resolve(), Path(source).resolve()
    inside = c.is_dir() and c in o.parents
    ckpt = c / "checkpoints" if (c / "checkpoints").is_dir() else c
    if o == c or (inside and (ckpt == c or ckpt in o.parents or o == ckpt)) or \
            (o.parent == c and o.name in RUN_FILES):
        raise ValueError(f"--out {out} would overwrite the --checkpoint it reads ({source}) or "
                         f"one of its run's files: write the export elsewhere")


def cmd_export_onnx(args) -> int:
    from dlrm_tvm.interop.onnx_export import export_onnx

    cfg, state, desc = _export_state(args)
    path = export_onnx(cfg, state, args.out, opset=args.opset)
    print(f"ONNX model of {desc['path']} -> {path} (inputs dense [B, {cfg.model.num_dense}], "
          f"indices [nnz], offsets [{cfg.model.num_tables}*B+1]; output p [B])")
    if args.check:
        import onnxruntime as ort

        from dlrm_tvm.data import SyntheticData
        from dlrm_tvm.interop.onnx_export import predict_numpy

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
    from dlrm_tvm.interop.reference import save_reference_checkpoint

    cfg, state, desc = _export_state(args)
    save_reference_checkpoint(args.out, cfg, state)
    if cfg.model.interaction == "dcn":
        print(f"{desc['path']} -> {args.out} (facebookresearch/dlrm layout: state_dict with "
              f"emb_l.*, bot_l.*, top_l.*, and the cross layers as crossnet.* in torchrec's "
              f"LowRankCrossNet layout; dlrm_s_pytorch.py has no DCN interaction and cannot "
              f"load it, dlrm-tvm eval/export/--init-from can; for torchrec's DLRM_DCN use "
              f"export-torchrec)")
        return 0
    print(f"{desc['path']} -> {args.out} (facebookresearch/dlrm layout: state_dict with "
          f"emb_l.*, bot_l.*, top_l.*; load it with its --load-model)")
    return 0


def cmd_export_torchrec(args) -> int:
    from dlrm_tvm.interop.torchrec_export import check_exportable, save_torchrec_state_dict

    cfg, state, desc = _export_state(args)
    check_exportable(cfg.model)
    a = save_torchrec_state_dict(args.out, cfg, state)
    extra = (f", dcn_num_layers={a['dcn_num_layers']}, dcn_low_rank_dim={a['dcn_low_rank_dim']}"
             if "dcn_num_layers" in a else "")
    print(f"{desc['path']} -> {args.out} (torchrec {a['model']} state_dict: "
          f"{len(a['tables'])} tables t_cat_0.. of {a['tables'][0]['embedding_dim']} "
          f"(features cat_0..), dense_in_features={a['dense_in_features']}, "
          f"dense_arch_layer_sizes={a['dense_arch_layer_sizes']}, "
          f"over_arch_layer_sizes={a['over_arch_layer_sizes']}{extra}; the model returns the "
          f"logit: apply sigmoid for probabilities)")
    return 0


def cmd_plot(args) -> int:
    from dlrm_tvm.plot import plot_run

    path = plot_run(args.run_dir, args.out)
    print(f"plot -> {path}")
    return 0


def cmd_plan(args) -> int:
    from dlrm_tvm.plan import format_report, plan_report

    from dlrm_tvm.data.sources import needs_preprocess, sized_for_data

    cfg = _resolve_config(args)
    notes: list[str] = []
    if cfg.data.kind != "synthetic":  # the tables (and bag sizes) a run takes from the data
        if needs_preprocess(cfg):
            notes.append("raw Criteo files: the tables as configured (a run preprocesses them "
                         "first, then may take the tables' rows from the data)")
        else:
            cfg = sized_for_data(cfg, None, notes.append)
    rep = plan_report(cfg, args.ranks, args.sharding, args.rank_memory_gib)
    rep["notes"] = notes
    for n in notes:
        print(n)
    print(format_report(rep))
    _write_json(args.json, rep)
    return 0


def cmd_mpi_probe(args) -> int:
    from dlrm_tvm.runtime.mpi import probe_mpi

    r = probe_mpi()
    if r is not None:
        print(json.dumps({k: v for k, v in r.items() if k.endswith(("_s", "_Bps"))}, indent=1))
        _write_json(args.json, r)
    return 0


def cmd_bench(args) -> int:
    from dlrm_tvm.bench.step_bench import format_table, run_bench

    # TVM's idle workers otherwise spin after each parallel call and slow torch (TVM_NOTES)
    os.environ.setdefault("TVM_THREAD_POOL_SPIN_COUNT", "0")
    cfg = _resolve_config(args)
    if args.ranks:
        return _bench_ranks(args, cfg)
    if args.loader:
        from dlrm_tvm.bench.loader_bench import bench_loader, format_loader

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

    r = list_kernels(_resolve_config(args), args.target, prefer=tuple(args.rule or ()),
                     tuning=_tuning(args))
    print(format_list(r))
    _write_json(args.json, r)
    return 0


def _kernels_bench_embedding(args) -> int:
    from dlrm_tvm.bench.embedding_bench import DEFAULT_CASES, bench_embedding, format_embedding

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
    from dlrm_tvm.kernels import format_sweep, sweep_gemms
    from dlrm_tvm.tuning import tune_gemms

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


COMMANDS = {
    "compile": cmd_compile, "train": cmd_train, "bench": cmd_bench, "eval": cmd_eval,
    "preprocess": cmd_preprocess, "materialize-multihot": cmd_materialize_multihot,
    "export-onnx": cmd_export_onnx,
    "export-reference": cmd_export_reference, "export-torchrec": cmd_export_torchrec,
    "plot": cmd_plot, "plan": cmd_plan,
    "mpi-probe": cmd_mpi_probe,
    "kernels list": cmd_kernels_list, "kernels bench": cmd_kernels_bench,
    "kernels tune": cmd_kernels_tune,
}


def build_parser() -> argparse.ArgumentParser:
    """The ``dlrm-tvm`` parser (cli_parser.py), each subcommand bound to its function."""
    return cli_parser.build_parser(COMMANDS)


def _emulate_amx(args) -> None:
    """--emulate-amx: the target becomes its emulated form (targets.emulated_target, passed on
    as a resolved TargetInfo) and, for commands that run code, the software tile executor is
    installed before anything loads."""
    if not getattr(args, "emulate_amx", False):
        return
    from dlrm_tvm.targets import emulated_target

    if getattr(args, "ranks", None):
        raise ValueError("--emulate-amx with --ranks: run `mpiexec -n N dlrm-tvm train "
                         "--emulate-amx ...` for each rank count instead")
    if getattr(args, "artifact", None) is None:
        args.target = emulated_target(args.target)
    if args.cmd != "compile":
        from dlrm_tvm.runtime.amx import enable_emulation

        enable_emulation()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    _threads_from_env()
    from dlrm_tvm.errors import EXIT_SIGINT, EXIT_USER_ERROR, DivergedError, RunInterrupted

    try:
        _emulate_amx(args)
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
    except Exception as e:  # not a user error: a bug, reported as one (exit status 70)
        return _internal_error(args, e)


def _internal_error(args, e: Exception) -> int:
    """One line on stderr; the traceback in the run's train.log (where the run directory
    exists) and, under --verbose, on stderr."""
    import traceback

    from dlrm_tvm.errors import EXIT_INTERNAL

    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    where = ""
    out = getattr(args, "out", None)
    if args.cmd == "train" and out and os.path.isdir(out):
        from dlrm_tvm.rundir import open_run_file

        try:
            with os.fdopen(open_run_file(os.path.join(out, "train.log"), append=True), "a") as f:
                f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} ERROR internal error\n{tb}")
            where = f"; the traceback is in {os.path.join(out, 'train.log')}"
        except (ConfigError, OSError):
            pass
    one = " ".join(f"{type(e).__name__}: {e}".split())
    print(f"dlrm-tvm {args.cmd}: internal error: please report ({one}){where}",
          file=sys.stderr)
    if args.verbose:
        print(tb, file=sys.stderr, end="")
    return EXIT_INTERNAL
