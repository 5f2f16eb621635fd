"""``python -m lm_experiments model=rnnlm``: the Hydra app that runs one experiment (or, with
``-m``, a sweep of them)."""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lm_experiments.errors import UserError
from lm_experiments.train import objective, train
from lm_experiments.utils import print_config_tree

log = logging.getLogger("lm_experiments")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float:
    if cfg.get("print_config", True):
        print_config_tree(cfg)
    try:
        metrics = train(cfg)
    except UserError as err:
        log.error("%s", err)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep records this run as failed and goes on with the others
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if "test/ppl" in metrics:
        print(f"test perplexity: {metrics['test/ppl']:.3f} ({metrics['test/tokens']} tokens)")
    return objective(metrics)


if __name__ == "__main__":
    main()
