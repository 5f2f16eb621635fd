"""DDP under Hydra: each job of a sweep runs its own DDP world, and its ranks run that job.

Lightning's subprocess launcher starts ranks 1..N-1 by re-running this process's command line
plus ``hydra.run.dir=<run.dir>`` (lightning/fabric/strategies/launchers/subprocess_script.py,
``_hydra_subprocess_cmd``). Under ``-m`` that command line is the whole sweep, and
``hydra.run.dir`` is not the job's directory: every child would run the sweep again, in other
directories. And after a job, Lightning leaves LOCAL_RANK/MASTER_PORT/... in the environment
and the process group alive, so the next job of a sweep believes its processes were launched
externally and hangs. Here rank 0 hands its children the exact command line of its job (its
overrides, its run directory, ``hydra.mode=RUN``) through the environment, the child swaps it
in before Hydra parses anything, and each job ends by destroying its process group and
restoring the environment. A child exits 0 after an error or a signal that every rank met
(rank 0 reports it): a non-zero child makes Lightning's launcher kill rank 0, the sweep.
Use the basic launcher (jobs one after another) or submitit (SLURM starts the ranks; none
of this applies) for DDP sweeps; joblib's worker processes are not Hydra apps.

What is relied upon in Lightning's launcher is listed in ``compat.py``.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager

from lm_experiments.runtime.compat import LAUNCHER_ENV, launched_by_lightning

DDP_JOB = "LM_EXPERIMENTS_DDP_JOB"
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
_LAUNCH_KEYS = ("hydra.mode", "hydra.run.", "hydra.sweep.", "hydra.output_subdir", "hydra.job.num")
_LAUNCH_GROUPS = ("hydra/launcher", "hydra/sweeper", "hydra.launcher", "hydra.sweeper")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ddp_job_argv(argv: list[str] | None = None) -> list[str]:
    """The command line (after the program) that runs exactly the current Hydra job, in its run
    directory, as a single run: what the DDP ranks 1..N-1 of this job must execute."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    argv = sys.argv[1:] if argv is None else argv
    flags = []
    for i, arg in enumerate(argv):  # the config search path and name, as given
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            flags += [arg] if "=" in arg else argv[i : i + 2]
    kept = [
        o
        for o in hydra_cfg.overrides.hydra
        if not o.lstrip("~+").startswith(_LAUNCH_KEYS + _LAUNCH_GROUPS)
    ]
    return [
        *flags,
        *hydra_cfg.overrides.task,  # this job's overrides (a sweep's values for this job)
        *kept,
        f"hydra.run.dir={_quote(hydra_cfg.runtime.output_dir)}",
        "hydra.output_subdir=null",  # rank 0 writes .hydra/
        "hydra.mode=RUN",  # never the sweep again
    ]


def is_ddp_child() -> bool:
    """A rank > 0 process that Lightning's launcher started from one of our jobs (not a process
    that torchrun or SLURM started: those set no job of another process)."""
    parent = json.loads(os.environ.get(DDP_JOB, "{}")).get("parent", os.getpid())
    return parent != os.getpid() and launched_by_lightning()


def process_rank() -> int:
    """This process's global rank, from the variables every launcher sets (Lightning's, torchrun,
    SLURM), the ones Lightning's ``rank_zero_only`` reads; read without importing Lightning."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return 0


def rerun_as_ddp_child() -> None:
    """In a rank > 0 process started by Lightning, run rank 0's job instead of the command line
    Lightning built (call before Hydra parses ``sys.argv``)."""
    if is_ddp_child():
        sys.argv[1:] = json.loads(os.environ[DDP_JOB])["argv"]


_DDP_ENV = (*LAUNCHER_ENV, DDP_JOB)


@contextmanager
def isolated_ddp_job(child_argv: list[str] | None = None):
    """One job's DDP world: children rerun ``child_argv``; afterwards the process group is
    destroyed and the environment restored, so that the next job of a sweep starts a new one."""
    import torch.distributed as dist  # here: a command that stops at a config error never imports torch

    saved = {key: os.environ.get(key) for key in _DDP_ENV}
    owns_group = not (dist.is_available() and dist.is_initialized())
    if child_argv is not None and not is_ddp_child():
        os.environ[DDP_JOB] = json.dumps({"argv": child_argv, "parent": os.getpid()})
    try:
        yield
    finally:
        if owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
