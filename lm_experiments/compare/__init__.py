"""The comparison report of a sweep: which model is better, by how much, and is it real.

``python -m lm_experiments.compare SWEEP_DIR`` (or the Hydra callback at the end of a multirun)
reads what the runs wrote -- ``metrics.json``, ``scores/test.parquet``, the CSV logs -- and
writes ``comparison.{csv,md,png}``. One concept a module:

* ``runs.py``      reading a sweep directory into runs
* ``scores.py``    the per-sentence score files (their format, writer and reader)
* ``metric.py``    what the report ranks by, and which way is better
* ``bootstrap.py`` the statistics: paired bootstrap over sentences, hierarchical over seeds
* ``table.py``     grouping seeds, point estimates, intervals, ratios to the best
* ``plots.py``     the figures
* ``report.py``    the files, the console table, the command line
"""

from lm_experiments.compare.report import main, write_report
from lm_experiments.compare.runs import CSV_METRICS, ERROR_FILE, Run, find_runs, labels, read_run

__all__ = [
    "CSV_METRICS",
    "ERROR_FILE",
    "Run",
    "find_runs",
    "labels",
    "main",
    "read_run",
    "write_report",
]
