"""The comparison report on hand-made run directories (``metrics.json`` + ``scores/*.parquet``):
intervals, paired ratios, seeds, the biRNN's forward ranking, the by-distance table, old runs
without score files, a task metric where higher is better; and, once the LM task writes score
files, the end-to-end checks on real runs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from lm_experiments import compare
from lm_experiments.compare.scores import (
    BUCKETS,
    bucket_column,
    bucket_of_distance,
    distance_columns,
    read_scores,
    scores_path,
    sentence_of_token,
    sentence_sums,
    write_scores,
)
from lm_experiments.errors import UserError

N = 400  # sentences of the hand-made test split
RESAMPLES = 400


def read_csv(path: Path) -> dict[str, dict]:
    with path.open(newline="") as f:
        return {row["label"]: row for row in csv.DictReader(f)}


def number(value: str) -> float | None:
    return float(value) if value not in ("", None) else None


def simulated_scores(per_token: float, seed: int, n: int = N, spread: float = 0.5) -> dict:
    """Per-sentence scores of a model whose mean NLL per token is ``per_token``: sentence
    difficulty shared by every model (seed 0), the model's own noise from ``seed``."""
    shared = np.random.default_rng(0)
    tokens = 1 + shared.poisson(9, n)
    difficulty = shared.normal(0, spread, n)
    own = np.random.default_rng(seed).normal(0, 0.1, n)
    return {"tokens": tokens, "nll": tokens * (per_token + difficulty + own)}


def make_run(sweep: Path, job: str, overrides: list[str], scores: dict | None, **metrics) -> Path:
    """A run directory as a job leaves it: overrides, metrics.json, scores/test.parquet."""
    run_dir = sweep / job
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if scores is not None:
        write_scores(scores_path(run_dir), scores)
        metrics.setdefault("test/tokens", int(scores["tokens"].sum()))
        metrics.setdefault("test/ppl", math.exp(scores["nll"].sum() / scores["tokens"].sum()))
    metrics = {"model": overrides[0].split("=")[1], "dataset": "synthetic", **metrics}
    metrics.setdefault("params", 1000)
    metrics.setdefault("train_seconds", 10.0)
    (run_dir / "metrics.json").write_text(json.dumps({**metrics, "run_dir": str(run_dir)}))
    return run_dir


def report(sweep: Path, *args: str) -> dict[str, dict]:
    compare.main([str(sweep), "--quiet", "--resamples", str(RESAMPLES), *args])
    return read_csv(sweep / "comparison.csv")


# --- score files -----------------------------------------------------------------------------------
def test_score_file_round_trip_and_sentence_sums(tmp_path):
    # targets "a b <eos> c <eos> d <eos>": <eos> closes its sentence
    assert sentence_of_token([0, 0, 1, 1, 0, 1]).tolist() == [0, 0, 0, 1, 2, 2]
    sentences = np.array([0, 0, 0, 1, 2, 2])
    nll = np.array([0.5, 1.0, 2.0, 3.0, 0.25, 0.25])
    sums = sentence_sums(sentences, nll, 4)  # sentence 3 scored nothing
    assert sums.dtype == np.float64 and sums.tolist() == [3.5, 3.0, 0.5, 0.0]
    tokens = sentence_sums(sentences, np.ones(6), 4).astype(np.int64)
    path = write_scores(tmp_path / "scores" / "test.parquet", {"tokens": tokens, "nll": sums})
    columns = read_scores(path)
    assert columns["sentence"].tolist() == [0, 1, 2, 3]  # corpus order, written by default
    assert columns["tokens"].dtype == np.int64 and columns["nll"].dtype == np.float64
    assert columns["nll"].tolist() == [3.5, 3.0, 0.5, 0.0]
    assert not list(path.parent.glob(".*partial"))  # written atomically
    with pytest.raises(ValueError, match="different lengths"):
        write_scores(path, {"tokens": tokens, "nll": sums[:2]})
    with pytest.raises(ValueError, match="corpus order"):
        write_scores(path, {"sentence": [1, 0, 2, 3], "nll": sums})
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="not a readable score file"):
        read_scores(tmp_path / "bad.parquet")


