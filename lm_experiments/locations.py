"""Where the configs are read from and where runs and caches are written.

In a checkout the project root (the folder holding ``pyproject.toml`` and ``conf/``) is home: runs
go to ``<root>/logs``, the ``datasets`` cache to ``<root>/.cache`` (lightning-hydra-template's
layout). Installed from a wheel, the configs ship inside the package (``lm_experiments/conf``)
and runs go to the user's data directory, caches to the user's cache directory (platformdirs,
as ``datasets`` and pip do). ``LM_EXPERIMENTS_HOME=DIR`` puts both under DIR. Never the current
directory: a command gives the same layout wherever it is typed.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PACKAGE = Path(__file__).resolve().parent
APP = "lm-experiments"
#: in a failed job's run directory: why it failed (runtime/hydra_callbacks.py writes it, the
#: comparison report reads it)
ERROR_FILE = "error.txt"


def checkout_root() -> Path | None:
    """The project root when the package runs from a source checkout, else None."""
    root = PACKAGE.parent
    return root if (root / "pyproject.toml").is_file() and (root / "conf").is_dir() else None


def conf_dir() -> str:
    """The config folder: ``conf/`` of the checkout, or the copy shipped in the wheel."""
    installed = PACKAGE / "conf"
    root = checkout_root()
    return str(root / "conf" if root is not None else installed)


def home() -> str:
    """Runs (``logs/``) go under this folder."""
    if os.environ.get("LM_EXPERIMENTS_HOME"):
        return str(Path(os.environ["LM_EXPERIMENTS_HOME"]).expanduser().resolve())
    root = checkout_root()
    return str(root if root is not None else platformdirs.user_data_path(APP))


def cache_home() -> str:
    """Tokenized and generated corpora (``datasets``' cache) go under this folder."""
    if os.environ.get("LM_EXPERIMENTS_HOME") or checkout_root() is not None:
        return str(Path(home()) / ".cache")
    return str(platformdirs.user_cache_path(APP))
