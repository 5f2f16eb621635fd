"""Real text: every family on PTB-mini and WT2-mini (``-m experiment=compare_ptb_mini`` and
``compare_wt2_mini``), beside the published tables for the full corpora.

The two sweeps run side by side, each on half of the cores (``threads=``), so the section takes
the time of the longer one (about an hour on 2 cores). Each model keeps its experiment's budget
(at most 14 minutes of training); nothing is selected on test. The summary puts each family's
test perplexity, its 95% interval and its paired ratio to the 5-gram next to the published
figure for the same family on the full corpus.

    python -m benchmarks.run real_text            # both sweeps (about an hour on 2 cores)
    python -m benchmarks.run real_text --quick    # one epoch on a slice: a smoke check
    python -m benchmarks.bench_real_text PTB_SWEEP_DIR WT2_SWEEP_DIR   # the section from
                                                  # finished sweeps, written into RESULTS.md
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import OmegaConf

from benchmarks.bench_sweep import ROOT, comparison_table, sweep
from lm_experiments.compare.runs import find_runs
from lm_experiments.compare.table import compare, paired_interval

TITLE = "Real text: PTB-mini and WT2-mini beside the published tables"
SHARED = ROOT.parent / "shared" / "data"
EXPERIMENTS = {"PTB-mini": "compare_ptb_mini", "WT2-mini": "compare_wt2_mini"}
BASELINE = "ngram"  # the 5-gram Kneser-Ney, the published tables' count-based row
GOAL = 0.90  # the regularised LSTM's test perplexity at most 90% of the 5-gram's

# Published test perplexities on the full corpora, by this project's family names
PUBLISHED = {
    "PTB-mini": {
        "ngram": "141.2 (KN5; Mikolov 2012, Table 4.1)",
        "nnlm": "140.2 (feed-forward NNLM; Mikolov 2012)",
        "rnnlm": "124.7 (RNNLM; Mikolov 2012)",
        "lstm": "82.7 medium, 78.4 large (Zaremba et al. 2014)",
    },
    "WT2-mini": {"lstm": "65.8 (AWD-LSTM; Merity et al. 2018)"},
}
WHY = (
    "The mini corpora are not the published ones: each trains on 90% of the standard *valid* "
    "file (PTB: ~66k tokens, a fourteenth of its 930k-token training split; WikiText-2: ~195k, a "
    "tenth of its 2.1M), validates on the rest of that file, and builds its vocabulary from that "
    "training part only (PTB-mini 5.8k types instead of 10k, WT2-mini 13k instead of 33k; a "
    "test word outside it is `<unk>`). With a tenth of the data every model is worse, and the "
    "neural ones lose most, so the gaps are narrower than the published ones, and the figures "
    "are comparable with each other, not with the published column."
)
QUICK = ("trainer.max_epochs=1", "trainer.limit_train_batches=5", "callbacks=none")


def paired_to_baseline(sweep_dir: Path) -> dict[str, dict]:
    """Per family: the test ppl with its interval, and the paired ratio to the 5-gram with its
    interval (``compare.table.paired_interval``: the same resampled test sentences for both)."""
    comparison = compare(find_runs(sweep_dir))
    base = next((g for g in comparison.groups if g.row["model"] == BASELINE), None)
    out = {}
    for group in comparison.groups:
        row = {k: group.row[k] for k in ("test_ppl", "test_ppl_lo", "test_ppl_hi")}
        paired = paired_interval(group, base) if base is not None else None
        if paired is not None:
            row["ratio"] = group.row["test_ppl"] / base.row["test_ppl"]
            row["ratio_lo"], row["ratio_hi"] = paired
        out[group.row["model"]] = row
    return out


def summary(results: dict[str, dict[str, dict]]) -> str:
    families = ["ngram", "nnlm", "rnnlm", "lstm", "birnn", "transformer"]
    header = ["family"]
    for corpus in results:
        header += [f"{corpus} test ppl [95% CI]", "/ 5-gram [paired 95% CI]", "published (full)"]
    lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for family in families:
        cells = [family]
        for corpus, rows in results.items():
            r = rows.get(family)
            if r is None or r["test_ppl"] is None:
                cells += ["(no run)", "", PUBLISHED[corpus].get(family, "")]
                continue
            ratio = (
                f"{r['ratio']:.3f} [{r['ratio_lo']:.3f}, {r['ratio_hi']:.3f}]"
                if "ratio" in r
                else ""
            )
            cells += [
                f"{r['test_ppl']:.1f} [{r['test_ppl_lo']:.1f}, {r['test_ppl_hi']:.1f}]",
                ratio,
                PUBLISHED[corpus].get(family, ""),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goal(results: dict[str, dict[str, dict]]) -> str:
    lines = ["Goal: the regularised LSTM at least 10% below the 5-gram in test perplexity on both."]
    for corpus, rows in results.items():
        lstm = rows.get("lstm", {})
        if "ratio" not in lstm:
            lines.append(f"- {corpus}: no paired LSTM / 5-gram ratio")
            continue
        lines.append(
            f"- {corpus}: LSTM / 5-gram {lstm['ratio']:.3f}, {(1 - lstm['ratio']) * 100:.1f}% "
            f"better (paired 95% interval {lstm['ratio_lo']:.3f}-{lstm['ratio_hi']:.3f}): "
            + ("met" if lstm["ratio"] <= GOAL else "**not met**")
        )
    return "\n".join(lines)


def study_table(experiment: str) -> str:
    """The LSTM's Optuna study on this corpus (``hparams_search=lstm_mini_optuna``), if one ran
    here: its trials by validation perplexity, the objective (test is never looked at)."""
    import optuna

    study_dir = ROOT / "logs" / experiment / "optuna"
    dbs = sorted(study_dir.glob("*/optuna.db"))
    if not dbs:
        return ""
    study = optuna.load_study(study_name=dbs[0].parent.name, storage=f"sqlite:///{dbs[0]}")
    trials = sorted((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    names = sorted({name for t in trials for name in t.params})
    configs = sorted(dbs[0].parent.glob("*/*/.hydra/config.yaml"))
    budget = OmegaConf.load(configs[0]).trainer.max_time if configs else "?"
    lines = [
        f"Optuna study `{study.study_name}` ({len(trials)} finished trials of `max_time` "
        f"{budget} each; objective: the best validation perplexity, test never looked at):",
        "",
        "| trial | val ppl | " + " | ".join(n.split(".")[-1] for n in names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for t in trials:
        cells = [
            f"{t.params[n]:.4g}" if isinstance(t.params[n], float) else str(t.params[n])
            for n in names
        ]
        lines.append(f"| {t.number} | {t.value:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def section(done: dict[str, tuple[str, float, int, Path]], how: str) -> str:
    """The section from the finished sweeps: corpus -> (table, seconds, exit status, dir)."""
    results, tables = {}, []
    for corpus, (table, seconds, status, sweep_dir) in done.items():
        if (sweep_dir / "comparison.csv").is_file():
            results[corpus] = paired_to_baseline(sweep_dir)
        tables.append(
            f"### {corpus} (`-m experiment={EXPERIMENTS[corpus]}`, {seconds / 60:.0f} min, "
            f"exit status {status})\n\n{table}\n{study_table(EXPERIMENTS[corpus])}"
        )
    return (
        f"{how} Each model trained for at most 14 minutes (the experiments' `trainer.max_time`); "
        "early stopping, the learning-rate schedule and the tested checkpoint all follow "
        "validation. Ratios below 1 are better than the 5-gram.\n\n"
        f"{summary(results)}\n\n{goal(results)}\n\n{WHY}\n\n" + "\n\n".join(tables)
    )


def run(quick: bool = False) -> str:
    if not SHARED.is_dir():
        return f"Skipped: {SHARED} (Penn Treebank and WikiText-2) is not on this machine.\n"
    threads = max(1, (os.cpu_count() or 2) // len(EXPERIMENTS))
    overrides = (f"threads={threads}", *(QUICK if quick else ()))
    with ThreadPoolExecutor(len(EXPERIMENTS)) as pool:  # two processes, side by side
        futures = {
            corpus: pool.submit(sweep, experiment, quick, overrides)
            for corpus, experiment in EXPERIMENTS.items()
        }
        done = {corpus: future.result() for corpus, future in futures.items()}
    how = f"Both sweeps ran side by side, each with `threads={threads}` (half of the cores)."
    return section(done, how)


def from_sweeps(sweep_dirs: list[str]) -> str:
    """The section rebuilt from finished sweep directories (PTB-mini's, then WT2-mini's): sweeps
    run by hand, one after the other or side by side; wall times are the runs' training time."""
    done, threads = {}, set()
    for corpus, sweep_dir in zip(EXPERIMENTS, map(Path, sweep_dirs), strict=True):
        table = comparison_table(EXPERIMENTS[corpus], sweep_dir) or "(no comparison.md)"
        metrics = [json.loads(p.read_text()) for p in sweep_dir.glob("*/metrics.json")]
        done[corpus] = (table, sum(m.get("train_seconds", 0) for m in metrics), 0, sweep_dir)
        threads.add(str(OmegaConf.load(sweep_dir / "multirun.yaml").get("threads")))
    names = " and ".join(f"`{Path(d).name}`" for d in sweep_dirs)
    return section(done, f"Rebuilt from the sweeps {names} (`threads={'/'.join(threads)}`).")


if __name__ == "__main__":
    import sys

    from benchmarks.run import write_section

    if sys.argv[1:] and sys.argv[1] != "--quick":  # rebuild from two finished sweeps
        command = f"python -m benchmarks.bench_real_text {' '.join(sys.argv[1:])}"
        write_section(Path(__file__).stem, TITLE, from_sweeps(sys.argv[1:]), command)
    else:
        print(run(quick="--quick" in sys.argv))
