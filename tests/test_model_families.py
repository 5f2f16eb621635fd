"""What every model family must satisfy, whatever its architecture.

* it predicts a token from the tokens before it only (never from that token or later ones);
* it scores exactly the split's tokens: every word and one <eos> per sentence;
* briefly trained on the generated corpus, it learns (beats the unigram model) and does not beat
  the generator itself: a test perplexity below the oracle's, beyond chance, means a leak.

A family joins by adding its config name to FAMILIES (ALL_FAMILIES adds the count-based n-gram,
which the causality check cannot take: untrained, it is uniform whatever it reads).
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from lm_experiments.data.batching import ColumnBatches
from lm_experiments.data.vocab import IGNORE_INDEX, UNK_ID
from lm_experiments.models.birnn import BiRNNLM
from lm_experiments.models.rnnlm import RNNLM
from lm_experiments.train import build, build_net
from lm_experiments.utils import instantiate
from tests.conftest import FAST, compose_config, toy_overrides

FAMILIES = ["rnnlm", "nnlm", "stacked_rnn", "lstm", "birnn", "transformer"]
ALL_FAMILIES = [*FAMILIES, "ngram"]
V = 12  # vocabulary size of the untrained models


def family(name: str, tmp_path, cache_dir, vocab_size: int = V):
    """The model ``model=name`` configures, untrained, in eval mode."""
    cfg = compose_config([f"model={name}", *FAST], tmp_path, cache_dir)
    torch.manual_seed(0)
    return build_net(cfg.model, vocab_size).eval()


def forward_scores(model, x: torch.Tensor) -> torch.Tensor:
    """x [B, N+1] read as one column -> [B, N]: -log p(x[:, t+1] | x[:, :t+1])."""
    score = model.forward_nll if isinstance(model, BiRNNLM) else model.token_nll
    with torch.no_grad():
        nll, _ = score(x[:, :-1], x[:, 1:], model.init_state(x.size(0)))
    return nll


def with_token(x: torch.Tensor, position: int, token: int) -> torch.Tensor:
    x = x.clone()
    x[:, position] = token
    return x


def normaliser(scores, x: torch.Tensor, t: int, predicted: int) -> torch.Tensor:
    """sum over v of p(v) at scored position t, trying every v at the predicted token's place.

    One for a model whose prediction does not depend on the token it predicts; a model that
    peeks at it can give each v a high probability, and the sum is no longer one.
    """
    return sum(torch.exp(-scores(with_token(x, predicted, v))[:, t]) for v in range(V))


@pytest.mark.parametrize("name", FAMILIES)
def test_prediction_sees_neither_the_predicted_token_nor_later_ones(name, tmp_path, cache_dir):
    model = family(name, tmp_path, cache_dir)
    scores = lambda x: forward_scores(model, x)  # noqa: E731
    torch.manual_seed(1)
    x = torch.randint(0, V, (2, 17))
    before = scores(x)
    for t in (0, 6, 14):
        total = normaliser(scores, x, t, predicted=t + 1)
        assert torch.allclose(total, torch.ones(2), atol=1e-4), total
        changed = x.clone()
        changed[:, t + 2 :] = (x[:, t + 2 :] + 1 + torch.randint(0, V - 1, (1,))) % V
        after = scores(changed)
        assert torch.allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-5)
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-4)


class PeekingRNNLM(RNNLM):
    """A broken model for the controls below: it reads the token it is asked to predict."""

    def token_nll(self, inputs, targets, state=None):
        return super().token_nll(targets.clamp(min=0), targets, state)


def test_the_causality_check_catches_a_model_that_peeks():
    torch.manual_seed(0)
    model = PeekingRNNLM(V, embedding_dim=8, hidden_dim=12).eval()
    x = torch.randint(0, V, (2, 17))
    total = normaliser(lambda x: forward_scores(model, x), x, 6, predicted=7)
    assert not torch.allclose(total, torch.ones(2), atol=1e-2)


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_every_family_scores_every_word_and_one_eos_per_sentence(
    name, tmp_path, cache_dir, toy_corpus
):
    """Through a real Trainer.test, with column sizes that force padding in the last batch."""
    overrides = [*toy_overrides(toy_corpus), f"model={name}", *FAST]
    cfg = compose_config(
        [*overrides, "dataset.eval_batch_size=3", "dataset.bptt=7"], tmp_path, cache_dir
    )
    datamodule, model = build(cfg)
    L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
        model, datamodule=datamodule, verbose=False
    )
    lines = [line.split() for line in toy_corpus["test"].read_text().splitlines() if line.strip()]
    assert model.results["test"]["tokens"] == sum(len(words) + 1 for words in lines)


# --- the leak detector -------------------------------------------------------------------------
#
# On the generated corpus every sentence is drawn independently, and the corpus records the exact
# NLL of each token under the generator. For a model trained on other data, the excess NLL of
# test sentence j, d_j = NLL_model(s_j | earlier text) - NLL_oracle(s_j), has a non-negative mean
# given everything before it (it is a KL divergence: s_j is independent of the past). So the mean
# excess per token is >= 0 up to chance, and by the central limit theorem for such sums it falls
# below -3 standard errors with probability ~0.1%. The standard error is estimated from the
# d_j themselves: SE = sqrt(J) * std(d_j) / N over J sentences and N tokens. The backward LM
# scores each sentence's words and the <eos> before it from the right; under the generator those
# tokens have the same total NLL as the sentence read forwards, and the mirror argument holds.

LEAK_RUN = [
    "dataset.train_tokens=20000",
    "dataset.valid_tokens=2000",
    "dataset.test_tokens=4000",
    "dataset.eval_batch_size=4",
    "trainer.max_epochs=2",
    *FAST,
]


# windows come model.train_batch_size at a time (100 here: a few dozen steps an epoch)
BRIEFLY = {"nnlm": ["model.train_batch_size=100"]}


def trained(overrides: list[str], tmp_path, cache_dir):
    """Fit and test like train.py, keeping the model for per-token scores."""
    cfg = compose_config([*LEAK_RUN, *overrides], tmp_path, cache_dir)
    L.seed_everything(0)
    datamodule, model = build(cfg)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    if model.count_based:  # the n-gram: counted once, no training loop
        model.count_and_validate(trainer, datamodule)
    else:
        trainer.fit(model, datamodule=datamodule)
    trainer.test(model, datamodule=datamodule, verbose=False)
    return datamodule, model


def per_token_nll(model, datamodule) -> dict[str, np.ndarray]:
    """Each direction's NLL of every test token, in stream order (whole columns, one pass)."""
    stream = datamodule.streams["test"]
    inputs, targets = ColumnBatches(stream, datamodule.eval_batch_size, bptt=len(stream) + 1)[0]
    model.eval()
    with torch.no_grad():
        if isinstance(model.net, BiRNNLM):
            net = model.net
            nll = {
                "forward": net.forward_nll(inputs, targets, net.init_state(inputs.size(0)))[0],
                "backward": net.backward_nll(inputs, targets),
            }
        else:
            nll = {"": model.token_nll(inputs, targets, model.init_state(inputs.size(0)))[0]}
    mask = targets != IGNORE_INDEX  # columns are consecutive pieces of the stream
    return {d: scores[mask].double().numpy() for d, scores in nll.items()}


