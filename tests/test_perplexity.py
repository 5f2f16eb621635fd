"""Perplexity is exp(total NLL / total scored tokens), whatever the batching."""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from lm_experiments.data import LMDataModule
from lm_experiments.models.net import LanguageModelNet
from lm_experiments.tasks.language_modeling import LanguageModeling
from lm_experiments.tasks.perplexity import CorpusPerplexity


def test_two_batches_of_different_sizes_by_hand():
    metric = CorpusPerplexity()
    metric.update(torch.tensor(2.0), torch.tensor(2))  # batch 1: 2 tokens, NLL 1 each
    metric.update(torch.tensor(12.0), torch.tensor(6))  # batch 2: 6 tokens, NLL 2 each
    result = metric.compute()
    assert result["tokens"] == 8
    assert result["ppl"].item() == pytest.approx(math.exp(14 / 8), rel=1e-12)
    mean_of_batch_ppls = (math.exp(1) + math.exp(2)) / 2
    assert abs(result["ppl"].item() - mean_of_batch_ppls) > 0.1  # the wrong answer differs


class BigramTable(LanguageModelNet):
    """A fixed bigram model: p(w_t | w_{t-1}) from a table. Its perplexity can be computed by
    hand from the stream, so the whole accounting path (batches, masks, epochs) is checked."""

    def __init__(self, vocab_size: int, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.log_table = torch.nn.Parameter(torch.randn(vocab_size, vocab_size, generator=g))

    def forward(self, inputs, state=None):
        return self.log_table[inputs], state


@pytest.mark.parametrize("eval_batch_size", [1, 3, 8])
def test_corpus_perplexity_through_a_trainer_equals_the_hand_computation(
    tmp_path, cache_dir, toy_corpus, eval_batch_size
):
    dm = LMDataModule(
        name="toy",
        source="text",
        train_path=str(toy_corpus["train"]),
        valid_path=str(toy_corpus["valid"]),
        test_path=str(toy_corpus["test"]),
        cache_dir=str(cache_dir),
        eval_batch_size=eval_batch_size,
        bptt=7,
    )
    model = LanguageModeling(BigramTable(len(dm.vocab)))
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    trainer.test(model, datamodule=dm, verbose=False)

    stream = dm.streams["test"]
    previous = np.concatenate([[1], stream[:-1]])  # the first token follows the start <eos>
    table = model.net.log_table
    log_probs = torch.log_softmax(table.detach().double(), dim=-1)
    nll = -log_probs[torch.as_tensor(previous), torch.as_tensor(stream)]
    assert model.results["test"]["tokens"] == len(stream)
    assert model.results["test"]["ppl"] == pytest.approx(math.exp(nll.mean().item()), rel=1e-6)
