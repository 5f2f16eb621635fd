"""``python -m lm_experiments.compare SWEEP_DIR``: the comparison report of a sweep.

Output, in the sweep directory:

* ``comparison.csv`` -- one row per configuration (its seeds together) and per failed run, every
  figure in full precision, the intervals included;
* ``comparison.md``  -- the same table for humans (also printed to the console), the notes, and
  the excess NLL over the oracle by distance when the corpus has an oracle;
* ``comparison.png`` -- test perplexity with its interval per configuration, validation
  perplexity per epoch, and test perplexity against parameters and against training time;
* ``comparison_by_distance.csv``/``.png`` -- the excess NLL by distance (embedded corpus).

Rows are sorted by the metric (lower perplexity first; higher accuracy first), failed runs last.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

from lm_experiments.compare import bootstrap
from lm_experiments.compare.metric import PPL, choose_metric
from lm_experiments.compare.plots import plot, plot_by_distance
from lm_experiments.compare.runs import find_runs
from lm_experiments.compare.scores import BUCKETS
from lm_experiments.compare.table import Comparison, columns, compare
from lm_experiments.errors import UserError


def _fmt(value, digits: int = 2) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _span(row: dict, lo: str, hi: str, digits: int) -> str:
    if row.get(lo) is None:
        return ""
    return f"{_fmt(row[lo], digits)}–{_fmt(row[hi], digits)}"


def table_spec(comparison: Comparison) -> list[tuple[str, callable]]:
    """(header, cell(row)) of the table for humans; the biRNN's and the seeds' columns only when
    a row has them."""
    m, rows = comparison.metric, comparison.rows
    c, digits = m.column, 2 if m.exp else 4
    ppl = m is PPL

    def has(column):
        return any(row.get(column) is not None for row in rows)

    spec = [
        ("run", lambda r: r["label"]),
        ("params", lambda r: _fmt(r.get("params"))),
        *([("val ppl", lambda r: _fmt(r.get("val_ppl_best")))] if ppl else []),
        (f"test {m.name}", lambda r: _fmt(r.get(c), digits)),
        ("95% CI", lambda r: _span(r, f"{c}_lo", f"{c}_hi", digits)),
        *([("seeds", lambda r: _seeds(r, c, digits))] if has(f"{c}_std") else []),
        ("vs best", lambda r: _fmt(r.get("ratio_to_best"), 3)),
        ("95% CI ", lambda r: _span(r, "ratio_lo", "ratio_hi", 3)),
        ("significant", lambda r: _fmt(r.get("significant"))),
    ]
    if ppl:
        spec += [
            *(
                [("fwd+bwd ppl", lambda r: _fmt(r.get("test_ppl_combined")))]
                if has("test_ppl_combined")
                else []
            ),
            *(
                [("bwd ppl", lambda r: _fmt(r.get("test_ppl_backward")))]
                if has("test_ppl_backward")
                else []
            ),
            ("oracle", lambda r: _fmt(r.get("test_oracle_ppl"))),
            ("ratio", lambda r: _fmt(r.get("test_ppl_ratio"), 3)),
        ]
    return spec + [
        ("epochs", lambda r: _fmt(r.get("epochs"), 1)),
        ("train s", lambda r: _fmt(r.get("train_seconds"), 1)),
        ("tokens/s", lambda r: _fmt(r.get("tokens_per_sec"), 0)),
        ("dir", lambda r: r["job"]),
    ]


def _seeds(row: dict, column: str, digits: int) -> str:
    if not row.get("seeds") or row["seeds"] < 2:
        return ""
    return f"{row['seeds']} (sd {_fmt(row[f'{column}_std'], digits)})"


def table_cells(row: dict, spec) -> list[str]:
    if row["status"] != "ok":  # the reason goes below the table: it is a sentence, not a number
        return [row["label"], "failed", *[""] * (len(spec) - 3), row["job"]]
    return [cell(row) for _, cell in spec]


def notes(comparison: Comparison) -> list[str]:
    """'dir 2 (model.cell=bogus): the reason' for each failed run, then the rows' notes."""
    out = [
        f"failed dir {r['job']} ({r['label']}): {r['error']}"
        for r in comparison.rows
        if r["status"] != "ok"
    ]
    out += [
        f"note dir {r['job']} ({r['label']}): {r['note']}" for r in comparison.rows if r.get("note")
    ]
    tokens = {r.get("test_tokens") for r in comparison.rows if r["status"] == "ok"} - {None}
    if len(tokens) > 1:
        out.append(
            f"note: the runs scored different numbers of test tokens {sorted(tokens)}: not comparable"
        )
    return out


def reading(comparison: Comparison, resamples: int) -> str:
    m = comparison.metric
    direction = "higher" if m.higher_is_better else "lower"
    text = (
        f"Ranked by test {m.name} ({direction} is better; the biRNN by its forward LM). "
        f"95% intervals: percentile bootstrap over the test sentences, {resamples:,} resamples; "
        "a configuration with several seeds is one row (the mean over seeds, their sd) and its "
        "interval resamples the seeds too. 'vs best' is the ratio to the best row, its interval "
        "paired (the same resampled sentences for both); 'significant': the interval excludes 1."
    )
    if m is PPL:
        text += (
            " val ppl is the best epoch's (the checkpoint that was tested); ratio = test ppl / "
            "oracle ppl (1.0 is the best possible; blank when the corpus has no oracle)."
        )
    return text