def excess_over_oracle(model, datamodule) -> dict[str, tuple[float, float]]:
    """Per direction: (mean excess NLL per token over the oracle, its standard error)."""
    test = datamodule.corpus["test"].with_format("numpy")["oracle_nll"]
    assert not (datamodule.streams["test"] == UNK_ID).any(), "<unk> pools words: no bound"
    oracle = np.concatenate(test)
    sentence_ends = np.cumsum([len(nll) for nll in test])[:-1]
    out = {}
    for direction, nll in per_token_nll(model, datamodule).items():
        reported = model.results["test"][f"ppl_{direction}" if direction else "ppl"]
        assert math.log(reported) == pytest.approx(nll.mean(), rel=1e-4)  # what metrics.json says
        d = np.array([s.sum() for s in np.split(nll - oracle, sentence_ends)])  # per sentence
        out[direction] = (d.sum() / len(nll), math.sqrt(len(d)) * d.std(ddof=1) / len(nll))
    return out


def unigram_perplexity(datamodule) -> float:
    counts = np.bincount(datamodule.streams["train"], minlength=len(datamodule.vocab))
    p = counts / counts.sum()
    return float(np.exp(-np.log(p[datamodule.streams["test"]]).mean()))


@pytest.mark.parametrize("name", ALL_FAMILIES)
def test_briefly_trained_model_learns_but_never_beats_the_oracle(name, tmp_path, cache_dir):
    datamodule, model = trained([f"model={name}", *BRIEFLY.get(name, [])], tmp_path, cache_dir)
    results = model.results["test"]
    assert results["ppl"] < 0.7 * unigram_perplexity(datamodule), results  # it learnt
    for direction, (excess, se) in excess_over_oracle(model, datamodule).items():
        assert excess > -3 * se, (direction or "forward", excess, se, results)


def test_the_leak_detector_catches_a_model_that_peeks(tmp_path, cache_dir):
    peeking = f"model._target_={PeekingRNNLM.__module__}.PeekingRNNLM"
    datamodule, model = trained(["model=rnnlm", peeking], tmp_path, cache_dir)
    ((excess, se),) = excess_over_oracle(model, datamodule).values()
    assert excess < -3 * se, (excess, se)
    assert model.results["test"]["ppl"] < model.results["test"]["oracle_ppl"]


# --- the configs: one optimizer and one scheduler group shared by every family ----------------

OPTIMIZERS = {  # what each family trained with before the groups were shared (unchanged)
    "rnnlm": ("torch.optim.SGD", 1.0),
    "nnlm": ("torch.optim.Adam", 0.003),  # 0.001 until model.train_batch_size (256) came
    "stacked_rnn": ("torch.optim.Adam", 0.003),
    "lstm": ("torch.optim.Adam", 0.003),
    "birnn": ("torch.optim.Adam", 0.003),
    "transformer": ("torch.optim.AdamW", 0.001),
}


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_keeps_its_optimizer_and_the_shared_plateau_schedule(name, tmp_path, cache_dir):
    cfg = compose_config([f"model={name}", "model.scheduler.patience=2"], tmp_path, cache_dir)
    assert (cfg.model.optimizer._target_, cfg.model.optimizer.lr) == OPTIMIZERS[name]
    scheduler = dict(cfg.model.scheduler)
    assert scheduler == {
        "_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
        "_partial_": True,
        "mode": "min",
        "factor": 0.5,
        "patience": 2,  # the override reached it
        "threshold": 0.003,
    }
    _, task = build(
        compose_config([f"model={name}", "model.optimizer.lr=0.25"], tmp_path, cache_dir)
    )
    optimizer = task.configure_optimizers()["optimizer"]
    assert type(optimizer).__name__ == OPTIMIZERS[name][0].rsplit(".", 1)[1]
    assert optimizer.param_groups[0]["lr"] == 0.25  # model.optimizer.lr reaches the task
    assert "optimizer" not in task.net.config  # the net is only the net
