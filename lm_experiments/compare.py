"""``python -m lm_experiments.compare SWEEP_DIR``: the comparison report of a sweep.

A sweep directory (``-m`` runs, an Optuna search) holds one run directory per job, each with
``.hydra/overrides.yaml`` (what the job changed) and, when the job finished, ``metrics.json``
(written by ``train.py``). This module reads only those files and the runs' CSV logs, never the
models, so it rebuilds the same report at any time: at the end of the sweep (the Hydra callback
in ``callbacks.py`` calls :func:`write_report`), halfway through a long SLURM sweep, or after some
jobs failed -- a run without ``metrics.json`` is a row that says why (``error.txt``, written by
the callback when a job raises, or the ``[ERROR]`` line of the job's log).

Output, in the sweep directory:

* ``comparison.csv`` -- one row per run, every figure in full precision;
* ``comparison.md``  -- the same table for humans (also printed to the console);
* ``comparison.png`` -- test perplexity per run as bars (the oracle as a line when the corpus
  knows it), and validation perplexity per epoch as curves (from ``csv/metrics.csv``; skipped
  for runs logged with ``logger=none``).

Rows are sorted by test perplexity, the runs that failed last.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lm_experiments.errors import UserError

ERROR_FILE = "error.txt"  # written by callbacks.ComparisonReport.on_job_end when a job raises
CSV_METRICS = Path("csv") / "metrics.csv"  # conf/logger/csv.yaml: save_dir=run dir, name=csv

#: the CSV columns: (column, key in metrics.json); the table shows a subset, the CSV all of them
COLUMNS = [
    ("label", None),
    ("model", "model"),
    ("dataset", "dataset"),
    ("status", None),
    ("params", "params"),
    ("val_ppl_best", "val/ppl_best"),
    ("val_ppl_last", "val/ppl"),
    ("test_ppl", "test/ppl"),
    ("test_oracle_ppl", "test/oracle_ppl"),
    ("test_ppl_ratio", "test/ppl_ratio"),
    ("test_tokens", "test/tokens"),
    ("epochs", "epochs"),
    ("train_seconds", "train_seconds"),
    ("tokens_per_sec", "train/tokens_per_sec"),
    ("job", None),
    ("overrides", None),
    ("run_dir", "run_dir"),
    ("error", None),
]


@dataclass
class Run:
    """What one job of a sweep left on disk."""

    job: str  # its directory relative to the sweep directory ("0", "3_rnnlm", "<stamp>/2")
    run_dir: Path
    overrides: list[str]
    metrics: dict = field(default_factory=dict)  # metrics.json; {} when the job did not finish
    error: str | None = None  # one line on why the run failed; None when it did not
    curve: list[tuple[int, float]] = field(default_factory=list)  # (epoch, val/ppl)

    @property
    def ok(self) -> bool:
        return bool(self.metrics) and self.error is None


# --- reading a sweep ------------------------------------------------------------------------------
def _natural_key(path: str) -> list:
    """'10' after '9': job numbers sort as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


