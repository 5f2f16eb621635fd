"""The adaptive softmax is a normalized distribution over the whole vocabulary, its training NLL is
that distribution's, and a model using it reports the exact corpus perplexity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lm_experiments.data import EOS_ID, IGNORE_INDEX
from lm_experiments.errors import UserError
from lm_experiments.generate import load_model
from lm_experiments.models.nnlm import NNLM
from lm_experiments.models.rnnlm import RNNLM
from lm_experiments.models.softmax import (
    AdaptiveSoftmax,
    FullSoftmax,
    default_cutoffs,
    logits_nll,
)
from lm_experiments.train import build, train
from tests.conftest import FAST, compose_config, toy_overrides

V, H = 50, 16


def adaptive(cutoffs=(5, 20)):
    torch.manual_seed(0)
    layer = AdaptiveSoftmax(H, V, list(cutoffs))
    with torch.no_grad():  # spread the weights so that every cluster has a non-trivial share
        for p in layer.parameters():
            p.normal_(0, 0.5)
    return layer


@pytest.mark.parametrize("layer", [adaptive(), adaptive((2,)), FullSoftmax(H, V)])
def test_distribution_sums_to_one_over_the_vocabulary(layer):
    h = torch.randn(3, 7, H)
    log_probs = layer.log_probs(h)  # [3, 7, V]
    assert log_probs.shape == (3, 7, V) and log_probs.dtype == torch.float32
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3, 7), atol=1e-5)
    if isinstance(layer, AdaptiveSoftmax):  # the same distribution as torch's own code gives
        reference = torch.nn.AdaptiveLogSoftmaxWithLoss.log_prob(layer, h.reshape(-1, H))
        assert torch.allclose(log_probs.reshape(-1, V), reference, atol=1e-5)
        tail_mass = log_probs[..., layer.cutoffs[0] :].exp().sum(-1)
        assert tail_mass.mean() > 0.1  # the tails matter, so a wrong tail would show


@pytest.mark.parametrize("layer", [adaptive(), adaptive((2,)), FullSoftmax(H, V)])
def test_token_nll_is_minus_the_log_prob_of_the_target(layer):
    h = torch.randn(4, 30, H)
    targets = torch.arange(120).remainder(V).view(4, 30)  # head words and every cluster
    targets[1, 5:9] = IGNORE_INDEX
    nll = layer.nll(h, targets)
    assert nll.shape == (4, 30) and torch.isfinite(nll).all()
    scored = targets != IGNORE_INDEX
    expected = -layer.log_probs(h).gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1)
    assert torch.allclose(nll[scored], expected[scored], atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
# one block of all rows; 6 rows a block with a partial last one; one row a block (V > BLOCK)
@pytest.mark.parametrize("vocab", [7, 20_000, 140_000])
def test_block_wise_nll_is_cross_entropy_with_its_gradient(dtype, vocab):
    """The CPU loss works a block of rows at a time; values and gradients must be cross-entropy's
    (computed here in float64), ignored targets giving 0 and no gradient."""
    torch.manual_seed(0)
    logits = (3 * torch.randn(3, 47, vocab)).to(dtype).requires_grad_()  # 141 rows
    targets = torch.randint(0, vocab, (3, 47))
    targets[1, 7:] = IGNORE_INDEX
    weights = torch.rand(3, 47)  # a weighted sum, so each row's gradient is scaled differently
    nll = logits_nll(logits, targets)
    (nll * weights).sum().backward()
    got = logits.grad.clone()
    logits.grad = None
    expected = torch.nn.functional.cross_entropy(  # in float64: the exact value
        logits.double().flatten(0, 1),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(targets.shape)
    (expected * weights).sum().backward()
    assert nll.dtype == torch.float32
    assert torch.allclose(nll.double(), expected, rtol=1e-6, atol=1e-5)
    assert (nll[1, 7:] == 0).all() and (got[1, 7:] == 0).all()
    assert got.dtype == dtype
    if dtype == torch.float32:
        assert torch.allclose(got, logits.grad, rtol=1e-4, atol=1e-6)  # float32 rounding
    else:  # bf16 gradients: about 3 significant digits
        assert torch.allclose(got.float(), logits.grad.float(), rtol=1e-2, atol=1e-3)


def test_cutoffs_follow_the_vocabulary_size():
    assert default_cutoffs(267_735) == [20000, 80000]  # WikiText-103
    assert default_cutoffs(10_000) == [1250, 5000]  # PTB
    for size in (2, 3, 20, 33_278):
        cutoffs = default_cutoffs(size)
        AdaptiveSoftmax(8, size, cutoffs)  # valid for torch: increasing, within (0, V)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"softmax": "hierarchical"}, "model.softmax must be one of"),
        ({"softmax": "adaptive", "cutoffs": [30, 10]}, "model.cutoffs must be increasing"),
        ({"softmax": "adaptive", "cutoffs": [5, 50]}, "model.cutoffs must be increasing"),
        (
            {"softmax": "adaptive", "tie_weights": True, "embedding_dim": 16},
            "tie_weights=true needs model.softmax=full",
        ),
    ],
)
def test_bad_softmax_options_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        RNNLM(V, **{"hidden_dim": 16, **kwargs})


def test_nnlm_direct_connections_need_the_full_softmax():
    with pytest.raises(UserError, match="direct_connections=true .* needs model.softmax=full"):
        NNLM(V, hidden_dim=16, direct_connections=True, softmax="adaptive")


@pytest.mark.parametrize("model_name", ["rnnlm", "nnlm"])
def test_adaptive_softmax_trains_and_reports_exact_perplexity(
    model_name, tmp_path, cache_dir, toy_corpus
):
    overrides = [
        *toy_overrides(toy_corpus),
        *FAST,
        f"model={model_name}",
        "model.softmax=adaptive",
        "model.cutoffs=[4,10]",
        "model.hidden_dim=32",
        "dataset.eval_batch_size=1",  # the test split as one column: one pass, by hand below
        "trainer.max_epochs=2",
    ]
    cfg = compose_config(overrides, tmp_path, cache_dir)
    metrics = train(cfg)
    assert math.isfinite(metrics["test/ppl"])

    datamodule, untrained = build(cfg)
    model, _ = load_model(metrics["best_checkpoint"])
    assert isinstance(model.net.head, AdaptiveSoftmax)
    assert model.net.head.cutoffs == [4, 10, model.net.vocab_size]
    stream = torch.as_tensor(datamodule.streams["test"])
    inputs = torch.cat([torch.tensor([EOS_ID]), stream[:-1]])[None]  # [1, N]
    with torch.no_grad():
        log_probs, _ = model(inputs)  # the full distribution at every position: [1, N, V]
        nll = -log_probs[0].gather(1, stream[:, None]).squeeze(1).double()
        untrained_nll = -untrained(inputs)[0][0].log_softmax(-1).gather(1, stream[:, None])
    assert metrics["test/tokens"] == len(stream)
    assert metrics["test/ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-5)
    # and it learned: far better than the untrained model on the same tokens
    assert metrics["test/ppl"] < 0.5 * np.exp(untrained_nll.mean().item())
