"""Encoders and heads are plain modules: a net rebuilds from the config it saves, and an LM's
encoder carries a head of another task (a tagger here) with none of the LM accounting."""

from __future__ import annotations

import io

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder, make_rnn
from lm_experiments.models.rnnlm import RNNLM
from lm_experiments.tasks.language_modeling import LanguageModeling
from tests.test_model_families import FAMILIES, family

V, TAGS = 12, 3


@pytest.mark.parametrize("name", FAMILIES)
def test_a_net_rebuilds_from_its_saved_config_alone(name, tmp_path, cache_dir):
    net = family(name, tmp_path, cache_dir)
    buffer = io.BytesIO()
    torch.save(net.config, buffer)  # plain data: loads with weights_only, as checkpoints do
    buffer.seek(0)
    config = torch.load(buffer, weights_only=True)
    assert config["_target_"] == f"{type(net).__module__}.{type(net).__qualname__}"
    assert config["vocab_size"] == V
    rebuilt = instantiate(config).eval()
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randint(0, V, (2, 9))
    assert torch.equal(rebuilt(x)[0], net(x)[0])
    assert rebuilt.config == net.config


class Tagger(nn.Module):
    """A toy per-token tagger: any encoder's states -> a tag per position."""

    def __init__(self, encoder: RecurrentEncoder, num_tags: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.output_dim, num_tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.encoder(tokens)  # [B, T, H]
        return self.head(h)  # [B, T, tags]


def tags_of(tokens: torch.Tensor) -> torch.Tensor:
    """Each token's tag depends on the token *after* it: a causal encoder cannot know it."""
    following = torch.cat([tokens[:, 1:], torch.zeros_like(tokens[:, :1])], dim=1)
    return following % TAGS


def train_tagger(tagger: Tagger, steps: int = 150) -> float:
    """Train on random sentences; return the accuracy on new ones."""
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(tagger.parameters(), lr=0.02)
    for _ in range(steps):
        tokens = torch.randint(0, V, (16, 10), generator=g)
        loss = nn.functional.cross_entropy(tagger(tokens).flatten(0, 1), tags_of(tokens).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens = torch.randint(0, V, (64, 10), generator=g)
    with torch.no_grad():
        return (tagger(tokens).argmax(-1) == tags_of(tokens)).float().mean().item()


def test_an_lm_encoder_carries_a_tagger_head_without_the_lm_accounting():
    torch.manual_seed(0)
    lm = LanguageModeling(RNNLM(V, embedding_dim=8, hidden_dim=16, cell="lstm"))
    before = {k: v.clone() for k, v in lm.net.encoder.state_dict().items()}
    tagger = Tagger(lm.net.encoder, TAGS)  # the trained LM's encoder initialises the tagger
    assert tagger.encoder.embedding.weight is lm.net.encoder.embedding.weight
    causal = train_tagger(tagger)
    changed = [k for k, v in lm.net.encoder.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # the tagger fine-tuned the LM's own encoder ...
    assert lm.train_ppl.tokens == 0 and lm.results == {}  # ... and the LM counted nothing
    # a bidirectional encoder (allowed for tagging, never for an LM) sees the next token
    torch.manual_seed(0)
    both_ways = RecurrentEncoder(V, 8, 16, cell="lstm", bidirectional=True)
    assert both_ways.output_dim == 32
    assert train_tagger(Tagger(both_ways, TAGS)) > 0.9 > causal + 0.3, causal


def test_make_rnn_checks_the_cell_and_layers_once_for_every_family():
    assert isinstance(make_rnn("gru", 4, 5, num_layers=2, dropout=0.5), nn.GRU)
    rnn = make_rnn("rnn_tanh", 4, 5)
    assert rnn.nonlinearity == "tanh" and rnn.dropout == 0.0 and rnn.batch_first
    with pytest.raises(UserError, match="model.cell must be one of"):
        make_rnn("transformer", 4, 5)
    with pytest.raises(UserError, match="model.num_layers must be a positive integer"):
        make_rnn("lstm", 4, 5, num_layers=0)
