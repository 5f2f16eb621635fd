"""What a W&B run gets beyond what Lightning's ``WandbLogger`` logs by itself.

Lightning already sends the config (``train.py`` calls ``log_hyperparams``), every ``self.log``
metric at its step and epoch (perplexities, the oracle ratio, tokens/s), and -- with
``logger.wandb.log_model=true`` -- the checkpoints as ``model`` artifacts, the best one with the
alias ``best``. This module adds, for runs that use a ``WandbLogger`` and only on rank 0:

* at the start: tags for the model family and the dataset, and the same two names as plain config
  keys (``model_name``, ``dataset_name``), so the W&B runs table can group by them;
* at the end: the final figures of ``metrics.json`` in the run summary; when the run wrote
  per-sentence scores (``scores/test.parquet``), the 95% bootstrap interval of its test figure
  (``test/ppl_lo``, ``test/ppl_hi``; the biRNN's ``test/ppl_forward_lo``/``_hi``) and, on the
  embedded corpus, a ``by_distance`` table of its excess NLL over the oracle (the same numbers as
  the sweep's ``comparison_by_distance.csv``); a table of sentences sampled from the tested (best)
  model; and ``finish()`` -- without it the next job of a multirun would log into this run, since
  ``wandb.init`` returns the active run.

Figures that need the other runs of a sweep (the ratio to the best, its paired interval) are in
the sweep's ``comparison.csv``: a run's summary is final when the run ends.
"""

from __future__ import annotations

import logging
from pathlib import Path

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


def score_figures(run_dir: str | Path, metrics: dict) -> tuple[dict, list[list] | None]:
    """The run's interval (summary keys) and by-distance rows from its score file; ({}, None)
    when it wrote none."""
    from lm_experiments.compare.metric import choose_metric
    from lm_experiments.compare.runs import Run
    from lm_experiments.compare.table import single_run

    metric = choose_metric(None, [metrics])
    run = Run(job=".", run_dir=Path(run_dir), overrides=[], metrics=metrics)
    if metric.numerator is None or run.scores("test") is None:
        return {}, None
    group = single_run(run, metric)
    if group.replicates is None:
        return {}, None
    key = next((k for k in metric.keys if k in metrics), metric.keys[-1])
    summary = {f"{key}_lo": group.row[f"{metric.column}_lo"]}
    summary[f"{key}_hi"] = group.row[f"{metric.column}_hi"]
    rows = [
        [bucket, d["tokens"], d["excess"], d["lo"], d["hi"]] for bucket, d in group.distance.items()
    ]
    return summary, rows or None


def log_scores(run, run_dir: str | Path, metrics: dict) -> None:
    """Intervals into the run's summary, the by-distance table into its tables."""
    import wandb

    summary, rows = score_figures(run_dir, metrics)
    run.summary.update(summary)
    if rows:
        columns = ["distance", "tokens", "excess_nll", "lo", "hi"]
        run.log({"by_distance": wandb.Table(columns=columns, data=rows)})


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
            log_scores(run, metrics["run_dir"], metrics)
        except Exception as err:  # a bad score file must not fail a finished run either
            log.warning("no intervals for W&B (%s: %s)", type(err).__name__, err)
        try:
            run.log({"samples": sample_table(model, seed, join)})
        except Exception as err:  # samples are a nicety: they must not fail a finished run
            log.warning("no samples table for W&B (%s: %s)", type(err).__name__, err)
    wandb.finish()
