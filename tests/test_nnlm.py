"""The NNLM: Bengio's equations, a window and nothing more, and the same scores whether it reads
shuffled training windows or evaluation columns."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from lm_experiments.data.batching import ColumnBatches, WindowBatches
from lm_experiments.data.vocab import EOS_ID
from lm_experiments.errors import UserError
from lm_experiments.models.net import LanguageModelNet
from lm_experiments.models.nnlm import NNLM
from lm_experiments.train import build
from tests.conftest import FAST, compose_config, scored_tokens, toy_overrides

V = 20


def model(window=3, **kwargs):
    torch.manual_seed(0)
    return NNLM(V, window=window, embedding_dim=5, hidden_dim=7, **kwargs).eval()


@pytest.mark.parametrize("direct_connections", [False, True])
def test_logits_follow_bengios_equations(direct_connections):
    lm = model(direct_connections=direct_connections)
    x = torch.randint(0, V, (2, 9))
    logits, _ = lm(x, lm.init_state(2))
    t = 5  # predicts the token after x[:, 5] from the window x[:, 3:6]
    p = lm.projection.embedding.weight[x[:, t - 2 : t + 1]].flatten(
        1
    )  # [B, 3M]: C lookups, concatenated
    h = torch.tanh(p @ lm.hidden.weight.T + lm.hidden.bias)
    y = h @ lm.head.weight.T + lm.head.bias
    if direct_connections:
        y = y + p @ lm.direct.weight.T  # W x, no bias of its own
    else:
        assert lm.direct is None
    assert torch.allclose(logits[:, t], y, atol=1e-5)


def test_prediction_depends_on_the_window_and_nothing_else():
    lm = model(window=3)
    x = torch.randint(0, V, (2, 12))
    before, _ = lm(x, lm.init_state(2))
    t = 8  # logits[:, t] predict x[:, t + 1] from x[:, 6:9]: the 3 tokens before it

    def changed_at(position):
        changed = x.clone()
        changed[:, position] = (x[:, position] + 1) % V
        return lm(changed, lm.init_state(2))[0][:, t]

    assert torch.allclose(changed_at(t + 1 - 4), before[:, t])  # window + 1 back: unseen
    assert not torch.allclose(changed_at(t + 1 - 3), before[:, t], atol=1e-4)  # window back: seen
    assert torch.allclose(changed_at(t + 1), before[:, t])  # the predicted token: unseen


def test_carried_state_equals_one_pass_and_starts_from_eos():
    lm = model(window=4)
    x = torch.randint(0, V, (3, 30))
    whole, _ = lm(x, lm.init_state(3))
    state, pieces = lm.init_state(3), []
    for chunk in x.split(2, dim=1):  # batches shorter than the window
        logits, state = lm(chunk, state)
        pieces.append(logits)
    assert torch.allclose(torch.cat(pieces, dim=1), whole, atol=1e-6)
    eos = torch.full((3, 3), EOS_ID)  # a column start sees window - 1 <eos> before its input
    assert torch.allclose(lm(torch.cat([eos, x], dim=1), None)[0][:, 3:], whole, atol=1e-6)
    assert not torch.allclose(lm(x[:, 10:], None)[0], whole[:, 10:], atol=1e-4)


def test_training_windows_score_what_evaluation_columns_score():
    """The window path (S = window inputs, T = 1 target) and the column path give each token
    the same NLL: the model trains on the very conditional it is evaluated on."""
    lm = model(window=4)
    rng = np.random.default_rng(0)
    stream = rng.integers(2, V, 40)
    stream[[6, 15, 27, 39]] = EOS_ID  # four sentences
    windows = WindowBatches(stream, window=4)
    contexts, targets = windows.__getitems__(list(range(len(windows))))  # [40, 4], [40, 1]
    with torch.no_grad():
        train_nll, _ = lm.token_nll(contexts, targets, lm.init_state(len(contexts)))
        inputs, column_targets = ColumnBatches(stream, 1, bptt=len(stream))[0]  # the whole split
        eval_nll, _ = lm.token_nll(inputs, column_targets, lm.init_state(1))
    assert torch.allclose(train_nll[:, 0], eval_nll[0], atol=1e-5)


def test_token_nll_runs_the_output_layer_only_on_scored_positions():
    lm = model(window=4)
    seen = []
    lm.head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    x = torch.randint(0, V, (6, 4))
    y = torch.randint(0, V, (6, 1))
    nll, state = lm.token_nll(x, y, lm.init_state(6))
    assert seen == [1]  # one position, not four
    expected, expected_state = LanguageModelNet.token_nll(lm, x, y, lm.init_state(6))
    assert torch.allclose(nll, expected, atol=1e-6)
    assert torch.equal(state, expected_state)  # the last window - 1 inputs
    assert torch.equal(state, x[:, 1:])


def test_window_is_the_training_layout_and_must_be_positive():
    assert model(window=5).train_window == 5
    with pytest.raises(UserError, match="model.window"):
        NNLM(V, window=0)


def nnlm_run(toy_corpus, tmp_path, cache_dir, *overrides):
    """The data module and task ``python -m lm_experiments model=nnlm ...`` builds."""
    cfg = compose_config(
        [*toy_overrides(toy_corpus), "model=nnlm", *FAST, *overrides], tmp_path, cache_dir
    )
    torch.manual_seed(0)  # the same initial weights for every build
    return build(cfg)


def test_windows_train_in_batches_of_model_train_batch_size(toy_corpus, tmp_path, cache_dir):
    datamodule, task = nnlm_run(
        toy_corpus, tmp_path, cache_dir, "model.train_batch_size=32", "dataset.batch_size=5"
    )
    inputs, targets = next(iter(datamodule.train_dataloader()))
    assert inputs.shape == (32, task.net.window)  # [train_batch_size, window], not batch_size
    assert targets.shape == (32, 1)
    assert len(datamodule.train_dataloader()) == -(-datamodule.num_tokens("train") // 32)
    default, _ = nnlm_run(toy_corpus, tmp_path, cache_dir)
    assert next(iter(default.train_dataloader()))[0].size(0) == 256  # conf/model/nnlm.yaml
    with pytest.raises(UserError, match="model.train_batch_size"):
        nnlm_run(toy_corpus, tmp_path, cache_dir, "model.train_batch_size=0")


def test_train_batch_size_changes_nothing_in_evaluation(toy_corpus, tmp_path, cache_dir):
    """Evaluation reads dataset.eval_batch_size columns whatever the training batch: every
    token of the split is scored, once, to the same perplexity."""
    results = []
    for size in (7, 300):
        datamodule, task = nnlm_run(
            toy_corpus, tmp_path, cache_dir, f"model.train_batch_size={size}"
        )
        trainer = L.Trainer(
            accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
        )
        trainer.validate(task, datamodule=datamodule, verbose=False)
        assert next(iter(datamodule.val_dataloader()))[0].size(0) == datamodule.eval_batch_size
        results.append(task.results["val"])
    assert results[0]["tokens"] == results[1]["tokens"] == scored_tokens(toy_corpus["valid"])
    assert results[0]["ppl"] == results[1]["ppl"]  # same weights, same tokens: same figure
