"""bf16-mixed training works for every neural family, autocast really runs the layers in bf16,
and the loss and the perplexity sums stay float32/float64, so perplexity moves by rounding only."""

from __future__ import annotations

import pytest
import torch

from lm_experiments.data.vocab import IGNORE_INDEX
from lm_experiments.models.rnnlm import RNNLM
from lm_experiments.tasks.language_modeling import LanguageModeling
from lm_experiments.train import train
from tests.conftest import FAST, SPY, TrainingSpy, compose_config, toy_overrides

NEURAL = ["rnnlm", "lstm", "stacked_rnn", "nnlm", "birnn", "transformer"]
SMALL = [
    "model.embedding_dim=16",
    "model.hidden_dim=32",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=60",
    "dataset.batch_size=8",
    "dataset.bptt=12",
]


@pytest.mark.parametrize("model", NEURAL)
def test_bf16_mixed_training_matches_fp32_within_rounding(model, tmp_path, cache_dir, toy_corpus):
    results = {}
    for precision in ("32-true", "bf16-mixed"):
        overrides = [f"model={model}", *toy_overrides(toy_corpus), *FAST, *SMALL, *SPY]
        overrides.append(f"trainer.precision={precision}")
        results[precision] = train(compose_config(overrides, tmp_path / precision, cache_dir))
        dtype = torch.bfloat16 if precision == "bf16-mixed" else torch.float32
        assert TrainingSpy.dtypes == {dtype}  # autocast did (or did not) run in bf16
    fp32, bf16 = results["32-true"], results["bf16-mixed"]
    for key in ("val/tokens", "test/tokens", "train/tokens"):
        assert bf16[key] == fp32[key]
    for key in ("train/ppl", "val/ppl", "test/ppl"):
        assert bf16[key] == pytest.approx(fp32[key], rel=0.03), key  # same steps, bf16 rounding
    vocab_size = len((tmp_path / "32-true" / "vocab.txt").read_text().split())
    assert bf16["test/ppl"] < 0.9 * vocab_size  # it learned: better than a uniform guess


@pytest.mark.parametrize("softmax", ["full", "adaptive"])
def test_sums_stay_float64_under_autocast(softmax):
    torch.manual_seed(0)
    model = LanguageModeling(
        RNNLM(40, embedding_dim=16, hidden_dim=16, cell="lstm", softmax=softmax)
    )
    inputs = torch.randint(0, 40, (3, 9))
    targets = torch.randint(0, 40, (3, 9))
    targets[2, 5:] = IGNORE_INDEX
    with torch.no_grad():
        exact, tokens = model._scored((inputs, targets), "test")
        model.on_test_epoch_start()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, _ = model(inputs)
            nll_sum, tokens_bf16 = model._scored((inputs, targets), "val")
    assert logits.dtype == (torch.bfloat16 if softmax == "full" else torch.float32)
    assert nll_sum.dtype == torch.float32  # the batch's loss, from float32 log-softmax
    assert model.val_ppl.nll_sum.dtype == torch.float64  # the corpus sum
    assert model.val_ppl.tokens.dtype == torch.int64 and tokens_bf16 == tokens == 23
    assert nll_sum.item() == pytest.approx(exact.item(), rel=0.02)  # bf16 matmuls, fp32 sums
