"""The one exception type a user is meant to read.

Anything the user can fix (a missing file, a bad option, a checkpoint that does not fit the
data) raises :class:`UserError` with one sentence naming the problem and the fix; the CLI prints
that sentence and exits non-zero instead of showing a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, explained in one line."""
