"""Per-sentence score files written by every evaluation (``compare/scores.py`` has the format).

Evaluation batches are ``[B, bptt]`` slices of the split's sentence-aligned columns
(``data/batching.py``), so the per-token NLLs of one epoch, concatenated along time, are the
columns ``[B, L]``; all ranks hold the same ``L`` and deal out contiguous blocks of columns, so
gathering them ``[world, B, L]`` and reading row by row, scored targets only, gives every token
of the split once, in corpus order. Only evaluation keeps anything: training is untouched.

With ``score.per_token=true`` (the callback :class:`PerTokenScores`) each evaluation also writes
``scores/<split>.tokens.parquet``: one row per scored token, in corpus order, with its
``sentence``, its ``position`` in it (the ``<eos>`` last), the ``token`` (the word) and its
``token_id``, and the same per-token values the sentence file sums (``nll``, the biRNN's
``nll_backward``, the embedded corpus's ``oracle_nll`` and ``distance``): grouping it by
sentence gives the sentence file's sums exactly (the same float64 additions in the same order).
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch

from lm_experiments.compare.scores import (
    SCORES_DIR,
    distance_columns,
    scores_path,
    sentence_of_token,
    sentence_sums,
    write_scores,
    write_table,
)
from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX

log = logging.getLogger(__name__)
STAGE_SPLIT = {"val": "validation", "test": "test"}


def token_scores_path(run_dir: str | Path, split: str = "test") -> Path:
    return Path(run_dir) / SCORES_DIR / f"{split}.tokens.parquet"


class PerTokenScores(L.Callback):
    """``score.per_token=true``: every evaluation also writes ``<split>.tokens.parquet``."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.per_token_scores = True


class KeptScores:
    """One evaluation epoch's per-token values ``{name: [[B, T], ...]}`` and targets."""

    def __init__(self):
        self.values: dict[str, list[torch.Tensor]] = {}
        self.targets: list[torch.Tensor] = []

    def keep(self, name: str, values: torch.Tensor) -> None:
        self.values.setdefault(name, []).append(values.detach().double())

    def keep_targets(self, targets: torch.Tensor) -> None:
        self.targets.append(targets.detach())

    def gathered(self, module) -> dict[str, np.ndarray]:
        """Every rank's scored tokens in corpus order: ``{name: [N]}`` plus ``targets``."""
        columns = {name: torch.cat(parts, dim=1) for name, parts in self.values.items()}
        columns["targets"] = torch.cat(self.targets, dim=1)  # [B, L]
        out = {}
        for name, value in columns.items():
            if module.trainer.world_size > 1:
                value = module.all_gather(value)  # [world, B, L]
            out[name] = value.reshape(-1, value.size(-1)).cpu().numpy()  # [world * B, L]
        mask = out["targets"] != IGNORE_INDEX
        return {name: value[mask] for name, value in out.items()}  # row by row: corpus order


def write_epoch_scores(module, stage: str, kept: KeptScores) -> Path | None:
    """Gather (all ranks) and write ``<run_dir>/scores/<stage>.parquet`` (rank 0), and its
    per-token file when the module's ``per_token_scores`` is set."""
    if not kept.targets or module.trainer.sanity_checking:
        return None
    tokens = kept.gathered(module)
    datamodule = getattr(module.trainer, "datamodule", None)
    split = STAGE_SPLIT[stage]
    stream = getattr(datamodule, "streams", {}).get(split)
    if stream is None or len(stream) != len(tokens["targets"]):
        log.warning("%s: not the whole split was scored; no score file", stage)
        return None
    if module.trainer.global_rank != 0:
        return None
    targets = tokens.pop("targets")
    sentence = sentence_of_token(targets == EOS_ID)
    count = int(sentence[-1]) + 1 if len(sentence) else 0
    columns = {"tokens": sentence_sums(sentence, np.ones(len(sentence)), count).round()}
    columns |= {name: sentence_sums(sentence, v, count) for name, v in tokens.items()}
    corpus = datamodule.corpus[split]
    per_token = dict(tokens)
    if "oracle_nll" in corpus.column_names:
        from lm_experiments.data.datamodule import flat_column

        oracle = flat_column(corpus, "oracle_nll", np.float64)
        columns["oracle_nll"] = sentence_sums(sentence, oracle, count)
        per_token["oracle_nll"] = oracle
        distance = datamodule.annotations.get(split, {}).get("distance")
        if distance is not None:
            columns |= distance_columns(sentence, distance, tokens["nll"], oracle, count)
            per_token["distance"] = np.asarray(distance, dtype=np.int64)
    path = write_scores(scores_path(module.trainer.default_root_dir, stage), columns)
    if getattr(module, "per_token_scores", False):
        where = token_scores_path(module.trainer.default_root_dir, stage)
        write_token_scores(where, sentence, targets, per_token, module.vocab)
    return path


def write_token_scores(path, sentence, targets, values: dict, vocab) -> Path:
    """One row per scored token: ``sentence``, ``position`` (within it), ``token``,
    ``token_id``, then ``values`` (float64; ``distance`` int64)."""
    import pyarrow as pa

    sentence = np.asarray(sentence, dtype=np.int64)
    position = np.arange(len(sentence)) - np.searchsorted(sentence, sentence)  # [N]
    targets = np.asarray(targets, dtype=np.int64)
    words = np.asarray(vocab.itos, dtype=object)[targets] if vocab is not None else targets
    arrays = {"sentence": sentence, "position": position, "token": pa.array(words.tolist())}
    arrays["token_id"] = targets
    for name, value in values.items():
        arrays[name] = np.asarray(value, dtype=np.int64 if name == "distance" else np.float64)
    return write_table(path, arrays)
