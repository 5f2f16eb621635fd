"""Per-sentence score files (``<run_dir>/scores/<split>.parquet``): written by every evaluation of
every LM family, and adding up exactly to ``metrics.json``'s corpus figures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lm_experiments.compare.scores import BUCKETS, read_scores, scores_path
from tests.conftest import FAST, compose_config

EMBEDDED = [
    "dataset=synthetic",
    "dataset.train_tokens=6000",
    "dataset.valid_tokens=1500",
    "dataset.test_tokens=2000",
    "trainer.max_epochs=1",
]
TINY = {
    "nnlm": ["model=nnlm", "model.embedding_dim=8", "model.hidden_dim=8"],
    "rnnlm": ["model=rnnlm", "model.embedding_dim=8", "model.hidden_dim=8"],
    "stacked_rnn": ["model=stacked_rnn", "model.embedding_dim=8", "model.hidden_dim=8"],
    "lstm": ["model=lstm", "model.embedding_dim=8", "model.hidden_dim=8"],
    "birnn": ["model=birnn", "model.embedding_dim=8", "model.hidden_dim=8"],
    "ngram": ["model=ngram", "model.order=3"],
}


def assert_scores_add_up(run_dir, metrics: dict, stage: str) -> dict:
    """The file's sums reproduce the run's perplexity and token count (float64, exactly)."""
    scores = read_scores(scores_path(run_dir, stage))
    assert (scores["sentence"] == np.arange(len(scores["sentence"]))).all()
    assert scores["nll"].dtype == np.float64
    assert int(scores["tokens"].sum()) == metrics[f"{stage}/tokens"]
    forward = metrics.get(f"{stage}/ppl_forward", metrics[f"{stage}/ppl"])
    ppl = math.exp(scores["nll"].sum() / scores["tokens"].sum())
    assert ppl == pytest.approx(forward, rel=1e-9)
    return scores


@pytest.mark.parametrize("family", sorted(TINY))
def test_score_files_add_up_to_metrics_for_every_family(family, tmp_path, cache_dir):
    from lm_experiments.train import train

    metrics = train(compose_config([*TINY[family], *EMBEDDED, *FAST], tmp_path, cache_dir))
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for stage in ("val", "test"):
        scores = assert_scores_add_up(tmp_path, saved, stage)
        assert not (tmp_path / "scores" / f"{stage}.tokens.parquet").exists()  # an option
        oracle = math.exp(scores["oracle_nll"].sum() / scores["tokens"].sum())
        assert oracle == pytest.approx(saved[f"{stage}/oracle_ppl"], rel=1e-9)
        for quantity in ("tokens", "nll", "oracle_nll"):  # the buckets partition every token
            total = sum(scores[f"{quantity}_{b}"] for b in BUCKETS)
            np.testing.assert_allclose(total, scores[quantity], rtol=1e-12)
    if family == "birnn":
        scores = read_scores(scores_path(tmp_path, "test"))
        backward = math.exp(scores["nll_backward"].sum() / scores["tokens"].sum())
        assert backward == pytest.approx(saved["test/ppl_backward"], rel=1e-9)
    assert metrics["test/ppl"] == saved["test/ppl"]


def test_two_processes_write_the_one_process_score_file(tmp_path, cache_dir):
    """2-process gloo DDP: rank 0 writes the rows of all ranks, in corpus order, as one process."""
    from tests.test_ddp import DDP, one_and_two_processes

    run = [*TINY["lstm"], *EMBEDDED, *FAST, "model.dropout=0.0", "dataset.eval_batch_size=4"]
    _, double, _ = one_and_two_processes(run, [], DDP, tmp_path, cache_dir)
    for stage in ("val", "test"):
        one = read_scores(scores_path(tmp_path / "one", stage))
        two = assert_scores_add_up(tmp_path / "two", double, stage)
        assert sorted(one) == sorted(two)
        np.testing.assert_array_equal(two["tokens"], one["tokens"])
        for column in one:
            np.testing.assert_allclose(two[column], one[column], rtol=1e-6, err_msg=column)


def test_a_trigram_misses_more_beyond_its_reach_than_within_it(tmp_path, cache_dir):
    """A 3-gram sees two tokens back: its excess NLL per token over the generator's is larger
    where the deciding word is 4 or more tokens back than where it is 1-3 back."""
    from lm_experiments.train import train

    corpus = ["dataset=synthetic", "dataset.train_tokens=40000", "dataset.test_tokens=10000"]
    train(compose_config(["model=ngram", "model.order=3", *corpus, *FAST], tmp_path, cache_dir))
    scores = read_scores(scores_path(tmp_path, "test"))

    def excess(buckets):
        nll = sum(scores[f"nll_{b}"].sum() - scores[f"oracle_nll_{b}"].sum() for b in buckets)
        return nll / sum(scores[f"tokens_{b}"].sum() for b in buckets)

    beyond = [b for b in BUCKETS if b not in ("none", "1-3")]
    assert sum(scores[f"tokens_{b}"].sum() for b in beyond) > 100
    assert excess(beyond) > excess(["1-3"]) > 0


def test_score_app_scores_a_kenlm_arpa_file_per_sentence_as_kenlm(tmp_path, cache_dir):
    """``python -m lm_experiments.score model=ngram model.arpa_path=...``: KenLM's own 3-gram
    joins a comparison; the file's rows are KenLM's own per-sentence log10 probabilities."""
    from tests.conftest import run_cli, shared_path

    folder = shared_path("reference", "kenlm", "ptb-mini")
    result = run_cli(
        [
            "model=ngram",
            "model.order=3",
            f"model.arpa_path={folder / 'order3.arpa.gz'}",
            "dataset=text",
            f"dataset.train_path={folder / 'train.txt'}",
            f"dataset.valid_path={folder / 'valid.txt'}",
            f"dataset.test_path={folder / 'test.txt'}",
            *FAST,
            f"hydra.run.dir={tmp_path / 'run'}",
            f"paths.cache_dir={cache_dir}",
        ],
        cwd=tmp_path,
        module="lm_experiments.score",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    scores = assert_scores_add_up(tmp_path / "run", metrics, "test")
    lines = (folder / "order3.test.scores.tsv").read_text().splitlines()[1:]
    kenlm = np.array([[float(x) for x in line.split("\t")[1:]] for line in lines])  # [n, 2]
    np.testing.assert_array_equal(scores["tokens"], kenlm[:, 0])
    np.testing.assert_allclose(scores["nll"], -kenlm[:, 1] * math.log(10), rtol=1e-5)


def test_per_token_scores_add_up_to_the_sentence_file_and_are_the_models_own(tmp_path, cache_dir):
    """``+score.per_token=true`` in training and ``score.per_token=true`` in the score app write
    ``<split>.tokens.parquet``: one row per scored token, in corpus order, whose sums by sentence
    are the sentence file's exactly, and whose first sentences' NLLs are the checkpoint's own
    -log softmax, computed here by hand on the test stream."""
    import pyarrow.parquet as pq
    import torch

    from lm_experiments.tasks.loading import load_task
    from lm_experiments.tasks.scoring import token_scores_path
    from lm_experiments.train import train
    from tests.conftest import run_cli

    tiny = [*TINY["rnnlm"], *EMBEDDED]
    cfg = compose_config([*tiny, *FAST, "+score.per_token=true"], tmp_path / "train", cache_dir)
    trained = train(cfg)
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    result = run_cli(
        [*tiny, *FAST, f"ckpt_path={ckpt}", "score.per_token=true"]
        + [f"hydra.run.dir={tmp_path / 'score'}", f"paths.cache_dir={cache_dir}"],
        cwd=tmp_path,
        module="lm_experiments.score",
    )
    assert result.returncode == 0, result.stderr[-4000:]
    scored = json.loads((tmp_path / "score" / "metrics.json").read_text())
    itos = (tmp_path / "score" / "vocab.txt").read_text().splitlines()
    for run_dir, metrics in ((tmp_path / "train", trained), (tmp_path / "score", scored)):
        for stage in ("val", "test"):
            sentences = assert_scores_add_up(run_dir, metrics, stage)
            tokens = pq.read_table(token_scores_path(run_dir, stage)).to_pydict()
            tokens = {name: np.asarray(values) for name, values in tokens.items()}
            sentence, n = tokens["sentence"], len(sentences["sentence"])
            assert len(sentence) == metrics[f"{stage}/tokens"]
            assert (np.diff(sentence) >= 0).all() and sentence[-1] == n - 1
            np.testing.assert_array_equal(np.bincount(sentence), sentences["tokens"])
            for column in ("nll", "oracle_nll"):  # the same float64 additions: exactly equal
                sums = np.bincount(sentence, weights=tokens[column], minlength=n)
                np.testing.assert_array_equal(sums, sentences[column], err_msg=column)
            ends = tokens["token"] == "<eos>"
            np.testing.assert_array_equal(ends, np.r_[sentence[1:] != sentence[:-1], True])
            starts = np.r_[True, sentence[1:] != sentence[:-1]]
            np.testing.assert_array_equal(tokens["position"][starts], 0)
            np.testing.assert_array_equal(np.diff(tokens["position"])[~starts[1:]], 1)
            assert [itos[i] for i in tokens["token_id"][:50]] == list(tokens["token"][:50])
    # the test split's first three sentences, scored by hand from a fresh state
    task = load_task(str(ckpt))
    first = tokens["sentence"] < 3
    targets = torch.as_tensor(tokens["token_id"][first])[None]  # [1, T]
    inputs = torch.cat([torch.zeros_like(targets[:, :1]), targets[:, :-1]], dim=1)
    inputs[0, 0] = itos.index("<eos>")
    with torch.no_grad():
        logits, _ = task(inputs, task.init_state(1))
        nll = -torch.log_softmax(logits.double(), -1).gather(2, targets[..., None])[0, :, 0]
    np.testing.assert_allclose(tokens["nll"][first], nll.numpy(), rtol=1e-5)
