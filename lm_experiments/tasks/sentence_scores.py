"""Per-sentence score files of a classifier or tagger (``compare/scores.py`` has the format).

Each evaluation batch carries its rows' indices in the split (``sentence``, from the labelled
data module); a rank keeps (index, correct, labels, tokens) per sentence, the ranks' rows are
gathered and put back in split order, and rank 0 writes ``<run_dir>/scores/<stage>.parquet``
with ``tokens`` (the sentence's length), ``correct`` (right predictions: 0/1 for a classifier,
right tags for a tagger) and, for a tagger, ``labels`` (its tagged tokens). Summed, ``correct``
over ``labels`` (or over the sentences) is ``<stage>/acc``: what the comparison report resamples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from lm_experiments.compare.scores import scores_path, write_scores
from lm_experiments.data.vocab import IGNORE_INDEX

log = logging.getLogger(__name__)
FIELDS = ("sentence", "correct", "labels", "tokens")
STAGE_SPLIT = {"val": "validation", "test": "test"}


def sentence_rows(batch: dict, predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, 4]: index, correct, labels, tokens of each sentence of the batch."""
    hit = predicted == targets  # [B] or [B, T]
    if targets.ndim == 2:  # a tagger: one label per scored token
        scored = targets != IGNORE_INDEX
        correct, labels = (hit & scored).sum(1), scored.sum(1)
    else:
        correct, labels = hit.long(), torch.ones_like(targets)
    return torch.stack([batch["sentence"], correct, labels, batch["lengths"]], dim=1).cpu()


def gathered(module, kept: list[torch.Tensor]) -> np.ndarray:
    """Every rank's rows [N, 4], sorted by sentence index (ranks hold different counts: each
    pads to the largest with index -1, dropped after the gather)."""
    rows = torch.cat(kept) if kept else torch.zeros((0, len(FIELDS)), dtype=torch.long)
    if module.trainer.world_size > 1:
        size = int(module.all_gather(torch.tensor(len(rows))).max())
        padded = torch.full((size, len(FIELDS)), -1, dtype=torch.long)
        padded[: len(rows)] = rows
        rows = module.all_gather(padded.to(module.device)).reshape(-1, len(FIELDS)).cpu()
        rows = rows[rows[:, 0] >= 0]
    rows = rows.numpy()
    return rows[np.argsort(rows[:, 0], kind="stable")]


def write_sentence_scores(module, stage: str, kept: list[torch.Tensor], tagger: bool):
    """Gather (all ranks) and write the stage's score file (rank 0); none unless every sentence
    of the split was scored once (e.g. not under ``limit_val_batches``)."""
    rows = gathered(module, kept)
    if module.trainer.global_rank != 0:
        return None
    examples = getattr(module.trainer.datamodule, "examples", {}).get(STAGE_SPLIT[stage], [])
    if not len(rows) or not np.array_equal(rows[:, 0], np.arange(len(examples))):
        log.warning("%s: not every sentence was scored once; no score file", stage)
        return None
    columns = {"tokens": rows[:, 3], "correct": rows[:, 1]}
    if tagger:
        columns["labels"] = rows[:, 2]
    return write_scores(scores_path(Path(module.trainer.default_root_dir), stage), columns)
