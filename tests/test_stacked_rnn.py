"""The stacked RNN: each layer reads the layer below; one layer would be the plain RNNLM, which
is why the config refuses it; ``model=lstm`` is the classic two-layer LSTM."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lm_experiments.errors import UserError
from lm_experiments.models.encoders import CELLS
from lm_experiments.models.rnnlm import RNNLM
from lm_experiments.models.stacked_rnn import StackedRNNLM
from lm_experiments.train import build_net
from tests.conftest import FAST, compose_config

V = 25


class OneLayerStack(StackedRNNLM):
    """The stacked family allowed one layer, only to compare it with the RNNLM."""

    min_layers = 1


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_a_one_layer_stack_computes_the_rnnlm(cell):
    torch.manual_seed(0)
    rnnlm = RNNLM(V, embedding_dim=6, hidden_dim=9, cell=cell).eval()
    stack = OneLayerStack(V, embedding_dim=6, hidden_dim=9, cell=cell, num_layers=1).eval()
    stack.load_state_dict(rnnlm.state_dict())
    x = torch.randint(0, V, (2, 15))
    expected, expected_state = rnnlm(x, rnnlm.init_state(2))
    logits, state = stack(x, stack.init_state(2))
    assert torch.allclose(logits, expected, atol=1e-6)
    for a, b in zip(
        torch.utils._pytree.tree_leaves(state),
        torch.utils._pytree.tree_leaves(expected_state),
        strict=True,
    ):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_each_layer_reads_the_output_sequence_of_the_layer_below(cell):
    torch.manual_seed(0)
    lm = StackedRNNLM(V, embedding_dim=6, hidden_dim=9, cell=cell, num_layers=3).eval()
    extra = {"nonlinearity": "tanh"} if cell == "rnn_tanh" else {}
    h = lm.encoder.embedding(x := torch.randint(0, V, (2, 11)))  # [B, T, M]
    for layer in range(3):  # rebuild the stack from three separate one-layer RNNs
        single = CELLS[cell](h.size(-1), 9, batch_first=True, **extra)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(single, f"{name}_l0").data.copy_(getattr(lm.encoder.rnn, f"{name}_l{layer}"))
        h, _ = single(h)  # this layer's whole output sequence is the next layer's input
    logits, state = lm(x, lm.init_state(2))
    assert torch.allclose(logits, lm.head(h), atol=1e-5)
    hidden = state[0] if cell == "lstm" else state
    assert hidden.shape == (3, 2, 9)  # every layer's state is carried


def test_the_config_refuses_fewer_than_two_layers(tmp_path, cache_dir):
    cfg = compose_config(["model=stacked_rnn", "model.num_layers=1", *FAST], tmp_path, cache_dir)
    with pytest.raises(UserError, match="model.num_layers .* >= 2"):
        build_net(cfg.model, V)
    cfg = compose_config(["model=stacked_rnn", "model.cell=gru", *FAST], tmp_path, cache_dir)
    assert isinstance(build_net(cfg.model, V).encoder.rnn, nn.GRU)


def test_model_lstm_is_a_two_layer_lstm_with_dropout_between_layers(tmp_path, cache_dir):
    cfg = compose_config(["model=lstm", *FAST], tmp_path, cache_dir)
    lm = build_net(cfg.model, V)
    assert isinstance(lm.encoder.rnn, nn.LSTM)
    assert lm.encoder.rnn.num_layers == 2 and lm.encoder.rnn.dropout == cfg.model.dropout > 0
    x = torch.randint(0, V, (2, 8))
    lm.train()  # dropout on: two passes differ; eval: deterministic
    assert not torch.allclose(lm(x)[0], lm(x)[0])
    lm.eval()
    assert torch.allclose(lm(x)[0], lm(x)[0])
