"""``python -m lm_experiments.score ckpt_path=PATH dataset=NAME``: score a checkpoint (or, with
``model=ngram model.arpa_path=FILE``, an ARPA file such as KenLM's) on a split's tokens and write
the per-sentence score files of ``compare/scores.py``, so a model trained elsewhere joins a
comparison on exactly the tokens every run scores. The experiment app with ``train=false``
(``conf/score.yaml``): the same evaluation, errors and DDP handling."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from lm_experiments.__main__ import main as experiment
from lm_experiments.runtime.ddp import rerun_as_ddp_child


@hydra.main(version_base="1.3", config_path="../conf", config_name="score")
def main(cfg: DictConfig) -> float:
    return experiment.__wrapped__(cfg)


if __name__ == "__main__":
    rerun_as_ddp_child()
    main()
