"""The report's rows: runs grouped by configuration, point estimates, bootstrap intervals, the
paired ratio to the best configuration, and the excess NLL over the oracle by distance.

Runs whose overrides differ only in ``seed`` are one configuration and one row: its figures are
the means over its seeds (``test_ppl_std`` their sample standard deviation, ``seeds`` their
number), its interval comes from the hierarchical bootstrap of ``bootstrap.py``. A failed run is
a row of its own. Point estimates come from ``metrics.json``, intervals from the score files: a
run without ``scores/test.parquet`` (from before they were written) keeps its point estimates,
with a note instead of an interval.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from lm_experiments.compare import bootstrap
from lm_experiments.compare.metric import PPL, Metric, lm_figures
from lm_experiments.compare.runs import Run, labels
from lm_experiments.compare.scores import BUCKETS, SCORES_DIR, bucket_column

BASE = [("label", None), ("model", "model"), ("dataset", "dataset"), ("status", None)]
TAIL = [
    ("epochs", "epochs"),
    ("train_seconds", "train_seconds"),
    ("tokens_per_sec", "train/tokens_per_sec"),
    ("job", None),
    ("overrides", None),
    ("run_dir", "run_dir"),
    ("note", None),
    ("error", None),
]
NO_SCORES = f"no {SCORES_DIR}/test.parquet (a run from before per-sentence scores): no interval"


def columns(metric: Metric) -> list[tuple[str, str | None]]:
    """The CSV columns, (column, metrics.json key); the markdown table shows a subset."""
    c = metric.column
    figures = [(c, None), (f"{c}_lo", None), (f"{c}_hi", None), (f"{c}_std", None)]
    paired = [("ratio_to_best", None), ("ratio_lo", None), ("ratio_hi", None)]
    return [
        *BASE,
        ("seeds", None),
        ("params", "params"),
        *figures,
        *paired,
        ("significant", None),
        *metric.extra,
        *TAIL,
    ]


@dataclass
class Group:
    """One configuration: its runs (one per seed), its row, its bootstrap replicates."""

    label: str
    runs: list[Run]
    row: dict
    replicates: np.ndarray | None = None  # [resamples] of the metric; None: no interval
    denominator: np.ndarray | None = None  # per-sentence tokens/labels: pairing needs the same
    sentences: int = 0  # in its score files
    distance: dict = field(default_factory=dict)  # bucket -> {tokens, excess, lo, hi}


@dataclass
class Comparison:
    metric: Metric
    rows: list[dict]  # sorted: best first, failed runs last
    groups: list[Group]  # the finished configurations, in the rows' order
    distance_rows: list[dict]  # one per (configuration, bucket), when the corpus has buckets


def mean(values: list):
    """The mean of a figure over seeds: a figure all seeds share stays as it is (params)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    if all(v == present[0] for v in present) or not isinstance(present[0], (int, float)):
        return present[0]
    return statistics.fmean(present)


def figures(run: Run, metric: Metric) -> dict:
    """The numbers of one run's row, from its metrics.json."""
    out = {column: run.metrics.get(key) for column, key in columns(metric) if key}
    out[metric.column] = metric.point(run.metrics)
    return lm_figures(out, run.metrics) if metric is PPL else out


def group_runs(runs: list[Run], metric: Metric) -> tuple[list[Group], list[dict]]:
    """Finished runs as one group per configuration; failed runs as rows of their own."""
    by_config: dict[tuple, list[int]] = {}
    for i, run in enumerate(runs):
        if run.ok:
            by_config.setdefault(run.config, []).append(i)
    config_labels, run_labels = labels(runs, with_seed=False), labels(runs)
    groups = []
    for indices in by_config.values():
        members = [runs[i] for i in indices]
        per_run = [figures(run, metric) for run in members]
        row = {column: mean([f[column] for f in per_run]) for column in per_run[0]}
        values = [f[metric.column] for f in per_run if f[metric.column] is not None]
        row.update(
            label=config_labels[indices[0]],
            status="ok",
            seeds=len(members),
            job=",".join(run.job for run in members),
            overrides=" ".join(members[0].config),
            run_dir=";".join(str(run.run_dir) for run in members),
            error=None,
            note=None,
        )
        row[f"{metric.column}_std"] = statistics.stdev(values) if len(values) > 1 else None
        groups.append(Group(row["label"], members, row))
    failed = [failed_row(run, label) for run, label in zip(runs, run_labels, strict=True)]
    return groups, [row for row in failed if row is not None]


