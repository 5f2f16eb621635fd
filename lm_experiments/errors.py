"""The one exception type a user is meant to read.

Anything the user can fix (a missing file, a bad option, a checkpoint that does not fit the
data) raises :class:`UserError` with one sentence naming the problem and the fix; the CLI prints
that sentence and exits non-zero instead of showing a traceback.


:class:`RunInterrupted` is the other ending a user reads: a signal stopped training after a
resumable checkpoint was saved. Both live here, free of any framework import, so the command line
can catch them before it imports Lightning.
"""

import signal


class UserError(Exception):
    """A problem with the user's input, explained in one line."""


class RunInterrupted(Exception):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, signum: int, ckpt_path: str | None, position: dict | None = None):
        self.signum, self.ckpt_path = signum, ckpt_path
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal"
        name = signal.Signals(signum).name
        where = (
            f" after batch {position['batches']} of epoch {position['epoch']}" if position else ""
        )
        if ckpt_path:
            message = (
                f"stopped by {name}{where}; resumable checkpoint: {ckpt_path} "
                f"(continue with ckpt_path={ckpt_path})"
            )
        else:
            message = f"stopped by {name}{where}; no checkpoint was written"
        super().__init__(message)
