"""Hydra callbacks (registered in ``conf/hydra/default.yaml`` under ``hydra.callbacks``); the
Lightning callbacks are beside this file (``signals.py``, ``divergence.py``).

:class:`ComparisonReport` writes the comparison report (``compare.py``) into the sweep directory
when a multirun ends. Two things in Hydra 1.3 make "when it ends" need care:

* a job that raises is recorded as FAILED (``JobReturn.status``) and the basic launcher goes on
  with the other jobs of the batch, but then the sweeper re-raises the job's exception, so
  ``on_multirun_end`` is never called and the process exits 1. The same happens with the Optuna
  sweeper once more trials fail than ``max_failure_rate`` allows, and on Ctrl-C.
* the exception itself goes nowhere near the job's directory (Hydra keeps it in memory), so a
  later ``python -m lm_experiments.compare`` could not say why a run has no ``metrics.json``.
* HydraConfig is set only inside each job, yet the sweep directory (and the Optuna storage) are
  resolved before the first job, through ``paths.root_dir = ${hydra:runtime.cwd}``: without a
  HydraConfig that fails, so ``on_multirun_start`` sets it from the multirun's config.

Hence: ``on_job_end`` writes ``error.txt`` (the one-line reason, then the traceback) into a failed
job's directory, and the report is written by ``on_multirun_end`` or, when the sweep is cut short,
by an ``atexit`` hook registered in ``on_multirun_start`` -- whichever comes first.

This module is imported by every run (Hydra instantiates callbacks in RUN mode too), so it
imports nothing heavy at the top.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from lm_experiments.errors import UserError
from lm_experiments.locations import ERROR_FILE
from lm_experiments.runtime.compat import job_exception

log = logging.getLogger(__name__)


def is_rank_zero() -> bool:
    """False in the other processes of a DDP job (one SLURM task per GPU, or Lightning's
    subprocesses), which share the run directory with rank 0."""
    return all(os.environ.get(var, "0") == "0" for var in ("SLURM_PROCID", "RANK", "LOCAL_RANK"))


def describe_failure(error: BaseException) -> str:
    """One line for the report (a UserError's message as it is), then the traceback."""
    if isinstance(error, UserError):
        line = str(error)
    else:
        line = "".join(traceback.format_exception_only(type(error), error)).strip()
    line = " ".join(line.split())  # one line, whatever the exception's text
    trace = "".join(traceback.format_exception(type(error), error, error.__traceback__))
    return f"{line}\n\n{trace}"


def finish_wandb_run(exit_code: int) -> None:
    """Close a W&B run a job left open (it raised before ``train.py`` finished it): otherwise the
    next job of the sweep would log into it (``wandb.init`` returns the active run)."""
    wandb = sys.modules.get("wandb")  # never import wandb for runs that did not use it
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


class ComparisonReport(Callback):
    """Writes ``comparison.{csv,md,png}`` into the sweep directory and prints the table."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra 1.3 sets HydraConfig only inside each job, but the sweep directory and the Optuna
        # storage are resolved before any job, through paths.root_dir = ${hydra:runtime.cwd}:
        # give the ${hydra:} resolver the multirun's own config until the first job replaces it
        if not HydraConfig.initialized():
            HydraConfig.instance().set_config(config)
        # the sweep directory exists before the sweeper starts: the Optuna study's SQLite file
        # lives beside it (conf/hparams_search), and SQLite does not create folders
        self.sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        if self.enabled:
            atexit.register(self._report)  # runs when a failed job aborts the sweep

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        failed = job_return.status == JobStatus.FAILED
        finish_wandb_run(exit_code=1 if failed else 0)
        if not failed or not is_rank_zero():
            return
        run_dir = Path(str(config.hydra.runtime.output_dir))
        error = job_exception(job_return)
        if error is not None:
            (run_dir / ERROR_FILE).write_text(describe_failure(error))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._report()

    def _report(self) -> None:
        if self.sweep_dir is None or not self.enabled:
            return
        sweep_dir, self.sweep_dir = self.sweep_dir, None  # once, whichever hook comes first
        from lm_experiments.compare import write_report

        try:
            write_report(sweep_dir)
        except Exception as err:  # the sweep's own result must not be lost to a report bug
            log.error("could not write the comparison report in %s: %s", sweep_dir, err)
