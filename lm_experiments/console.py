"""A quiet console: what a run prints is the project's own output, each error once.

Removed here, each matched by its exact text so that nothing else is hidden:
Lightning's advertising tips (litlogger, litmodels), torch's ``LeafSpec`` deprecation warning that
Lightning's ``_pytree`` triggers on every fit and test, and wandb's ``anonymous setting`` warning,
which Lightning's ``WandbLogger`` causes by always passing ``anonymous=None`` (``loggers.py``).
Importing this module imports no framework: ``lm_experiments`` installs the filters on import, and
a command that stops at a configuration error should answer in a second, not after Lightning's
import.
"""

from __future__ import annotations

import logging
import warnings

TIPS = ("💡 Tip:",)
WARNINGS = (r"`isinstance\(treespec, LeafSpec\)` is deprecated",)


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(TIPS)


def quiet() -> None:
    """Install the filters (idempotent: the same filter objects are added at most once)."""
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