def failed_row(run: Run, label: str) -> dict | None:
    if run.ok:
        return None
    model = run.metrics.get("model") or next(
        (o.split("=", 1)[1] for o in run.overrides if o.startswith("model=")), None
    )
    return dict(
        label=label,
        model=model,
        dataset=run.metrics.get("dataset"),
        status="failed",
        job=run.job,
        overrides=" ".join(run.overrides),
        run_dir=str(run.run_dir),
        error=run.error,
    )


def attach_intervals(group: Group, index: int, metric: Metric, resamples: int, seed: int) -> None:
    """The group's interval (sentences and seeds resampled) and its by-distance excess."""
    if metric.numerator is None:
        return
    tables = [run.scores("test") for run in group.runs]
    if any(t is None for t in tables):
        group.row["note"] = NO_SCORES
        return
    lengths = {len(t["sentence"]) for t in tables}
    if len(lengths) > 1 or any(metric.numerator not in t for t in tables):
        group.row["note"] = f"the seeds' score files differ (or lack '{metric.numerator}')"
        return
    group.sentences = lengths.pop()
    group.denominator = tables[0].get(metric.denominator)
    figures = ratio_parts(tables, metric)  # name -> (numerator, denominator), each [n, S]
    names = list(figures)
    numerator = np.stack([figures[k][0] for k in names], axis=-1)  # [n, S, figures]
    denominator = np.stack([figures[k][1] for k in names], axis=-1)
    # one pass over the sentence resamples for every seed and figure: [resamples, S, figures]
    per_seed = bootstrap.ratio_of_sums(numerator, denominator, resamples=resamples, seed=seed)
    if metric.exp:
        per_seed[..., 0] = np.exp(per_seed[..., 0])
    replicates = {}
    for k, name in enumerate(names):  # the same seed picks for every figure of the group
        rng = np.random.default_rng([seed, index])
        replicates[name] = bootstrap.seed_mean(per_seed[..., k], rng)
    group.replicates = replicates.pop(metric.name)
    lo, hi = bootstrap.interval(group.replicates)
    group.row.update({f"{metric.column}_lo": float(lo), f"{metric.column}_hi": float(hi)})
    check_sums(group, tables, metric)
    for bucket, excess in replicates.items():
        num, den = figures[bucket]
        lo, hi = bootstrap.interval(excess)
        with np.errstate(divide="ignore", invalid="ignore"):  # a bucket without tokens: nan
            per_run = num.sum(axis=0) / den.sum(axis=0)
        group.distance[bucket] = {
            "tokens": int(den[:, 0].sum()),
            "excess": mean([float(v) for v in per_run]),
            "lo": float(lo),
            "hi": float(hi),
        }


def ratio_parts(tables: list[dict], metric: Metric) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """What each figure sums, per sentence and seed: the metric (its name), and on the embedded
    corpus the excess NLL over the oracle of every distance bucket (the bucket's name)."""

    def stacked(column_of) -> np.ndarray:  # [n, S]
        return np.stack([np.asarray(column_of(t), dtype=np.float64) for t in tables], axis=1)

    ones = np.ones(len(tables[0]["sentence"]))
    parts = {
        metric.name: (
            stacked(lambda t: t[metric.numerator]),
            stacked(lambda t: t.get(metric.denominator, ones)),
        )
    }
    if all(bucket_column("oracle_nll", BUCKETS[0]) in t for t in tables):
        for bucket in BUCKETS:
            parts[bucket] = (
                stacked(lambda t, b=bucket: excess_nll(t, b)),
                stacked(lambda t, b=bucket: t[bucket_column("tokens", b)]),
            )
    return parts


