"""The bidirectional LM: each direction causal in its own direction, the backward NLL exact over
whole columns whatever bptt is, both directions trained, the forward LM generating."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from lm_experiments.data import EOS_ID
from lm_experiments.data.vocab import IGNORE_INDEX
from lm_experiments.models.birnn import BiRNNLM, reverse_columns
from lm_experiments.tasks.bidirectional import BidirectionalLanguageModeling
from lm_experiments.train import build
from lm_experiments.utils import instantiate
from tests.conftest import FAST, compose_config, toy_overrides
from tests.test_model_families import V, normaliser

I = IGNORE_INDEX  # noqa: E741


def model(cell="lstm", **kwargs):
    torch.manual_seed(0)
    return BiRNNLM(V, embedding_dim=6, hidden_dim=10, cell=cell, **kwargs).eval()


def backward_scores(lm, x: torch.Tensor) -> torch.Tensor:
    """x [B, N+1] as one column -> [B, N]: -log p←(x[:, t] | x[:, t+1:])."""
    with torch.no_grad():
        return lm.backward_nll(x[:, :-1], x[:, 1:])


def test_reverse_columns_reads_each_row_from_its_end():
    inputs = torch.tensor([[1, 5, 6], [1, 8, 1]])
    targets = torch.tensor([[5, 6, 1], [8, 1, I]])  # row 1: two scored positions, then padding
    reversed_inputs, reversed_targets, index = reverse_columns(inputs, targets)
    assert reversed_inputs.tolist() == [[1, 6, 5], [1, 8, EOS_ID]]
    assert reversed_targets.tolist() == [[6, 5, 1], [8, 1, I]]
    assert index.tolist() == [[2, 1, 0], [1, 0, 2]]
    with pytest.raises(ValueError, match="padding"):
        reverse_columns(inputs, torch.tensor([[5, I, 1], [8, 1, I]]))


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm"])
def test_backward_lm_predicts_each_token_from_the_tokens_after_it_only(cell):
    lm = model(cell)
    torch.manual_seed(1)
    x = torch.randint(0, V, (2, 17))
    before = backward_scores(lm, x)
    for t in (0, 7, 15):
        total = normaliser(lambda x: backward_scores(lm, x), x, t, predicted=t)
        assert torch.allclose(total, torch.ones(2), atol=1e-4), total  # x[:, t] itself: unseen
        if t == 0:
            continue
        changed = x.clone()
        changed[:, :t] = (x[:, :t] + 3) % V  # everything before the predicted token
        after = backward_scores(lm, changed)
        assert torch.allclose(after[:, t:], before[:, t:], atol=1e-5)
        assert not torch.allclose(after[:, :t], before[:, :t], atol=1e-4)


def test_backward_nll_of_padded_rows_is_each_rows_own_right_to_left_pass():
    lm = model()
    x = torch.randint(0, V, (2, 13))
    inputs, targets = x[:, :-1].clone(), x[:, 1:].clone()
    targets[1, 7:] = I  # row 1 ends after 7 scored tokens: x[1, :8]
    nll = lm.backward_nll(inputs, targets).detach()
    for row, length in ((0, 12), (1, 7)):
        tokens = x[row, : length + 1]  # the backward LM starts at tokens[-1]
        _, backward_states = lm.encode(tokens[None])  # [1, length + 1, H], read right to left
        log_p = F.log_softmax(lm.backward_head(backward_states[0, 1:]), dim=-1)  # predicts t
        expected = -log_p.gather(1, tokens[:-1, None])[:, 0]
        assert torch.allclose(nll[row, :length], expected, atol=1e-5)
    assert (nll[1, 7:] == 0).all()


def test_encode_gives_each_direction_its_own_side_of_every_position():
    lm = model()
    x = torch.randint(0, V, (2, 10))
    forward_states, backward_states = lm.encode(x)
    assert forward_states.shape == backward_states.shape == (2, 10, 10)
    t = 4
    later, earlier = x.clone(), x.clone()
    later[:, t + 1 :] = (x[:, t + 1 :] + 1) % V
    earlier[:, :t] = (x[:, :t] + 1) % V
    f_later, b_later = lm.encode(later)
    f_earlier, b_earlier = lm.encode(earlier)
    assert torch.allclose(f_later[:, : t + 1], forward_states[:, : t + 1])
    assert not torch.allclose(f_later[:, t + 1 :], forward_states[:, t + 1 :])
    assert torch.allclose(b_earlier[:, t:], backward_states[:, t:])
    assert not torch.allclose(b_earlier[:, :t], backward_states[:, :t])
    assert not torch.allclose(b_later[:, : t + 1], backward_states[:, : t + 1])


def test_training_loss_is_the_mean_of_both_directions_and_trains_both():
    lm = model().train()  # dropout 0: deterministic
    x = torch.randint(0, V, (3, 9))
    inputs, targets = x[:, :-1], x[:, 1:]
    forward, _ = lm.forward_nll(inputs, targets, lm.init_state(3))
    expected = (forward + lm.backward_nll(inputs, targets)) / 2
    direct, _ = lm.token_nll(inputs, targets, lm.init_state(3))  # the batch as whole columns
    assert torch.allclose(direct, expected, atol=1e-6)
    task = BidirectionalLanguageModeling(lm)
    nll, _ = task.scored_nll(inputs, targets, lm.init_state(3), "train")  # as training_step
    assert torch.allclose(nll, expected, atol=1e-6)
    nll.mean().backward()
    for rnn in (lm.forward_encoder.rnn, lm.backward_encoder.rnn):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rnn.parameters())


def test_shared_embedding_and_softmax_are_one_set_of_weights():
    shared = model()
    assert shared.backward_encoder.embedding is shared.forward_encoder.embedding
    assert shared.backward_head is shared.head
    separate = model(share_embeddings=False, share_softmax=False)
    embedding, softmax = 6 * V, (10 + 1) * V
    assert separate.num_parameters() - shared.num_parameters() == embedding + softmax
    x = torch.randint(0, V, (2, 8))
    forward_logits, backward = separate(x)[0], backward_scores(separate, x)
    with torch.no_grad():
        separate.backward_head.weight.add_(1.0)
        separate.backward_encoder.embedding.weight.add_(1.0)
    assert torch.allclose(separate(x)[0], forward_logits)  # the forward LM has its own
    assert not torch.allclose(backward_scores(separate, x), backward)


def test_generation_samples_from_the_forward_lm():
    lm = BidirectionalLanguageModeling(model())
    (sentence,) = lm.generate(1, max_length=12, temperature=0)
    prefix = torch.tensor([[EOS_ID]])
    for token in sentence:  # each greedy token is the forward LM's argmax after the prefix
        assert lm(prefix)[0][0, -1].argmax().item() == token
        prefix = torch.cat([prefix, torch.tensor([[token]])], dim=1)
    with torch.no_grad():
        for p in lm.net.backward_encoder.rnn.parameters():
            p.add_(1.0)
    assert lm.generate(1, max_length=12, temperature=0) == [sentence]


def one_pass_perplexities(lm, stream) -> tuple[float, float]:
    """(forward, backward) perplexity of one column holding the whole split, by hand:
    full = <eos> stream; forward scores full[1:] left to right, backward full[:-1] right to
    left, each LM reading the whole column in one call."""
    full = torch.cat([torch.tensor([EOS_ID]), torch.as_tensor(stream)])
    lm.eval()
    with torch.no_grad():
        forward = F.cross_entropy(lm(full[None, :-1])[0][0], full[1:])
        right_to_left = full.flip(0)
        backward = F.cross_entropy(
            lm.backward_lm(right_to_left[None, :-1])[0][0], right_to_left[1:]
        )
    return math.exp(forward.item()), math.exp(backward.item())


def test_backward_perplexity_is_exact_whatever_bptt(tmp_path, cache_dir, toy_corpus):
    """Through real Trainer.test runs: the backward LM's state flows from each column's end, so
    bptt (how the columns are cut into batches) cannot change its perplexity."""
    base = [*toy_overrides(toy_corpus), "model=birnn", *FAST]
    cfg = compose_config(base, tmp_path, cache_dir)
    _, lm = build(cfg)
    assert isinstance(lm, BidirectionalLanguageModeling)  # model=birnn picks task=bilm
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)

    def test_run(eval_batch_size, bptt):
        cfg = compose_config(
            [*base, f"dataset.eval_batch_size={eval_batch_size}", f"dataset.bptt={bptt}"],
            tmp_path,
            cache_dir,
        )
        datamodule = instantiate(cfg.dataset)
        trainer.test(lm, datamodule=datamodule, verbose=False)
        return dict(lm.results["test"]), datamodule.streams["test"]

    one_column = [test_run(1, bptt) for bptt in (4, 35, 10_000)]
    forward, backward = one_pass_perplexities(lm.net, one_column[0][1])
    for results, _ in one_column:
        assert results["ppl_backward"] == pytest.approx(backward, rel=1e-5)
        assert results["ppl_forward"] == pytest.approx(forward, rel=1e-5)
        assert results["ppl"] == pytest.approx(math.sqrt(forward * backward), rel=1e-5)
    padded = [test_run(3, bptt)[0] for bptt in (5, 50)]  # three padded columns
    assert padded[0]["ppl_backward"] == pytest.approx(padded[1]["ppl_backward"], rel=1e-5)
    assert padded[0]["tokens"] == one_column[0][0]["tokens"]
