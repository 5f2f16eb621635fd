"""Sequence labeling (many-to-many): one tag per token, from each position's state. Besides the
shared token accuracy, macro-F1 and majority baseline: per-tag F1 and, for an IOB tag set
(``O``, ``B-X``, ``I-X``), entity-level F1 (an entity counts only when its span and type match)."""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.classification import MulticlassF1Score

from lm_experiments.data.vocab import IGNORE_INDEX
from lm_experiments.models.heads import SequenceTagger
from lm_experiments.tasks.supervised import SupervisedTask, scores


def is_iob(labels: list[str]) -> bool:
    return any(t[:2] in ("B-", "I-") for t in labels) and all(
        t == "O" or t[:2] in ("B-", "I-") for t in labels
    )


def entities(tags: list[str]) -> set[tuple[int, int, str]]:
    """(start, end, type) spans; an ``I-X`` after anything but ``X`` starts an entity (conlleval)."""
    spans, start, kind = set(), None, None
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, name = tag.partition("-")
        if start is not None and (prefix != "I" or name != kind):
            spans.add((start, i, kind))
            start = None
        if prefix == "B" or (prefix == "I" and start is None):
            start, kind = i, name
    return spans


class EntityF1(Metric):
    """Span-level F1 from true/false positive and false negative counts, summed over ranks."""

    def __init__(self, labels: list[str]):
        super().__init__()
        self.names = list(labels)
        for name in ("tp", "fp", "fn"):
            self.add_state(name, torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predicted: torch.Tensor, targets: torch.Tensor) -> None:
        for p_row, t_row in zip(predicted.tolist(), targets.tolist(), strict=True):
            kept = [(p, t) for p, t in zip(p_row, t_row, strict=True) if t != IGNORE_INDEX]
            guess = entities([self.names[p] for p, _ in kept])
            gold = entities([self.names[t] for _, t in kept])
            self.tp += len(guess & gold)
            self.fp += len(guess - gold)
            self.fn += len(gold - guess)

    def compute(self) -> torch.Tensor:
        denominator = 2 * self.tp + self.fp + self.fn
        return (2 * self.tp / denominator) if denominator > 0 else torch.tensor(0.0)


class Tagging(SupervisedTask):
    kind = "tag"

    def make_head(self, encoder, num_labels: int):
        return SequenceTagger(encoder, num_labels)

    def make_scores(self):
        metrics = scores(len(self.labels))
        metrics.add_metrics(
            {"tag_f1": MulticlassF1Score(len(self.labels), average=None, ignore_index=IGNORE_INDEX)}
        )
        if is_iob(self.labels):
            metrics.add_metrics({"entity_f1": EntityF1(self.labels)})
        return metrics

    def update_scores(self, metrics, predicted, targets) -> None:
        super().update_scores(metrics, predicted, targets)
        metrics["tag_f1"].update(predicted, targets)
        if "entity_f1" in metrics:
            metrics["entity_f1"].update(predicted, targets)