def excess_nll(table: dict, bucket: str) -> np.ndarray:
    """Per sentence: the model's NLL over the oracle's on the tokens of one distance bucket."""
    return table[bucket_column("nll", bucket)] - table[bucket_column("oracle_nll", bucket)]


def check_sums(group: Group, tables: list[dict], metric: Metric) -> None:
    """A score file that does not add up to metrics.json is said so: its interval is suspect."""
    for run, table in zip(group.runs, tables, strict=True):
        point = metric.point(run.metrics)
        den = table.get(metric.denominator)
        value = table[metric.numerator].sum() / (
            den.sum() if den is not None else len(table["sentence"])
        )
        value = math.exp(value) if metric.exp else float(value)
        if point is not None and not math.isclose(value, point, rel_tol=1e-6):
            group.row["note"] = (
                f"dir {run.job}: its score file gives {value:.6g}, metrics.json {point:.6g}"
            )


def attach_ratios(groups: list[Group], metric: Metric) -> None:
    """Every configuration against the best: the ratio of the point estimates, and its paired
    interval (the replicates of both were drawn from the same sentence resamples)."""
    best = groups[0]
    for group in groups:
        row = group.row
        value, top = row[metric.column], best.row[metric.column]
        row["ratio_to_best"] = value / top if value is not None and top else None
        if group.replicates is None:
            continue
        if best.replicates is None:
            row["note"] = "the best run has no score file: no paired ratio"
            continue
        paired = paired_interval(group, best)
        if paired is None:
            row["note"] = "scored other sentences than the best run: no paired ratio"
            continue
        row.update(ratio_lo=paired[0], ratio_hi=paired[1])
        row["significant"] = bootstrap.excludes(*paired)


def paired_interval(group: Group, reference: Group) -> tuple[float, float] | None:
    """The 95% interval of ``group``'s metric over ``reference``'s, paired (both replicates come
    from the same sentence resamples); None without score files or on other sentences."""
    if group.replicates is None or reference.replicates is None:
        return None
    if group is not reference and not same_sentences(group, reference):
        return None
    lo, hi = bootstrap.interval(group.replicates / reference.replicates)
    return float(lo), float(hi)


def same_sentences(a: Group, b: Group) -> bool:
    """Paired only on the same sentences: as many, and each with the same scored tokens."""
    if a.sentences != b.sentences:
        return False
    if a.denominator is None or b.denominator is None:
        return a.denominator is b.denominator
    return bool(np.array_equal(a.denominator, b.denominator))


def single_run(run: Run, metric: Metric, resamples: int = bootstrap.RESAMPLES) -> Group:
    """One finished run as a configuration of one seed, with its intervals (for W&B)."""
    group = Group(run.job, [run], figures(run, metric))
    attach_intervals(group, 0, metric, resamples, bootstrap.SEED)
    return group


def compare(
    runs: list[Run],
    metric: Metric = PPL,
    resamples: int = bootstrap.RESAMPLES,
    seed: int = bootstrap.SEED,
) -> Comparison:
    """Group, estimate, resample, rank: the whole comparison of a sweep's runs."""
    groups, failed = group_runs(runs, metric)
    for index, group in enumerate(groups):
        attach_intervals(group, index, metric, resamples, seed)
    sign = -1 if metric.higher_is_better else 1
    groups.sort(key=lambda g: (g.row[metric.column] is None, sign * (g.row[metric.column] or 0)))
    if groups:
        attach_ratios(groups, metric)
    distance_rows = [
        {"label": g.label, "bucket": bucket, **excess}
        for g in groups
        for bucket, excess in g.distance.items()
    ]
    return Comparison(metric, [g.row for g in groups] + failed, groups, distance_rows)