def find_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run directory under ``sweep_dir`` (any depth), in job order."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: no such directory; give the sweep directory of a -m run")
    run_dirs = [p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")]
    # the .submitit folder of a SLURM sweep holds no .hydra; a nested wandb/ dir never does
    run_dirs.sort(key=lambda p: _natural_key(p.relative_to(sweep_dir).as_posix()))
    return [read_run(run_dir, sweep_dir) for run_dir in run_dirs]


def read_run(run_dir: Path, sweep_dir: Path) -> Run:
    overrides = yaml.safe_load((run_dir / ".hydra" / "overrides.yaml").read_text()) or []
    run = Run(job=run_dir.relative_to(sweep_dir).as_posix(), run_dir=run_dir, overrides=overrides)
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        try:
            run.metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as err:
            run.error = f"metrics.json is not valid JSON ({err})"
    if (run_dir / ERROR_FILE).is_file():
        run.error = ((run_dir / ERROR_FILE).read_text().splitlines() or ["failed"])[0]
    elif not run.metrics and run.error is None:
        run.error = _logged_error(run_dir) or "no metrics.json: the job is running, or was killed"
    run.curve = read_val_curve(run_dir / CSV_METRICS)
    return run


def _logged_error(run_dir: Path) -> str | None:
    """The last ``[ERROR]`` line of the job's log (Hydra's format: ``[time][name][ERROR] - msg``)."""
    for log_file in sorted(run_dir.glob("*.log")):
        errors = [
            line.split("] - ", 1)[-1].strip()
            for line in log_file.read_text(errors="replace").splitlines()
            if "][ERROR]" in line
        ]
        if errors:
            return errors[-1]
    return None


def read_val_curve(path: Path) -> list[tuple[int, float]]:
    """(epoch, val/ppl) from a Lightning CSVLogger file; [] when there is none (logger=none)."""
    if not path.is_file():
        return []
    curve = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("val/ppl") and row.get("epoch"):
                curve[int(float(row["epoch"]))] = float(row["val/ppl"])  # last one of an epoch
    return sorted(curve.items())


def labels(runs: list[Run]) -> list[str]:
    """A short name per run: the overrides that differ between the runs of the sweep.

    ``model=rnnlm`` shows as ``rnnlm``; a sweep over ``model.cell`` shows ``model.cell=lstm``.
    """
    values: dict[str, list[str]] = {}  # key -> its value in each run that sets it
    for run in runs:
        for override in run.overrides:
            key, _, value = override.partition("=")
            values.setdefault(key.lstrip("+~"), []).append(value)
    varying = {k for k, vals in values.items() if len(set(vals)) > 1 or len(vals) < len(runs)}
    varying.discard("experiment")
    out = []
    for run in runs:
        parts = []
        for override in run.overrides:
            key, _, value = override.partition("=")
            key = key.lstrip("+~")
            if key in varying and not key.startswith(("hydra.", "paths.")):
                value = _short(value)
                parts.append(value if key == "model" else f"{key}={value}")
        out.append(" ".join(parts) or run.metrics.get("model") or run.job)
    return out


def _short(value: str) -> str:
    """'0.31739073919' -> '0.3174': an Optuna trial's floats, readable in a label."""
    try:
        number = float(value)
    except ValueError:
        return value
    return value if number.is_integer() or "e" in value.lower() else f"{number:.4g}"


def rows(runs: list[Run]) -> list[dict]:
    """The report's rows: best test perplexity first, the runs that failed last."""
    table = []
    for run, label in zip(runs, labels(runs), strict=True):
        row = {column: run.metrics.get(key) for column, key in COLUMNS if key}
        row.update(
            label=label,
            status="ok" if run.ok else "failed",
            job=run.job,
            overrides=" ".join(run.overrides),
            run_dir=str(run.run_dir),
            error=run.error,
        )
        if row["model"] is None:  # a failed run: the model it was asked for
            row["model"] = next(
                (o.split("=", 1)[1] for o in run.overrides if o.startswith("model=")), None
            )
        table.append(row)
    inf = math.inf
    table.sort(key=lambda r: (r["status"] != "ok", r["test_ppl"] if r["test_ppl"] else inf))
    return table


# --- writing the report ---------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


#: the table for humans: (header, column, digits)
TABLE = [
    ("run", "label", 0),
    ("params", "params", 0),
    ("val ppl", "val_ppl_best", 2),
    ("test ppl", "test_ppl", 2),
    ("oracle", "test_oracle_ppl", 2),
    ("ratio", "test_ppl_ratio", 3),
    ("epochs", "epochs", 0),
    ("train s", "train_seconds", 1),
    ("tokens/s", "tokens_per_sec", 0),
    ("dir", "job", 0),
]


def table_cells(row: dict) -> list[str]:
    if row["status"] != "ok":  # the reason goes below the table: it is a sentence, not a number
        return [row["label"], "failed", *[""] * (len(TABLE) - 3), row["job"]]
    return [_fmt(row[column], digits) for _, column, digits in TABLE]


def failures(table: list[dict]) -> list[str]:
    """'dir 2 (model.cell=bogus): the reason' for each run that failed."""
    return [f"dir {r['job']} ({r['label']}): {r['error']}" for r in table if r["status"] != "ok"]


def markdown(table: list[dict], sweep_dir: Path) -> str:
    lines = [
        f"# Comparison: {sweep_dir.name}",
        "",
        f"Sweep directory: `{sweep_dir}`. Perplexity = exp(sum of NLL / scored tokens) on the "
        "same splits for every run; val ppl is the best epoch's (the checkpoint that was tested); "
        "ratio = test ppl / oracle ppl (1.0 is the best possible; blank when the corpus has no "
        "oracle).",
        "",
        "| " + " | ".join(header for header, _, _ in TABLE) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(TABLE) - 1)) + "|---|",
    ]
    for row in table:
        cells = [cell.replace("|", "\\|") for cell in table_cells(row)]
        lines.append("| " + " | ".join(cells) + " |")
    failed = failures(table)
    lines += ["", f"{len(table) - len(failed)} runs finished, {len(failed)} failed."]
    if failed:
        lines += ["", "Failed runs (their logs and error.txt are in their directories):", ""]
        lines += [f"- {line}" for line in failed]
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[column for column, _ in COLUMNS])
        writer.writeheader()
        writer.writerows(table)


