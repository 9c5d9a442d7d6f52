"""``dlrm-tvm train --mlperf-logging [PATH]``: an MLPerf Training log (MLLOG lines) of the run.

The lines are written with the mlperf-logging package's ``mllog`` (``pip install
mlperf-logging==4.1.68``, in the ``test`` extra); it is imported only when the flag is given,
and a run that asks for the log without the package is refused at its start (exit status 2).
Only rank 0 writes.

The keys are those the DLRM-DCNv2 rules of the compliance checker require
(``mlperf_logging/compliance_checker/training_6.0.0/``: common.yaml, {open,closed}_common.yaml,
{open,closed}_dlrm_dcnv2.yaml), in this order::

    cache_clear, init_start, submission_* (benchmark dlrm_dcnv2, org, division, status,
    platform), global_batch_size, gradient_accumulation_steps, seed, opt_name,
    opt_base_learning_rate, opt_weight_decay, opt_learning_rate_warmup_steps,
    opt_learning_rate_decay_start_step, opt_learning_rate_decay_steps, the opt_adagrad_* fields
    (Adagrad optimizers), train_samples, eval_samples, init_stop, run_start,
    then per block of training: block_start, epoch_start/epoch_stop at epoch boundaries,
    block_stop, eval_start, eval_stop, eval_accuracy (the AUC), and at the end run_stop with
    status success (the run finished; with --target-auc: reached it) or aborted (target
    missed, diverged, interrupted or failed).

Every value is the run's own: a run that is not MLPerf's closed DLRM-DCNv2 (other optimizer,
shapes, held-out set or AUC) logs what it is, and the closed rules then fail on it; the default
division is therefore ``open``. Epochs: Criteo/binary data: the training rows over the global
batch; synthetic data (no epoch of its own): ``--eval-every`` steps (else the whole run).
A block is the steps between two evaluations. ``epoch_num`` of an evaluation and
``first_epoch_num`` of a block are the epochs trained so far (fractional), ``epoch_num`` of an
epoch mark its 0-based index; every mark also carries ``samples_count`` (samples trained).
``cache_clear`` is logged False: dlrm-tvm does not drop the page cache itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from dlrm_tvm.config import OPTIMIZER_EPS, Config, ConfigError
from dlrm_tvm.rundir import open_run_file

RULESET = "6.0.0"  # the newest training ruleset of mlperf-logging 4.1.68 with dlrm_dcnv2
BENCHMARK = "dlrm_dcnv2"
DIVISIONS = ("open", "closed")
STATUS = "research"  # submission_status: not a product on sale (onprem/cloud/preview)
CLOSED_EVAL_SAMPLES = 89_137_319  # closed_dlrm_dcnv2.yaml: the whole evaluation set
CLOSED_TARGET_AUC = 0.80275
INSTALL = "python -m pip install mlperf-logging==4.1.68"


def require() -> None:
    """Refuse (ConfigError, exit status 2) when the mlperf-logging package is missing."""
    try:
        importlib.import_module("mlperf_logging.mllog")
    except ImportError:
        raise ConfigError(f"--mlperf-logging writes its MLLOG lines with the mlperf-logging "
                          f"package, which is not installed: {INSTALL} (it is in the test "
                          f"extra, pip install -e '.[test]')") from None


def now_ms() -> float:
    return time.time() * 1e3


def host_cpu() -> str:
    """The host CPU's model name (/proc/cpuinfo), for the default submission_platform."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def default_platform(ranks: int) -> str:
    return f"{ranks}x{host_cpu()}"


def closed_deviations(cfg: Config, eval_samples: int, target_auc: float | None) -> list[str]:
    """Why this run cannot pass the closed DLRM-DCNv2 rules (empty: it may)."""
    t = cfg.train
    why = []
    if t.optimizer != "adagrad":
        why.append(f"opt_name {t.optimizer} (closed: adagrad)")
    if t.lr_num_warmup_steps or t.lr_decay_start_step or t.lr_num_decay_steps:
        why.append("learning-rate warm-up/decay (closed: none)")
    if eval_samples != CLOSED_EVAL_SAMPLES:
        why.append(f"eval_samples {eval_samples} (closed: {CLOSED_EVAL_SAMPLES})")
    if target_auc is None or target_auc < CLOSED_TARGET_AUC:
        why.append(f"target AUC {target_auc} (closed: >= {CLOSED_TARGET_AUC})")
    return why