def distance_markdown(comparison: Comparison) -> list[str]:
    if not comparison.distance_rows:
        return []
    lines = [
        "",
        "## Excess NLL over the oracle by distance",
        "",
        "Nats per scored token above the generator's own NLL, by how many tokens back the word "
        "that decided the token is ('none': no earlier word did); [95% interval] as above.",
        "",
        "| run | " + " | ".join(BUCKETS) + " |",
        "|---|" + "---:|" * len(BUCKETS),
    ]
    for group in comparison.groups:
        cells = [
            f"{_fmt(d['excess'], 3)} [{_fmt(d['lo'], 3)}, {_fmt(d['hi'], 3)}]"
            for d in (group.distance[b] for b in BUCKETS)
        ]
        lines.append(f"| {group.label} | " + " | ".join(cells) + " |")
    first = comparison.groups[0].distance
    lines.append("| tokens | " + " | ".join(_fmt(first[b]["tokens"]) for b in BUCKETS) + " |")
    return lines


def markdown(comparison: Comparison, sweep_dir: Path, resamples: int) -> str:
    spec = table_spec(comparison)
    lines = [
        f"# Comparison: {sweep_dir.name}",
        "",
        f"Sweep directory: `{sweep_dir}`. " + reading(comparison, resamples),
        "",
        "| " + " | ".join(header.strip() for header, _ in spec) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(spec) - 1)) + "|---|",
    ]
    for row in comparison.rows:
        cells = [cell.replace("|", "\\|") for cell in table_cells(row, spec)]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in comparison.rows if r["status"] != "ok"]
    finished = sum(r.get("seeds") or 1 for r in comparison.rows if r["status"] == "ok")
    lines += ["", f"{finished} runs finished, {len(failed)} failed."]
    if notes(comparison):
        lines += [
            "",
            "Failed runs (their logs and error.txt are in their directories) and notes:",
            "",
        ]
        lines += [f"- {line}" for line in notes(comparison)]
    lines += distance_markdown(comparison)
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], fieldnames: list[str], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def print_table(comparison: Comparison, title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    spec = table_spec(comparison)
    rich_table = Table(title=title)
    for header, _ in spec:
        rich_table.add_column(
            header.strip(), justify="left" if header in ("run", "dir") else "right"
        )
    for row in comparison.rows:
        rich_table.add_row(*table_cells(row, spec), style=None if row["status"] == "ok" else "red")
    console = Console(width=max(180, Console().width))
    console.print(rich_table)
    for line in notes(comparison):
        kind, _, rest = line.partition(" ")
        console.print(Text.assemble((kind + " ", "red" if kind == "failed" else "yellow"), rest))


def write_report(
    sweep_dir: str | Path,
    show: bool = True,
    metric: str | None = None,
    higher_is_better: bool | None = None,
    resamples: int = bootstrap.RESAMPLES,
    seed: int = bootstrap.SEED,
) -> list[dict]:
    """Write comparison.csv/.md/.png (and the by-distance files) into ``sweep_dir``, print the
    table; return the rows."""
    sweep_dir = Path(sweep_dir).resolve()
    runs = find_runs(sweep_dir)
    if not runs:
        raise UserError(f"{sweep_dir}: no run directories (with .hydra/overrides.yaml) inside")
    chosen = choose_metric(metric, [run.metrics for run in runs], higher_is_better)
    comparison = compare(runs, chosen, resamples=resamples, seed=seed)
    write_csv(comparison.rows, [c for c, _ in columns(chosen)], sweep_dir / "comparison.csv")
    (sweep_dir / "comparison.md").write_text(markdown(comparison, sweep_dir, resamples))
    plot(runs, comparison, sweep_dir / "comparison.png")
    if comparison.distance_rows:
        fields = ["label", "bucket", "tokens", "excess", "lo", "hi"]
        write_csv(comparison.distance_rows, fields, sweep_dir / "comparison_by_distance.csv")
        plot_by_distance(comparison, sweep_dir / "comparison_by_distance.png")
    if show:
        print_table(comparison, title=f"{sweep_dir.name}: {len(runs)} runs")
        print(f"comparison written to {sweep_dir}/comparison.{{csv,md,png}}")
    return comparison.rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the sweep directory (hydra.sweep.dir of a -m run)")
    parser.add_argument("--quiet", action="store_true", help="write the files, print nothing")
    parser.add_argument(
        "--metric",
        default=None,
        help="ppl, acc or a test/<name> key (default: what the runs report)",
    )
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", dest="higher", action="store_true", default=None)
    direction.add_argument("--lower-is-better", dest="higher", action="store_false")
    parser.add_argument("--resamples", type=int, default=bootstrap.RESAMPLES)
    parser.add_argument("--seed", type=int, default=bootstrap.SEED, help="of the bootstrap")
    args = parser.parse_args(argv)
    try:
        if args.resamples < 10:
            raise UserError(f"--resamples {args.resamples}: take at least 10 (1000 is the default)")
        write_report(
            args.sweep_dir,
            show=not args.quiet,
            metric=args.metric,
            higher_is_better=args.higher,
            resamples=args.resamples,
            seed=args.seed,
        )
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