def plot(runs: list[Run], table: list[dict], path: Path) -> None:
    """Bars of test perplexity (left) and validation perplexity per epoch (right); a run has the
    same colour in both, the generator's perplexity (oracle) is the dashed line."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import MaxNLocator

    colour = {run.job: f"C{i % 10}" for i, run in enumerate(runs)}
    finished = [row for row in table if row["status"] == "ok" and row["test_ppl"] is not None]
    curves = [(run, label) for run, label in zip(runs, labels(runs), strict=True) if run.curve]
    fig = Figure(figsize=(12 if curves else 6.5, 4.5), layout="constrained")
    bars, lines = fig.subplots(1, 2) if curves else (fig.subplots(1, 1), None)

    values = [row["test_ppl"] for row in finished]
    bars.bar(range(len(values)), values, color=[colour[row["job"]] for row in finished])
    ticks = [row["label"].replace(" ", "\n") for row in finished]
    bars.set_xticks(range(len(values)), ticks, fontsize=8)
    for x, value in enumerate(values):
        bars.annotate(f"{value:.1f}", (x, value), ha="center", va="bottom", fontsize=8)
    oracle = next((row["test_oracle_ppl"] for row in finished if row["test_oracle_ppl"]), None)
    if oracle:
        bars.axhline(oracle, color="black", linestyle="--", label=f"oracle {oracle:.2f}")
        bars.legend()
    bars.set_ylabel("test perplexity (lower is better)")
    bars.set_title("Test perplexity per run")

    if lines is not None:
        for run, label in curves:
            epochs, ppl = zip(*run.curve, strict=True)
            epochs = [epoch + 1 for epoch in epochs]  # Lightning counts from 0
            lines.plot(epochs, ppl, marker="o", color=colour[run.job], label=label)
        last = max(epoch for run, _ in curves for epoch, _ in run.curve) + 1
        if last <= 15:
            lines.set_xticks(range(1, last + 1))
        else:
            lines.xaxis.set_major_locator(MaxNLocator(integer=True))
        val_oracle = next(
            (r.metrics["val/oracle_ppl"] for r, _ in curves if "val/oracle_ppl" in r.metrics), None
        )
        if val_oracle:
            lines.axhline(
                val_oracle, color="black", linestyle="--", label=f"oracle {val_oracle:.2f}"
            )
        lines.set_xlabel("epoch")
        lines.set_ylabel("validation perplexity")
        lines.set_title("Validation perplexity per epoch")
        lines.legend(fontsize=8)
    fig.suptitle(path.parent.name)
    fig.savefig(path, dpi=110)


def print_table(table: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rich_table = Table(title=title)
    for header, _, _ in TABLE:
        rich_table.add_column(header, justify="left" if header in ("run", "dir") else "right")
    for row in table:
        style = None if row["status"] == "ok" else "red"
        rich_table.add_row(*table_cells(row), style=style)
    console = Console(width=max(120, Console().width))
    console.print(rich_table)
    for line in failures(table):
        console.print(Text.assemble(("failed ", "red"), line))  # Text: no markup in the line


def write_report(sweep_dir: str | Path, show: bool = True) -> list[dict]:
    """Write comparison.csv/.md/.png into ``sweep_dir`` (and print the table); return the rows."""
    sweep_dir = Path(sweep_dir).resolve()
    runs = find_runs(sweep_dir)
    if not runs:
        raise UserError(f"{sweep_dir}: no run directories (with .hydra/overrides.yaml) inside")
    table = rows(runs)
    write_csv(table, sweep_dir / "comparison.csv")
    (sweep_dir / "comparison.md").write_text(markdown(table, sweep_dir))
    plot(runs, table, sweep_dir / "comparison.png")
    if show:
        print_table(table, title=f"{sweep_dir.name}: {len(runs)} runs")
        print(f"comparison written to {sweep_dir}/comparison.{{csv,md,png}}")
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="the sweep directory (hydra.sweep.dir of a -m run)")
    parser.add_argument("--quiet", action="store_true", help="write the files, print nothing")
    args = parser.parse_args(argv)
    try:
        write_report(args.sweep_dir, show=not args.quiet)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
