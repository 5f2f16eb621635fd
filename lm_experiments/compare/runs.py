"""Reading a sweep directory: one :class:`Run` per job, from the files the job left.

A sweep directory (``-m`` runs, an Optuna search) holds one run directory per job, each with
``.hydra/overrides.yaml`` (what the job changed) and, when the job finished, ``metrics.json``
(written by ``train.py``) and ``scores/test.parquet`` (per-sentence scores, ``scores.py``). The
report reads only those files and the runs' CSV logs, never the models, so it rebuilds the same
report at any time: at the end of the sweep (``runtime/hydra_callbacks.py``), halfway
through a long SLURM sweep, or after some jobs failed -- a run without ``metrics.json`` is a row
that says why (``error.txt``, written by the callback when a job raises, or the ``[ERROR]`` line
of the job's log).
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lm_experiments.compare.scores import read_scores, scores_path
from lm_experiments.errors import UserError
from lm_experiments.locations import ERROR_FILE

CSV_METRICS = Path("csv") / "metrics.csv"  # conf/logger/csv.yaml: save_dir=run dir, name=csv
SEED_KEYS = {"seed"}  # the overrides that make a rerun of the same configuration


def override_key(override: str) -> str:
    """'+model.cell=gru' -> 'model.cell'."""
    return override.partition("=")[0].lstrip("+~")


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

    @property
    def config(self) -> tuple[str, ...]:
        """The overrides less the seed: runs that differ only in their seed share a config."""
        return tuple(o for o in self.overrides if override_key(o) not in SEED_KEYS)

    def scores(self, split: str = "test") -> dict | None:
        """The run's per-sentence scores of ``split``; None for a run that wrote none."""
        path = scores_path(self.run_dir, split)
        return read_scores(path) if path.is_file() else None


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


def labels(runs: list[Run], with_seed: bool = True) -> list[str]:
    """A short name per run: the overrides that differ between the runs of the sweep.

    ``model=rnnlm`` shows as ``rnnlm``; a sweep over ``model.cell`` shows ``model.cell=lstm``;
    ``with_seed=False`` names the configuration (the seeds of one config share its name).
    """
    overrides = [list(run.overrides if with_seed else run.config) for run in runs]
    values: dict[str, list[str]] = {}  # key -> its value in each run that sets it
    for run_overrides in overrides:
        for override in run_overrides:
            values.setdefault(override_key(override), []).append(override.partition("=")[2])
    varying = {k for k, vals in values.items() if len(set(vals)) > 1 or len(vals) < len(runs)}
    varying.discard("experiment")
    out = []
    for run, run_overrides in zip(runs, overrides, strict=True):
        parts = []
        for override in run_overrides:
            key, value = override_key(override), override.partition("=")[2]
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