def test_distance_buckets_and_their_columns():
    distance = np.array([0, 1, 3, 4, 6, 7, 10, 11, 40, -1])
    assert [BUCKETS[b] for b in bucket_of_distance(distance)] == [
        "none", "1-3", "1-3", "4-6", "4-6", "7-10", "7-10", "11+", "11+", "none",
    ]  # fmt: skip
    assert bucket_column("nll", "1-3") == "nll_1-3"
    with pytest.raises(ValueError, match="not one of"):
        bucket_column("nll", "2-5")
    sentence = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    nll, oracle = np.arange(10.0), np.full(10, 0.5)
    columns = distance_columns(sentence, distance, nll, oracle, 2)
    assert columns["tokens_1-3"].tolist() == [2, 0] and columns["nll_1-3"].tolist() == [3.0, 0.0]
    assert columns["tokens_none"].tolist() == [1, 1] and columns["nll_11+"].tolist() == [0, 15.0]
    total = sum(columns[bucket_column("nll", b)] for b in BUCKETS)  # the buckets partition
    assert total.tolist() == sentence_sums(sentence, nll, 2).tolist()
    assert sum(columns[bucket_column("tokens", b)] for b in BUCKETS).tolist() == [3, 7]
    assert sum(columns[bucket_column("oracle_nll", b)] for b in BUCKETS).tolist() == [1.5, 3.5]


# --- the report on hand-made sweeps ----------------------------------------------------------------
def test_intervals_ratios_and_significance(tmp_path):
    make_run(tmp_path, "0", ["model=ngram"], simulated_scores(3.0, seed=1))
    make_run(tmp_path, "1", ["model=lstm"], simulated_scores(2.6, seed=2))
    make_run(tmp_path, "2", ["model=rnnlm"], simulated_scores(2.605, seed=3))
    rows = report(tmp_path)
    assert list(rows) == ["lstm", "rnnlm", "ngram"]  # best first
    for row in rows.values():
        lo, ppl, hi = (number(row[c]) for c in ("test_ppl_lo", "test_ppl", "test_ppl_hi"))
        assert lo < ppl < hi and hi / lo < 1.2  # N sentences: a few percent either way
    best = rows["lstm"]
    assert number(best["ratio_to_best"]) == 1.0 and best["significant"] == "False"
    ngram = rows["ngram"]
    assert number(ngram["ratio_to_best"]) == pytest.approx(
        number(ngram["test_ppl"]) / number(best["test_ppl"])
    )
    assert number(ngram["ratio_lo"]) > 1 and ngram["significant"] == "True"

    # pairing: the ratio's interval is far narrower than two separate intervals would give
    def log_width(row, lo, hi):
        return math.log(number(row[hi]) / number(row[lo]))

    separate = math.hypot(*(log_width(r, "test_ppl_lo", "test_ppl_hi") for r in (ngram, best)))
    assert log_width(ngram, "ratio_lo", "ratio_hi") < separate / 3
    close = rows["rnnlm"]  # 0.005 nats/token apart: within the noise
    assert number(close["ratio_lo"]) < 1 < number(close["ratio_hi"])
    assert close["significant"] == "False"
    markdown = (tmp_path / "comparison.md").read_text()
    assert "percentile bootstrap over the test sentences, 400 resamples" in markdown


def test_identical_score_files_give_a_ratio_of_exactly_one(tmp_path):
    scores = simulated_scores(2.8, seed=5)
    make_run(tmp_path, "0", ["model=lstm", "model.hidden_dim=64"], scores)
    make_run(tmp_path, "1", ["model=lstm", "model.hidden_dim=128"], scores)
    rows = list(report(tmp_path).values())
    assert [number(row["ratio_to_best"]) for row in rows] == [1.0, 1.0]
    for row in rows:
        assert number(row["ratio_lo"]) <= 1.0 <= number(row["ratio_hi"])
        assert row["significant"] == "False"
    assert rows[0]["test_ppl_lo"] == rows[1]["test_ppl_lo"]


