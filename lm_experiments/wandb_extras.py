"""What a W&B run gets beyond what Lightning's ``WandbLogger`` logs by itself.

Lightning already sends the config (``train.py`` calls ``log_hyperparams``), every ``self.log``
metric at its step and epoch (perplexities, the oracle ratio, tokens/s), and -- with
``logger.wandb.log_model=true`` -- the checkpoints as ``model`` artifacts, the best one with the
alias ``best``. This module adds, for runs that use a ``WandbLogger`` and only on rank 0:

* at the start: tags for the model family and the dataset, and the same two names as plain config
  keys (``model_name``, ``dataset_name``), so the W&B runs table can group by them;
* at the end: the final figures of ``metrics.json`` in the run summary, a table of sentences
  sampled from the tested (best) model, and ``finish()`` -- without it the next job of a multirun
  would log into this run, since ``wandb.init`` returns the active run.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

NUM_SAMPLES = 8
MAX_SAMPLE_LENGTH = 40


def wandb_loggers(loggers) -> list:
    from lightning.pytorch.loggers import WandbLogger

    return [logger for logger in loggers if isinstance(logger, WandbLogger)]


def start(loggers, model_name: str, dataset_name: str) -> None:
    """Tag the run with the model family and the dataset (the user's ``tags`` are kept)."""
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank > 0:  # the other ranks hold a dummy experiment, not a run
        return
    for logger in wandb_loggers(loggers):
        run = logger.experiment
        run.tags = tuple(dict.fromkeys([*(run.tags or ()), model_name, dataset_name]))
        run.config.update({"model_name": model_name, "dataset_name": dataset_name})


def sample_table(model, seed: int, join: str = " "):
    """``NUM_SAMPLES`` sentences sampled (temperature 1) from the model, as a ``wandb.Table``."""
    import wandb

    generator = torch.Generator().manual_seed(seed)
    sentences = model.generate(NUM_SAMPLES, MAX_SAMPLE_LENGTH, generator=generator)
    table = wandb.Table(columns=["sample", "tokens", "text"])
    for i, ids in enumerate(sentences):
        table.add_data(i, len(ids), join.join(model.vocab.decode(ids)))
    return table


def finish(trainer, model, metrics: dict, seed: int = 0, join: str = " ") -> None:
    """Summary, samples and ``finish()``: call once, after testing, on every rank."""
    if not trainer.is_global_zero:
        return
    runs = [logger.experiment for logger in wandb_loggers(trainer.loggers)]
    if not runs:
        return
    import wandb

    for run in runs:
        run.summary.update({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
        try:
            run.log({"samples": sample_table(model, seed, join)})
        except Exception as err:  # samples are a nicety: they must not fail a finished run
            log.warning("no samples table for W&B (%s: %s)", type(err).__name__, err)
    wandb.finish()