@dataclass
class Submission:
    org: str | None = None  # default "dlrm-tvm"
    platform: str | None = None  # default "<ranks>x<CPU model name>"
    division: str = "open"
    status: str = STATUS


class MlperfLog:
    """The MLLOG file of one run (rank 0). ``epoch_steps``: steps per epoch; ``block_steps``:
    steps between evaluations (0: one block, the whole run)."""

    def __init__(self, path: str | Path, cfg: Config, steps: int, epoch_steps: int,
                 block_steps: int, sub: Submission, ranks: int = 1):
        from mlperf_logging.mllog import constants, mllog

        if sub.division not in DIVISIONS:
            raise ConfigError(f"--mlperf-division must be one of {DIVISIONS}, got "
                              f"{sub.division!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.cfg, self.steps, self.ranks, self.sub = cfg, steps, ranks, sub
        self.B = cfg.train.batch_size
        self.E = max(1, int(epoch_steps))
        self.block_steps = int(block_steps)
        self._c = constants
        self._logger = logging.getLogger(f"dlrm_tvm.mllog.{id(self)}")
        self._logger.propagate = False
        self._logger.setLevel(logging.INFO)
        # never written through a symbolic link (refused, named)
        self._stream = os.fdopen(open_run_file(self.path), "w")
        self._handler = logging.StreamHandler(self._stream)
        self._handler.setFormatter(logging.Formatter("%(message)s"))
        self._logger.addHandler(self._handler)
        self._ml = mllog.MLLogger(logger=self._logger, default_stack_offset=2,
                                  root_dir=str(Path(__file__).resolve().parent.parent))
        self.in_block, self.block_first = False, 0
        self.in_epoch: int | None = None
        self.stopped = False

    # -------------------------------------------------------------------- lines
    def _ev(self, key, value=None, meta=None, time_ms=None):
        self._ml.event(key=key, value=value, metadata=meta, time_ms=time_ms)

    def _start(self, key, value=None, meta=None, time_ms=None):
        self._ml.start(key=key, value=value, metadata=meta, time_ms=time_ms)

    def _end(self, key, value=None, meta=None, time_ms=None):
        self._ml.end(key=key, value=value, metadata=meta, time_ms=time_ms)

    def _at(self, step: int) -> dict:
        return {self._c.SAMPLES_COUNT: step * self.B}

    # -------------------------------------------------------------------- the run
    def begin(self, init_ms: float | None, seed: int, train_samples: int,
              eval_samples: int) -> None:
        """Everything up to run_start: init_start (at ``init_ms``, when the run's set-up
        began), the submission fields, hyper-parameters and data sizes, init_stop."""
        c, t = self._c, self.cfg.train
        init_ms = int(init_ms if init_ms is not None else now_ms())
        self._ev(c.CACHE_CLEAR, False, time_ms=init_ms)
        self._start(c.INIT_START, time_ms=init_ms)
        self._ev(c.SUBMISSION_BENCHMARK, BENCHMARK)
        self._ev(c.SUBMISSION_ORG, self.sub.org or "dlrm-tvm")
        self._ev(c.SUBMISSION_DIVISION, self.sub.division)
        self._ev(c.SUBMISSION_STATUS, self.sub.status)
        self._ev(c.SUBMISSION_PLATFORM, self.sub.platform or default_platform(self.ranks))
        self._ev(c.GLOBAL_BATCH_SIZE, self.B)
        self._ev(c.GRADIENT_ACCUMULATION_STEPS, 1)
        self._ev(c.SEED, seed)
        self._ev(c.OPT_NAME, t.optimizer)
        self._ev(c.OPT_BASE_LR, t.learning_rate)
        self._ev(c.OPT_WEIGHT_DECAY, 0)
        self._ev(c.OPT_LR_WARMUP_STEPS, t.lr_num_warmup_steps)
        self._ev(c.OPT_LR_DECAY_START_STEP, t.lr_decay_start_step)
        self._ev(c.OPT_LR_DECAY_STEPS, t.lr_num_decay_steps)
        if t.optimizer in OPTIMIZER_EPS:  # the Adagrads: torch.optim.Adagrad's other fields
            self._ev(c.OPT_ADAGRAD_LR_DECAY, 0)
            self._ev(c.OPT_ADAGRAD_INITIAL_ACCUMULATOR_VALUE, 0)
            self._ev(c.OPT_ADAGRAD_EPSILON, OPTIMIZER_EPS[t.optimizer])
        self._ev(c.TRAIN_SAMPLES, int(train_samples))
        self._ev(c.EVAL_SAMPLES, int(eval_samples))
        self._end(c.INIT_STOP)
        self._start(c.RUN_START)

    def step_begin(self, s: int) -> None:
        """Before 0-based step ``s``: a block_start after an evaluation (or at the first
        step), an epoch_start at an epoch's first step."""
        c = self._c
        if not self.in_block:
            n = min(self.block_steps or self.steps, self.steps - s) or 1
            self._start(c.BLOCK_START, meta={c.FIRST_EPOCH_NUM: s / self.E,
                                             c.EPOCH_COUNT: n / self.E, **self._at(s)})
            self.in_block, self.block_first = True, s
        if self.in_epoch is None:
            self.in_epoch = s // self.E
            self._start(c.EPOCH_START, meta={c.EPOCH_NUM: self.in_epoch, **self._at(s)})

    def step_end(self, done: int) -> None:
        if self.in_epoch is not None and done % self.E == 0:
            self._end_epoch(done)

    def _end_epoch(self, done: int) -> None:
        self._end(self._c.EPOCH_STOP, meta={self._c.EPOCH_NUM: self.in_epoch, **self._at(done)})
        self.in_epoch = None

    def _end_block(self, done: int) -> None:
        if self.in_block:
            self._end(self._c.BLOCK_STOP, meta={self._c.FIRST_EPOCH_NUM: self.block_first / self.E,
                                                **self._at(done)})
            self.in_block = False

    def eval_begin(self, step: int) -> None:
        self._end_block(step)
        self._start(self._c.EVAL_START, meta={self._c.EPOCH_NUM: step / self.E,
                                              **self._at(step)})

    def eval_end(self, step: int, auc: float) -> None:
        c = self._c
        meta = {c.EPOCH_NUM: step / self.E, **self._at(step)}
        self._end(c.EVAL_STOP, meta=meta)
        self._ev(c.EVAL_ACCURACY, float(auc), meta=meta)

    def stop(self, status: str, step: int) -> None:
        """run_stop with ``status`` ("success" or "aborted"), once; closes an open block and
        epoch first."""
        if self.stopped:
            return
        if self.in_epoch is not None:
            self._end_epoch(step)
        self._end_block(step)
        self._end(self._c.RUN_STOP, meta={self._c.STATUS: status, **self._at(step)})
        self.stopped = True

    def close(self, step: int) -> None:
        """run_stop aborted unless stopped already (an exception left the loop); the file."""
        try:
            self.stop(self._c.ABORTED, step)
        finally:
            self._logger.removeHandler(self._handler)
            self._handler.close()
            self._stream.close()


def open_run_log(opts, cfg: Config, source, steps: int, ranks: int) -> MlperfLog:
    """The log of a run of ``train._train_loop`` (``opts``: its RunOptions), written up to
    run_start: the epoch and the data sizes from ``source``."""
    B = cfg.train.batch_size
    rows = getattr(getattr(source, "train", None), "rows", None)  # Criteo/binary data
    epoch_steps = rows // B if rows else (opts.eval_every or steps)
    if hasattr(source, "held_out"):
        eval_samples = source.held_out.rows if source.held_out is not None else 0
    else:  # synthetic: the held-out stream's batches
        eval_samples = len(source.eval_batches(opts.eval_batches)) * B
    sub = Submission(org=opts.mlperf_org, platform=opts.mlperf_platform,
                     division=opts.mlperf_division)
    if sub.division == "closed":
        why = closed_deviations(cfg, eval_samples, opts.target_auc)
        if why:
            logging.getLogger("dlrm_tvm").warning(
                "--mlperf-division closed: this run is not MLPerf's closed DLRM-DCNv2 (%s); "
                "the log says so and the closed rules will fail on it", "; ".join(why))
    m = MlperfLog(opts.mlperf_log, cfg, steps, epoch_steps, opts.eval_every, sub, ranks)
    m.begin(opts.mlperf_init_ms, cfg.train.seed, rows if rows else steps * B, eval_samples)
    return m