def test_seeds_of_one_configuration_are_one_row(tmp_path):
    per_seed = {1: 2.50, 2: 2.65, 3: 2.80}  # the seeds differ more than sentences can tell
    for job, (seed, nats) in enumerate(per_seed.items()):
        make_run(tmp_path, str(job), ["model=lstm", f"seed={seed}"], simulated_scores(nats, seed))
    make_run(tmp_path, "3", ["model=ngram", "seed=1"], simulated_scores(3.0, seed=9))
    (tmp_path / "4" / ".hydra").mkdir(parents=True)  # a seed that failed: a row of its own
    (tmp_path / "4" / ".hydra" / "overrides.yaml").write_text("[model=lstm, seed=4]\n")
    rows = report(tmp_path)
    assert list(rows) == ["lstm", "ngram", "lstm seed=4"]
    lstm = rows["lstm"]
    seed_ppl = [json.loads((tmp_path / j / "metrics.json").read_text())["test/ppl"] for j in "012"]
    assert lstm["seeds"] == "3" and lstm["job"] == "0,1,2"
    assert number(lstm["test_ppl"]) == pytest.approx(np.mean(seed_ppl), rel=1e-12)
    assert number(lstm["test_ppl_std"]) == pytest.approx(np.std(seed_ppl, ddof=1), rel=1e-12)
    # the interval holds the seed variance: about the range of the seeds, much wider than the
    # sentence-only interval of one seed
    lo, hi = number(lstm["test_ppl_lo"]), number(lstm["test_ppl_hi"])
    assert lo < seed_ppl[1] < hi and hi - lo > 0.7 * (max(seed_ppl) - min(seed_ppl))
    one_seed = tmp_path / "single"
    make_run(one_seed, "0", ["model=lstm"], simulated_scores(2.65, seed=2))
    single = report(one_seed)["lstm"]
    assert hi - lo > 1.5 * (number(single["test_ppl_hi"]) - number(single["test_ppl_lo"]))
    assert rows["ngram"]["seeds"] == "1" and rows["ngram"]["test_ppl_std"] == ""
    assert rows["ngram"]["significant"] == "True"
    assert rows["lstm seed=4"]["status"] == "failed"
    assert "4 runs finished, 1 failed." in (tmp_path / "comparison.md").read_text()


def test_birnn_is_ranked_by_its_forward_lm(tmp_path):
    forward = simulated_scores(2.7, seed=1)
    scores = {**forward, "nll_backward": forward["nll"] * 0.9}
    fwd = math.exp(forward["nll"].sum() / forward["tokens"].sum())
    combined = math.exp(
        (forward["nll"] + scores["nll_backward"]).sum() / 2 / forward["tokens"].sum()
    )
    make_run(
        tmp_path, "0", ["model=birnn"], scores,
        **{"test/ppl": combined, "test/ppl_forward": fwd, "test/ppl_backward": fwd * 0.8,
           "test/oracle_ppl": 10.0, "test/ppl_ratio": combined / 10.0},
    )  # fmt: skip
    make_run(tmp_path, "1", ["model=lstm"], simulated_scores(2.65, seed=2))
    rows = report(tmp_path)
    assert combined < number(rows["lstm"]["test_ppl"]) < fwd  # combined would rank it first
    assert list(rows) == ["lstm", "birnn"]
    birnn = rows["birnn"]
    assert number(birnn["test_ppl"]) == fwd and number(birnn["test_ppl_combined"]) == combined
    assert number(birnn["test_ppl_backward"]) == fwd * 0.8
    assert number(birnn["test_ppl_ratio"]) == pytest.approx(fwd / 10.0)
    assert number(birnn["test_ppl_lo"]) < fwd < number(birnn["test_ppl_hi"])  # from `nll`
    assert rows["lstm"]["test_ppl_combined"] == ""
    assert "fwd+bwd ppl" in (tmp_path / "comparison.md").read_text()


def with_buckets(scores: dict, excess_near: float, excess_far: float, seed: int) -> dict:
    """Bucket columns: an oracle NLL per bucket, the model's above it by a per-bucket excess."""
    rng = np.random.default_rng(seed)
    out = dict(scores)
    share = np.array([0.4, 0.3, 0.15, 0.1, 0.05])  # of each sentence's tokens, by bucket
    counts = np.floor(scores["tokens"][:, None] * share).astype(np.int64)
    counts[:, 0] += scores["tokens"] - counts.sum(1)
    for i, bucket in enumerate(BUCKETS):
        oracle = counts[:, i] * rng.uniform(1.5, 2.5, len(counts))
        excess = excess_near if i <= 1 else excess_far
        out[bucket_column("tokens", bucket)] = counts[:, i]
        out[bucket_column("oracle_nll", bucket)] = oracle
        out[bucket_column("nll", bucket)] = oracle + counts[:, i] * (excess + rng.normal(0, 0.05))
    out["nll"] = sum(out[bucket_column("nll", b)] for b in BUCKETS)
    out["oracle_nll"] = sum(out[bucket_column("oracle_nll", b)] for b in BUCKETS)
    return out


