"""The report's figures (matplotlib's object API: no pyplot, no GUI backend, no global state).

``comparison.png``: test figure per configuration as bars with their 95% intervals (the oracle
as a dashed line), validation perplexity per epoch (from the CSV logs), and two Pareto panels --
the test figure against parameters and against training time, each configuration a point with
its interval. ``comparison_by_distance.png``: each configuration's excess NLL over the oracle per
distance bucket, with intervals.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lm_experiments.compare.runs import Run
from lm_experiments.compare.scores import BUCKETS
from lm_experiments.compare.table import Comparison


def _errors(rows: list[dict], column: str) -> np.ndarray | None:
    """[2, n] distances from each point to its interval's ends (matplotlib's yerr); None when no
    row has an interval."""
    if not any(r.get(f"{column}_lo") is not None for r in rows):
        return None
    value = np.array([r[column] for r in rows], dtype=float)
    lo = np.array([r.get(f"{column}_lo") or r[column] for r in rows], dtype=float)
    hi = np.array([r.get(f"{column}_hi") or r[column] for r in rows], dtype=float)
    return np.stack([value - lo, hi - value]).clip(min=0)


def plot(runs: list[Run], comparison: Comparison, path: Path) -> None:
    from matplotlib.figure import Figure

    metric, column = comparison.metric, comparison.metric.column
    finished = [g.row for g in comparison.groups if g.row[column] is not None]
    colour = {row["job"]: f"C{i % 10}" for i, row in enumerate(finished)}
    curves = [(g, run) for g in comparison.groups for run in g.runs if run.curve]
    fig = Figure(figsize=(13, 9), layout="constrained")
    (bars, lines), (by_params, by_time) = fig.subplots(2, 2)
    ylabel = f"test {metric.name} ({'higher' if metric.higher_is_better else 'lower'} is better)"

    values = [row[column] for row in finished]
    colours = [colour[row["job"]] for row in finished]
    bars.bar(range(len(values)), values, color=colours, yerr=_errors(finished, column), capsize=4)
    bars.set_xticks(
        range(len(values)), [r["label"].replace(" ", "\n") for r in finished], fontsize=8
    )
    for x, value in enumerate(values):
        bars.annotate(f"{value:.4g}", (x, value), ha="left", va="bottom", fontsize=8)
    oracle = next((r.get("test_oracle_ppl") for r in finished if r.get("test_oracle_ppl")), None)
    if oracle:
        bars.axhline(oracle, color="black", linestyle="--", label=f"oracle {oracle:.2f}")
        bars.legend()
    bars.set_ylabel(ylabel)
    bars.set_title(f"Test {metric.name} per configuration (95% intervals)")

    _curves(lines, curves, colour)
    for axes, x_column, xlabel in (
        (by_params, "params", "parameters"),
        (by_time, "train_seconds", "training time (s)"),
    ):
        _pareto(axes, finished, x_column, column, colour)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.set_title(f"Test {metric.name} against {xlabel}")
        if oracle:
            axes.axhline(oracle, color="black", linestyle="--", linewidth=1)
    fig.suptitle(path.parent.name)
    fig.savefig(path, dpi=100)


def _pareto(axes, rows: list[dict], x_column: str, column: str, colour: dict) -> None:
    """Each configuration a point with its interval; log x when the values span 10x or more."""
    points = [r for r in rows if r.get(x_column)]
    if not points:
        axes.text(0.5, 0.5, f"no {x_column} recorded", ha="center", transform=axes.transAxes)
        return
    errors = _errors(points, column)
    for i, row in enumerate(points):
        axes.errorbar(
            row[x_column],
            row[column],
            yerr=None if errors is None else errors[:, i : i + 1],
            fmt="o",
            capsize=4,
            color=colour[row["job"]],
            label=row["label"],
        )
    xs = [r[x_column] for r in points]
    if min(xs) > 0 and max(xs) / min(xs) >= 10:
        axes.set_xscale("log")
    axes.legend(fontsize=7)


def _curves(axes, curves: list, colour: dict) -> None:
    """Validation perplexity per epoch, one line per run (a configuration's seeds share a colour)."""
    from matplotlib.ticker import MaxNLocator

    if not curves:
        axes.text(0.5, 0.5, "no CSV logs (logger=none)", ha="center", transform=axes.transAxes)
        axes.set_title("Validation perplexity per epoch")
        return
    labelled = set()
    for group, run in curves:
        epochs, ppl = zip(*run.curve, strict=True)
        label = None if group.label in labelled else group.label
        labelled.add(group.label)
        axes.plot(
            [e + 1 for e in epochs],
            ppl,
            marker="o",
            color=colour.get(group.row["job"], "gray"),
            label=label,
        )
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    val_oracle = next(
        (run.metrics["val/oracle_ppl"] for _, run in curves if "val/oracle_ppl" in run.metrics),
        None,
    )
    if val_oracle:
        axes.axhline(val_oracle, color="black", linestyle="--", label=f"oracle {val_oracle:.2f}")
    axes.set_xlabel("epoch")  # Lightning counts from 0; the plot from 1
    axes.set_ylabel("validation perplexity")
    axes.set_title("Validation perplexity per epoch")
    axes.legend(fontsize=8)


def plot_by_distance(comparison: Comparison, path: Path) -> None:
    """Excess NLL over the oracle per distance bucket: a fixed window loses beyond its reach."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    axes = fig.subplots(1, 1)
    x = np.arange(len(BUCKETS))
    groups = [g for g in comparison.groups if g.distance]
    width = 0.8 / max(1, len(groups))
    for i, group in enumerate(groups):
        rows = [group.distance[b] for b in BUCKETS]
        value = np.array([r["excess"] for r in rows])
        err = np.stack([value - [r["lo"] for r in rows], [r["hi"] for r in rows] - value])
        axes.bar(
            x + (i - (len(groups) - 1) / 2) * width,
            value,
            width,
            yerr=np.nan_to_num(err).clip(min=0),
            capsize=3,
            label=group.label,
            color=f"C{i % 10}",
        )
    tokens = groups[0].distance if groups else {}
    axes.set_xticks(x, [f"{b}\n({tokens[b]['tokens']:,} tok)" if tokens else b for b in BUCKETS])
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel("tokens back to the word that decided the token")
    axes.set_ylabel("excess NLL over the oracle (nats/token)")
    axes.set_title("Where each model loses (95% intervals)")
    axes.legend(fontsize=8)
    fig.suptitle(path.parent.name)
    fig.savefig(path, dpi=100)
