"""The architecture comparison: ``make sweep`` (``-m experiment=compare_architectures``) as a
benchmark section -- every family on the embedded synthetic corpus, the same splits and token
accounting, its table taken from the sweep's ``comparison.md``.

    python -m benchmarks.run sweep            # the full sweep (minutes to hours on a CPU)
    python -m benchmarks.run sweep --quick    # tiny corpus, one epoch: a smoke check
"""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import sys
import time
from pathlib import Path

TITLE = "Architecture comparison (experiment=compare_architectures)"
ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "benchmarks" / "figures"  # committed copies of a full run's plots (logs/ is not)

QUICK = [
    "dataset.train_tokens=5000",
    "dataset.valid_tokens=1000",
    "dataset.test_tokens=1000",
    "trainer.max_epochs=1",
    "callbacks=none",
]


def sweep(
    experiment: str, quick: bool = False, overrides: tuple[str, ...] = ()
) -> tuple[str, float, int, Path]:
    """Run ``-m experiment=<experiment> <overrides>``; return its comparison table (or the
    error's tail), the seconds it took, its exit status and its directory."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    sweep_dir = ROOT / "logs" / f"bench_{experiment}" / f"{stamp}{'_quick' if quick else ''}"
    command = [
        sys.executable,
        "-m",
        "lm_experiments",
        "-m",
        f"experiment={experiment}",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        f"hydra.sweep.dir={sweep_dir}",
        *(QUICK if quick else []),
        *overrides,
    ]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    table = comparison_table(experiment, sweep_dir, quick)
    if table is None:
        tail = "\n".join((result.stderr or result.stdout).splitlines()[-20:])
        return f"The sweep wrote no comparison:\n\n```\n{tail}\n```\n", seconds, 1, sweep_dir
    return table, seconds, result.returncode, sweep_dir


def comparison_table(experiment: str, sweep_dir: Path, quick: bool = False) -> str | None:
    """A finished sweep's ``comparison.md`` without its heading, and (a full run's) plots;
    None when the sweep wrote no comparison."""
    report = sweep_dir / "comparison.md"
    if not report.is_file():
        return None
    table = report.read_text().split("\n", 2)[2]  # without the '# Comparison: <dir>' heading
    return table if quick else table + figures(experiment, sweep_dir)


def figures(experiment: str, sweep_dir: Path) -> str:
    """Copy the sweep's plots beside RESULTS.md and link them."""
    FIGURES.mkdir(exist_ok=True)
    links = []
    for name in ("comparison.png", "comparison_by_distance.png"):
        if (sweep_dir / name).is_file():
            target = FIGURES / f"{experiment}_{name}"
            shutil.copyfile(sweep_dir / name, target)
            links.append(f"![{name}](figures/{target.name})")
    return "\n" + "\n\n".join(links) + "\n" if links else ""


def run(quick: bool = False) -> str:
    table, seconds, status, sweep_dir = sweep("compare_architectures", quick)
    size = "a 5k-token corpus, one epoch (--quick)" if quick else "the default synthetic corpus"
    return (
        f"Every architecture trained on {size}, on the same splits and token accounting; "
        f"perplexities on the test split, the oracle being the generator's own perplexity "
        f"(the best possible). The whole sweep took {seconds:,.0f} s "
        f"(exit status {status}); the plots (intervals, validation curves, the Pareto panels of "
        "perplexity against parameters and training time, and the excess over the oracle by "
        f"distance) follow the tables.\n\n{table}"
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