def test_by_distance_table_and_plot(tmp_path):
    window = with_buckets(simulated_scores(2.8, 1), excess_near=0.02, excess_far=0.5, seed=1)
    recurrent = with_buckets(simulated_scores(2.8, 2), excess_near=0.03, excess_far=0.05, seed=2)
    make_run(tmp_path, "0", ["model=ngram"], window)
    make_run(tmp_path, "1", ["model=lstm"], recurrent)
    report(tmp_path)
    with (tmp_path / "comparison_by_distance.csv").open() as f:
        rows = {(r["label"], r["bucket"]): r for r in csv.DictReader(f)}
    assert len(rows) == 2 * len(BUCKETS)
    for (label, bucket), row in rows.items():
        scores = window if label == "ngram" else recurrent
        tokens = scores[bucket_column("tokens", bucket)]
        excess = scores[bucket_column("nll", bucket)] - scores[bucket_column("oracle_nll", bucket)]
        assert int(row["tokens"]) == tokens.sum()
        assert number(row["excess"]) == pytest.approx(excess.sum() / tokens.sum(), rel=1e-12)
        assert number(row["lo"]) <= number(row["excess"]) <= number(row["hi"])
    assert number(rows["ngram", "11+"]["lo"]) > number(rows["lstm", "11+"]["hi"])
    assert number(rows["ngram", "1-3"]["excess"]) < number(rows["ngram", "11+"]["excess"])
    png = (tmp_path / "comparison_by_distance.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## Excess NLL over the oracle by distance" in (tmp_path / "comparison.md").read_text()


def test_runs_without_score_files_keep_their_point_estimates(tmp_path):
    make_run(tmp_path, "0", ["model=lstm"], simulated_scores(2.6, 1))
    old = make_run(tmp_path, "1", ["model=ngram"], None, **{"test/ppl": 20.0, "test/tokens": 4000})
    rows = report(tmp_path)
    ngram, lstm = rows["ngram"], rows["lstm"]
    assert number(ngram["test_ppl"]) == 20.0 and ngram["test_ppl_lo"] == ""
    assert number(ngram["ratio_to_best"]) == pytest.approx(20.0 / number(lstm["test_ppl"]))
    assert ngram["ratio_lo"] == "" and ngram["significant"] == ""
    assert "no scores/test.parquet" in ngram["note"]
    assert number(lstm["test_ppl_lo"]) < number(lstm["test_ppl"])  # the other run still has one
    markdown = (tmp_path / "comparison.md").read_text()
    assert "note dir 1 (ngram): no scores/test.parquet" in markdown
    assert (tmp_path / "comparison.png").is_file() and old.is_dir()


def test_a_score_file_that_does_not_add_up_is_flagged(tmp_path):
    scores = simulated_scores(2.6, 1)
    make_run(tmp_path, "0", ["model=lstm"], scores, **{"test/ppl": 1.01 * math.exp(2.6)})
    assert "its score file gives" in report(tmp_path)["lstm"]["note"]


def test_task_metric_where_higher_is_better(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.random(2000) < 0.75  # what every classifier gets right
    wrong, right = np.flatnonzero(~base), np.flatnonzero(base)
    changes = {"bow": (right, 100, 0), "lstm": (wrong, 100, 1), "gru": (wrong, 110, 1)}
    for job, (model, (pool, count, value)) in enumerate(changes.items()):
        correct = base.astype(np.int64)  # each model fixes (or breaks) its own sentences
        correct[rng.choice(pool, count, replace=False)] = value
        make_run(
            tmp_path, str(job), [f"model={model}"], None,
            **{"test/acc": correct.mean(), "test/f1": correct.mean() - 0.1, "test/majority_acc": 0.5},
        )  # fmt: skip
        write_scores(scores_path(tmp_path / str(job)), {"correct": correct})
    rows = report(tmp_path)  # auto: the runs report test/acc, not test/ppl
    assert list(rows) == ["gru", "lstm", "bow"]  # highest accuracy first
    bow, best = rows["bow"], rows["gru"]
    assert number(bow["test_acc_lo"]) < number(bow["test_acc"]) < number(bow["test_acc_hi"])
    assert number(bow["ratio_hi"]) < 1 and bow["significant"] == "True"
    assert rows["lstm"]["significant"] == "False" and number(best["ratio_to_best"]) == 1
    assert number(bow["test_majority_acc"]) == 0.5
    # any test/<key> with its direction given: ranked, without an interval
    by_f1 = report(tmp_path, "--metric", "test/f1", "--higher-is-better")
    assert list(by_f1) == ["gru", "lstm", "bow"] and by_f1["gru"]["test_f1_lo"] == ""
    lower = report(tmp_path, "--metric", "acc", "--lower-is-better")
    assert list(lower) == ["bow", "lstm", "gru"]


def test_python_dash_m_compare_prints_the_table_and_reports_bad_input(tmp_path):
    from tests.conftest import run_cli

    make_run(tmp_path / "sweep", "0", ["model=lstm"], simulated_scores(2.6, 1))
    result = run_cli(
        [str(tmp_path / "sweep"), "--resamples", "100"], tmp_path, "lm_experiments.compare"
    )
    assert result.returncode == 0, result.stderr
    assert "lstm" in result.stdout and "comparison written to" in result.stdout
    result = run_cli([str(tmp_path / "nowhere")], tmp_path, "lm_experiments.compare")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "no such directory" in result.stderr


def test_unknown_metric_without_a_direction_is_a_user_error(tmp_path, capsys):
    make_run(tmp_path, "0", ["model=lstm"], simulated_scores(2.6, 1))
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path), "--metric", "test/bleu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: metric 'test/bleu': say which way is better")
        and "Traceback" not in err
    )


