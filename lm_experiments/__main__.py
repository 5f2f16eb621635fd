"""``python -m lm_experiments model=rnnlm``: the Hydra app that runs one experiment (or, with
``-m``, a sweep of them)."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lm_experiments import validation
from lm_experiments.errors import RunInterrupted, UserError
from lm_experiments.locations import conf_dir
from lm_experiments.runtime.ddp import (
    ddp_job_argv,
    is_ddp_child,
    isolated_ddp_job,
    process_rank,
    rerun_as_ddp_child,
)
from lm_experiments.utils import print_config_tree

log = logging.getLogger("lm_experiments")
run_log = logging.getLogger("lm_experiments.run_log")  # the run's log file only (conf/hydra)


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="config")
def main(cfg: DictConfig) -> float:
    validation.app_started()  # Hydra composed the config: stderr is the run's
    rank_zero = process_rank() == 0  # DDP ranks > 0 run the same job, silently
    try:
        validation.check_config(cfg)  # one line for a missing or out-of-range value
        if cfg.get("print_config", True) and rank_zero:
            print_config_tree(cfg)
        # torch and Lightning take seconds to import: only once the config is known to be good
        from lm_experiments.train import objective, train

        # DDP ranks 1..N-1 (started by Lightning) rerun exactly this job, not the sweep
        with isolated_ddp_job(ddp_job_argv()):
            metrics = train(cfg)
    except UserError as err:
        run_log.error("%s", err)
        if is_ddp_child():  # every rank meets the same error; rank 0 reports it. A child's
            sys.exit(0)  # non-zero exit would make Lightning's launcher kill rank 0 (the sweep)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this run as failed and goes on with the others
        if rank_zero:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except RunInterrupted as stop:  # a signal: a resumable checkpoint was saved; the sweep stops
        log.warning("%s", stop)
        if rank_zero:
            print(f"interrupted: {stop}", file=sys.stderr)
        sys.exit(0 if is_ddp_child() else stop.exit_code)  # (children: as above)
    if "test/ppl" in metrics and rank_zero:
        print(f"test perplexity: {metrics['test/ppl']:.3f} ({metrics['test/tokens']} tokens)")
    return objective(metrics)


if __name__ == "__main__":
    rerun_as_ddp_child()  # before Hydra parses the command line
    with validation.hydra_errors():  # Hydra's composition errors (unknown key...) as one line
        main()
