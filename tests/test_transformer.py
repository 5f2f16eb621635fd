"""The Transformer's memory: a stream split into segments, each reading the carried hidden states
of the tokens before it, scores every token as one pass over the whole stream does; the memory
never lets a prediction see its target or anything after it, and nothing beyond the attention
window; its options fail with one readable line. (Causality within a segment, equal scored
tokens, the leak detector, DDP and bf16: the families' parametrized tests.)"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.errors import UserError
from lm_experiments.models.transformer import TransformerNet
from lm_experiments.tasks.language_modeling import LanguageModeling
from lm_experiments.train import build, build_net
from tests.conftest import FAST, compose_config, toy_overrides
from tests.test_model_families import normaliser

V, CONTEXT, LAYERS = 12, 6, 2
SPLITS = [(0, 5), (5, 6), (6, 19), (19, 30)]  # segments of 5, 1, 13 and 11 tokens


def net(positions: str = "sinusoidal", seed: int = 0, **options) -> TransformerNet:
    """An untrained net with weights large enough that every input moves every reachable NLL."""
    torch.manual_seed(seed)
    model = TransformerNet(
        V, embedding_dim=16, num_heads=4, num_layers=LAYERS, hidden_dim=32, context=CONTEXT,
        positions=positions, dropout=0.0, **options,
    )  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model.eval()


def whole(model, x: torch.Tensor) -> torch.Tensor:
    """x [B, N+1] read in one pass -> [B, N]: -log p(x[:, t+1] | x[:, :t+1])."""
    with torch.no_grad():
        return model.token_nll(x[:, :-1], x[:, 1:], model.init_state(x.size(0)))[0]


def in_segments(model, x: torch.Tensor, splits=SPLITS) -> torch.Tensor:
    """The same scores from consecutive segments, each carrying the memory of the last."""
    state, scores = model.init_state(x.size(0)), []
    with torch.no_grad():
        for start, end in splits:
            nll, state = model.token_nll(x[:, start:end], x[:, start + 1 : end + 1], state)
            scores.append(nll)
    return torch.cat(scores, dim=1)


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_segments_with_memory_score_as_one_pass_over_the_stream(positions):
    model = net(positions)
    x = torch.randint(0, V, (3, 31))
    assert torch.allclose(in_segments(model, x), whole(model, x), atol=1e-5)
    # without the memory the segments lose their left context, and the scores change
    forgetful = net(positions, memory=0)
    assert not torch.allclose(in_segments(forgetful, x), whole(forgetful, x), atol=1e-3)
    state = model.token_nll(x[:, :-1], x[:, 1:], model.init_state(3))[1]
    assert state.shape == (LAYERS, 3, CONTEXT - 1, 16) and not state.requires_grad  # detached


def test_memory_never_shows_a_prediction_its_target_or_later_tokens():
    model = net()
    x = torch.randint(0, V, (2, 31))
    before = in_segments(model, x)
    for t in (4, 5, 6, 18, 22):  # at and around the segment boundaries
        total = normaliser(lambda x: in_segments(model, x), x, t, predicted=t + 1)
        assert torch.allclose(total, torch.ones(2), atol=1e-4), (t, total)
        changed = x.clone()
        changed[:, t + 2] = (x[:, t + 2] + 1) % V  # the input after the target of position t
        after = in_segments(model, changed)
        assert torch.allclose(after[:, : t + 1], before[:, : t + 1], atol=1e-6), t
        assert not torch.allclose(after[:, t + 1 :], before[:, t + 1 :], atol=1e-4), t


def test_a_token_reaches_through_the_memory_exactly_as_far_as_the_layers_reach():
    """Each layer reads context - 1 tokens back, so input p moves the predictions at positions
    p .. p + L (context - 1) (some in later segments, through the memory) and no later one (and,
    as the target of position p - 1, that one's score)."""
    model = net()
    x = torch.randint(0, V, (2, 31))
    changed = x.clone()
    changed[:, 3] = (x[:, 3] + 1) % V
    moved = (in_segments(model, changed) - in_segments(model, x)).abs().amax(0) > 1e-5  # [30]
    reach = 3 + LAYERS * (CONTEXT - 1)
    assert moved[reach] and moved[SPLITS[2][0]]  # beyond the first segment, through the memory
    assert not moved[:2].any() and not moved[reach + 1 :].any()


def test_greedy_generation_token_by_token_through_the_memory_is_the_one_pass_argmax():
    """Generation feeds one token a batch: the memory must give each step the context one pass
    over the sentence gives it, so every greedy token is that pass's argmax after its prefix."""
    torch.manual_seed(0)
    lm = LanguageModeling(net())
    lengths = []
    for seed in range(3):  # weights that make the argmax depend on the context
        lm.net = net(seed=seed)
        (ids,) = lm.generate(num_samples=1, max_length=12, temperature=0)
        x = torch.tensor([[EOS_ID, *ids]])
        with torch.no_grad():
            logits, _ = lm.net(x, lm.net.init_state(1))  # [1, n + 1, V]
        expected = logits[0].argmax(-1).tolist()  # the greedy choice after each prefix
        assert expected[: len(ids)] == ids
        assert len(ids) == 12 or expected[len(ids)] == EOS_ID  # it stopped where <eos> won
        lengths.append(len(ids))
    assert max(lengths) > CONTEXT  # beyond one window: the memory slid along


def test_evaluation_does_not_depend_on_bptt(tmp_path, cache_dir, toy_corpus):
    """Through real Trainer.test runs: the carried memory makes bptt 5 and bptt 50 score every
    test token alike (as the recurrent families' state does)."""
    results = {}
    for bptt in (5, 50):
        overrides = [*toy_overrides(toy_corpus), "model=transformer", *FAST, "model.context=8"]
        cfg = compose_config([*overrides, f"dataset.bptt={bptt}"], tmp_path / str(bptt), cache_dir)
        datamodule, model = build(cfg)
        torch.manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.normal_(0, 0.3)
        L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False).test(
            model, datamodule=datamodule, verbose=False
        )
        results[bptt] = model.results["test"]
    assert results[5]["tokens"] == results[50]["tokens"]
    assert results[5]["ppl"] == pytest.approx(results[50]["ppl"], rel=1e-5)
    assert results[5]["ppl"] != pytest.approx(len(model.vocab), rel=0.05)  # not uniform


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("model.num_heads=3", "must divide model.embedding_dim"),
        ("model.memory=64", "model.memory between 0 and context - 1 = 63"),
        ("model.context=0", "model.context must be >= 1"),
        ("model.positions=absolute", "model.positions must be one of"),
        ("model.softmax=adaptive", "model.tie_weights=true needs model.softmax=full"),
    ],
)
def test_impossible_options_fail_with_one_readable_line(option, message, tmp_path, cache_dir):
    cfg = compose_config(["model=transformer", option, *FAST], tmp_path, cache_dir)
    with pytest.raises(UserError, match=message):
        build_net(cfg.model, V)


def test_adaptive_softmax_without_tying_scores_a_normalised_distribution(tmp_path, cache_dir):
    overrides = ["model=transformer", "model.softmax=adaptive", "model.tie_weights=false"]
    cfg = compose_config([*overrides, "model.cutoffs=[4,8]", *FAST], tmp_path, cache_dir)
    model = build_net(cfg.model, V).eval()
    x = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        log_probs, _ = model(x)
        nll, _ = model.token_nll(x[:, :-1], x[:, 1:])
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(2, 9), atol=1e-5)
    assert torch.allclose(nll, -log_probs[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1))