def test_pareto_panels_plot_every_configuration(tmp_path):
    from matplotlib.figure import Figure

    make_run(tmp_path, "0", ["model=ngram"], simulated_scores(3.0, 1), params=10**6)
    make_run(tmp_path, "1", ["model=lstm"], simulated_scores(2.6, 2), params=10**4)
    runs = compare.find_runs(tmp_path)
    from lm_experiments.compare.table import compare as build

    comparison = build(runs, resamples=RESAMPLES)
    saved = {}
    original = Figure.savefig

    def keep(fig, path, **kwargs):  # the real figure, inspected before it is written
        saved["axes"] = fig.axes
        return original(fig, path, **kwargs)

    Figure.savefig = keep
    try:
        from lm_experiments.compare.plots import plot

        plot(runs, comparison, tmp_path / "comparison.png")
    finally:
        Figure.savefig = original
    bars, curves, by_params, by_time = saved["axes"]
    assert by_params.get_xscale() == "log"  # 10^4 .. 10^6 parameters
    for axes, column in ((by_params, "params"), (by_time, "train_seconds")):
        points = [line for line in axes.get_lines() if line.get_marker() == "o"]
        assert len(points) == 2
        xs = sorted(float(line.get_xdata()[0]) for line in points)
        assert xs == sorted(float(row[column]) for row in comparison.rows)
        assert axes.collections  # the interval bars
    assert len(bars.patches) == 2


# --- end to end: real runs (turn on once the LM task writes score files) ---------------------------
def written_scores(run_dir: Path) -> dict:
    path = scores_path(run_dir)
    if not path.is_file():
        pytest.skip("score files not written yet (the LM task's evaluation writes them)")
    return read_scores(path)


@pytest.fixture(scope="module")
def trained_pair(tmp_path_factory, cache_dir):
    """A 2-gram and a small LSTM trained on the embedded corpus (real runs, in this process),
    laid out as the jobs of a sweep."""
    from lm_experiments.train import train
    from tests.conftest import FAST, compose_config

    sweep = tmp_path_factory.mktemp("pair")
    corpus = [
        "dataset=synthetic",
        "dataset.train_tokens=40000",
        "dataset.valid_tokens=4000",
        "dataset.test_tokens=10000",
    ]
    jobs = {
        "0": ["model=ngram", "model.order=2"],
        # ~8 s: test ppl ~16 against the 2-gram's ~25 (oracle 9.3)
        "1": [
            "model=lstm",
            "model.embedding_dim=64",
            "model.hidden_dim=64",
            "trainer.max_epochs=8",
        ],
    }
    for job, overrides in jobs.items():  # the n-gram first: it counts in a second
        run_dir = sweep / job
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
        train(compose_config([*overrides, *corpus, *FAST], run_dir, cache_dir))
        written_scores(run_dir)  # skips before training the LSTM while no file is written
    return sweep


def test_end_to_end_sums_equal_the_corpus_sums(trained_pair):
    for job in ("0", "1"):
        scores = written_scores(trained_pair / job)
        metrics = json.loads((trained_pair / job / "metrics.json").read_text())
        assert scores["tokens"].sum() == metrics["test/tokens"]
        assert math.exp(scores["nll"].sum() / scores["tokens"].sum()) == pytest.approx(
            metrics["test/ppl"], rel=1e-9
        )
        oracle = math.exp(scores["oracle_nll"].sum() / scores["tokens"].sum())
        assert oracle == pytest.approx(metrics["test/oracle_ppl"], rel=1e-9)


def test_end_to_end_a_bigram_is_significantly_worse_than_the_lstm(trained_pair):
    rows = report(trained_pair)
    ngram, lstm = (next(r for r in rows.values() if r["model"] == m) for m in ("ngram", "lstm"))
    assert number(lstm["ratio_to_best"]) == 1.0
    assert ngram["significant"] == "True" and number(ngram["ratio_lo"]) > 1
    assert (trained_pair / "comparison_by_distance.png").is_file()  # the embedded corpus: buckets
