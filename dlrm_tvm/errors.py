"""Errors a run can end with, and the exit status of each (documented in the README).

====  ===================================================================================
code  meaning
====  ===================================================================================
0     success
1     a check the command ran failed (a kernel WRONG in ``kernels bench``, ``export-onnx
      --check`` over tolerance)
2     a user error: bad config, flag, data, checkpoint, path or artifact (the message says
      which and why; nothing was changed that the message does not name)
3     training diverged: a non-finite loss or non-finite parameters; no checkpoint of the
      diverged state is written, the last good one stays (summary.json: status "diverged")
4     ``train --target-auc`` was given and the held-out AUC never reached it (the run itself
      finished and wrote everything)
70    an internal error: an exception dlrm-tvm did not expect ("internal error: please
      report" and the exception in one line; the traceback goes to the run's train.log, or
      to stderr with --verbose)
130   interrupted by SIGINT (Ctrl-C); metrics flushed, summary.json status "interrupted"
143   terminated by SIGTERM (e.g. a scheduler's time limit); handled as SIGINT
====  ===================================================================================
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_TARGET_MISSED = 4
EXIT_INTERNAL = 70  # sysexits.h EX_SOFTWARE
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class DivergedError(RuntimeError):
    """Training produced a non-finite loss or parameters (exit status 3)."""

    exit_code = EXIT_DIVERGED

    def __init__(self, message: str, step: int | None = None):
        super().__init__(message)
        self.step = step


class RunInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signum`` says which (exit status 128 + signum)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
