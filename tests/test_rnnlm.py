"""The recurrent LM: causal, stateful across batches exactly as in one pass, generates."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from lm_experiments.data import EOS_ID
from lm_experiments.errors import UserError
from lm_experiments.models.rnnlm import RNNLM
from lm_experiments.tasks.language_modeling import LanguageModeling
from lm_experiments.train import train
from tests.conftest import FAST, compose_config, toy_overrides

CELLS = ["rnn_tanh", "lstm", "gru"]


def model(cell="rnn_tanh", vocab_size=30, **kwargs):
    torch.manual_seed(0)
    return RNNLM(vocab_size, embedding_dim=8, hidden_dim=12, cell=cell, **kwargs).eval()


@pytest.mark.parametrize("cell", CELLS)
def test_prediction_at_t_ignores_tokens_after_t(cell):
    lm = model(cell)
    x = torch.randint(0, 30, (2, 20))
    for t in (0, 7, 18):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randint(0, 30, (2, 19 - t))
        before, _ = lm(x)
        after, _ = lm(changed)
        assert torch.allclose(before[:, : t + 1], after[:, : t + 1], atol=1e-6)
        if t < 18:  # and the change is visible right after, so the test can fail
            assert not torch.allclose(before[:, t + 1 :], after[:, t + 1 :])


@pytest.mark.parametrize("cell", CELLS)
def test_carried_state_equals_one_pass_over_the_stream(cell):
    lm = model(cell, num_layers=2)
    x = torch.randint(0, 30, (3, 50))
    whole, _ = lm(x, lm.init_state(3))
    state, pieces = lm.init_state(3), []
    for chunk in x.split(7, dim=1):  # truncated-BPTT batches of 7 steps
        logits, state = lm(chunk, state)
        state = lm.detach_state(state)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-5)
    fresh, _ = lm(x[:, 7:14], lm.init_state(3))  # a reset state would give something else
    assert not torch.allclose(fresh, whole[:, 7:14], atol=1e-3)


def test_greedy_generation_feeds_each_token_back():
    lm = LanguageModeling(model(vocab_size=12))
    (sentence,) = lm.generate(1, max_length=15, temperature=0)
    prefix = torch.tensor([[EOS_ID]])
    for token in sentence:  # re-derive each step from the whole prefix, no carried state
        logits, _ = lm(prefix)
        assert logits[0, -1].argmax().item() == token
        prefix = torch.cat([prefix, torch.tensor([[token]])], dim=1)


def test_generation_stops_at_end_of_sentence_and_at_max_length():
    lm = LanguageModeling(model(vocab_size=10))
    with torch.no_grad():
        lm.net.head.weight.zero_()
        lm.net.head.bias.fill_(-1e4)
        lm.net.head.bias[EOS_ID] = 0.0  # <eos> is certain
    assert lm.generate(4, max_length=9) == [[], [], [], []]
    with torch.no_grad():
        lm.net.head.bias[EOS_ID] = -1e4
        lm.net.head.bias[5] = 0.0  # <eos> impossible: only the length limit stops a sentence
    assert lm.generate(3, max_length=9) == [[5] * 9] * 3


def test_tied_weights_share_one_matrix_and_need_equal_sizes():
    lm = RNNLM(20, embedding_dim=16, hidden_dim=16, tie_weights=True)
    assert lm.head.weight is lm.encoder.embedding.weight
    with pytest.raises(UserError, match="tie_weights"):
        RNNLM(20, embedding_dim=8, hidden_dim=16, tie_weights=True)
    with pytest.raises(UserError, match="model.cell"):
        RNNLM(20, cell="transformer")


def unigram_perplexity(train_path, test_path) -> float:
    """Perplexity of the train split's unigram distribution (with <eos>) on the test split."""
    counts = Counter()
    for line in train_path.read_text().splitlines():
        counts.update(line.split() + ["<eos>"])
    total = sum(counts.values())
    nll = [
        -math.log(counts[w] / total)
        for line in test_path.read_text().splitlines()
        for w in line.split() + ["<eos>"]
    ]
    return math.exp(np.mean(nll))


def test_briefly_trained_rnnlm_beats_the_unigram_model(tmp_path, cache_dir, toy_corpus):
    cfg = compose_config(
        [*toy_overrides(toy_corpus), *FAST, "trainer.max_epochs=4", "model.optimizer.lr=2.0"],
        tmp_path,
        cache_dir,
    )
    metrics = train(cfg)
    unigram = unigram_perplexity(toy_corpus["train"], toy_corpus["test"])
    assert metrics["test/ppl"] < 0.6 * unigram, (metrics["test/ppl"], unigram)
    assert metrics["train/ppl"] < metrics["val/ppl"] * 2  # it learnt, it did not diverge
