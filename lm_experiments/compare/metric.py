"""What a comparison ranks by: a figure of ``metrics.json``, its direction, and how to recompute
it from a run's score file (so the bootstrap can resample it).

* ``ppl`` (language models, lower is better): exp(sum ``nll`` / sum ``tokens``). The figure is
  every family's *forward* LM perplexity -- ``test/ppl_forward`` for the biRNN, whose
  ``test/ppl`` mixes in its backward LM and is not comparable with left-to-right models (its
  combined and backward figures get columns of their own).
* ``acc`` (classifiers and taggers, higher is better): sum ``correct`` / sum ``labels`` (a
  classifier's file has no ``labels`` column: each sentence is one label).
* any other ``test/<name>`` key, with its direction given (``--higher-is-better`` or
  ``--lower-is-better``): ranked by its point estimate, without an interval (the score files
  hold no per-sentence parts of it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from lm_experiments.errors import UserError


@dataclass(frozen=True)
class Metric:
    name: str  # the report's columns: test_<name>, test_<name>_lo, ...
    keys: tuple[str, ...]  # metrics.json keys of the point estimate, the first one present wins
    numerator: str | None = None  # score column summed per resample; None: no interval
    denominator: str | None = None  # score column; absent from the file: one per sentence
    exp: bool = False  # perplexity: exp(sum / sum)
    higher_is_better: bool = False
    #: further (column, metrics.json key) pairs this kind of run reports
    extra: tuple[tuple[str, str], ...] = ()

    def point(self, metrics: dict) -> float | None:
        return next((metrics[key] for key in self.keys if key in metrics), None)

    @property
    def column(self) -> str:
        return f"test_{self.name}"


def figures(*keys) -> tuple[tuple[str, str], ...]:
    """(column, metrics.json key) pairs, in the report's order: a key alone names its own column
    (``val/acc`` -> ``val_acc``); a pair gives the column another name."""
    return tuple((key.replace("/", "_"), key) if isinstance(key, str) else key for key in keys)


PPL = Metric(
    "ppl",
    ("test/ppl_forward", "test/ppl"),
    numerator="nll",
    denominator="tokens",
    exp=True,
    extra=figures(
        "val/ppl_best",
        ("val_ppl_last", "val/ppl"),
        "test/oracle_ppl",
        "test/ppl_ratio",
        ("test_ppl_combined", "test/ppl"),  # kept for the biRNN only (lm_figures)
        "test/ppl_backward",
        "test/tokens",
    ),
)
ACC = Metric(
    "acc", ("test/acc",), "correct", "labels", higher_is_better=True,
    extra=figures("val/acc", "test/f1", "test/majority_acc"),
)  # fmt: skip
KNOWN = {"ppl": PPL, "acc": ACC}


def lm_figures(figures: dict, metrics: dict) -> dict:
    """The biRNN's row: the forward LM is the ranked figure and its oracle ratio; the combined
    perplexity keeps its own column. Other families: no combined column (it would repeat)."""
    if "test/ppl_forward" not in metrics:
        figures["test_ppl_combined"] = None
    elif figures.get("test_oracle_ppl"):
        figures["test_ppl_ratio"] = metrics["test/ppl_forward"] / figures["test_oracle_ppl"]
    return figures


def choose_metric(
    name: str | None, all_metrics: list[dict], higher_is_better: bool | None = None
) -> Metric:
    """The metric named (``ppl``, ``acc``, ``test/f1``), or the one the runs report: ``ppl``
    when any run has ``test/ppl``, else ``acc`` when any has ``test/acc``."""
    if name is None or name == "auto":
        has = {key for metrics in all_metrics for key in metrics}
        name = "acc" if "test/ppl" not in has and "test/acc" in has else "ppl"
    short = name.removeprefix("test/")
    metric = KNOWN.get(short)
    if metric is None:
        if higher_is_better is None:
            raise UserError(
                f"metric {name!r}: say which way is better (--higher-is-better or "
                f"--lower-is-better); known metrics: {', '.join(KNOWN)}"
            )
        metric = Metric(short, (f"test/{short}",))
    if higher_is_better is not None:
        metric = replace(metric, higher_is_better=higher_is_better)
    return metric
