"""Encoders: token ids (and a carried state) -> hidden vectors, with no output layer and no
accounting, so that a language model, a classifier or a tagger can put its own head on them.

* ``WindowProjection``: Bengio's projection layer. Each position sees the ``window`` tokens that
  end at it; each token is looked up in C (V x M: no bias, no activation) and the lookups are
  concatenated. The carried state is the last ``window - 1`` tokens of each column.
* ``RecurrentEncoder``: an embedding and one recurrent layer stack (``make_rnn``: cell rnn_tanh,
  lstm or gru; layers; direction), dropout on its input and output, never on the recurrence. The
  carried state is the stack's hidden state (``init_state``: zeros, a sentence start).

Causal language models use one direction. ``bidirectional=True`` reads the whole sequence both
ways: for taggers and classifiers, which may; never for a language model (the biLM is two causal
LMs, ``birnn.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.errors import UserError

CELLS = {"rnn_tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


def make_rnn(
    cell: str,
    input_dim: int,
    hidden_dim: int,
    num_layers: int = 1,
    dropout: float = 0.0,
    bidirectional: bool = False,
) -> nn.RNNBase:
    """The recurrent stack every recurrent family uses, checked once.

    ``nn.RNN`` computes h_t = tanh(W_x x_t + W_h h_{t-1} + b) (``weight_ih`` is W_x,
    ``weight_hh`` is W_h, its two biases add up to b) with a fused kernel; with num_layers L,
    layer l's output sequence is layer l+1's input, with ``dropout`` between them."""
    if cell not in CELLS:
        raise UserError(f"model.cell must be one of {sorted(CELLS)}, got '{cell}'")
    if not isinstance(num_layers, int) or num_layers < 1:
        raise UserError(f"model.num_layers must be a positive integer, got {num_layers!r}")
    return CELLS[cell](
        input_dim,
        hidden_dim,
        num_layers=num_layers,
        dropout=dropout if num_layers > 1 else 0.0,  # between stacked layers
        batch_first=True,
        bidirectional=bidirectional,
        **({"nonlinearity": "tanh"} if cell == "rnn_tanh" else {}),
    )


def recurrence(rnn: nn.RNNBase, x: torch.Tensor, state):
    """``rnn(x, state)``; in float32 when autocast asks a CUDA device for bf16.

    CUDA's autocast runs a cuDNN RNN in fp16 whatever dtype it was given (ATen's
    cudnn/AutocastRNN.cpp), and bf16-mixed has no GradScaler to keep fp16 gradients from
    underflowing. The recurrence then runs in float32 (TF32 tensor cores on Ampere and newer) and
    the output layer, where most of the FLOPs are, in bf16. On a CPU, bf16 autocast is bf16."""
    if (
        x.is_cuda
        and torch.is_autocast_enabled("cuda")
        and torch.get_autocast_dtype("cuda") == torch.bfloat16
    ):
        with torch.autocast("cuda", enabled=False):  # (a carried state is float32: the task's)
            return rnn(x.float(), state)
    return rnn(x, state)


class RecurrentEncoder(nn.Module):
    """e_t = E[w_t]; h_t = cell(dropout(e_t), h_{t-1}); returns dropout(h_t) [B, T, H]
    (2H when bidirectional: both directions' top layers, concatenated)."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_dim: int,
        cell: str = "rnn_tanh",
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        embedding: nn.Embedding | None = None,  # share another encoder's E (the biLM)
    ):
        super().__init__()
        self.cell, self.num_layers, self.hidden_dim = cell, num_layers, hidden_dim
        self.directions = 2 if bidirectional else 1
        self.output_dim = hidden_dim * self.directions
        self.embedding = embedding or nn.Embedding(vocab_size, embedding_dim)  # E: V x M
        self.drop = nn.Dropout(dropout)
        self.rnn = make_rnn(cell, embedding_dim, hidden_dim, num_layers, dropout, bidirectional)

    def init_state(self, batch_size: int, device=None):
        """The state at a sentence start: zeros, per layer (and direction)."""
        device = device if device is not None else self.embedding.weight.device
        h = torch.zeros(
            self.num_layers * self.directions, batch_size, self.hidden_dim, device=device
        )
        return (h, h.clone()) if self.cell == "lstm" else h

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs [B, T] -> (h [B, T, H] after dropout, the state after the last step)."""
        if state is None:
            state = self.init_state(inputs.size(0), inputs.device)
        e = self.drop(self.embedding(inputs))  # [B, T, M]
        h, state = recurrence(self.rnn, e, state)  # [B, T, H]
        return self.drop(h), state


class WindowProjection(nn.Module):
    """x_t = [C(w_{t-window+1}); ...; C(w_t)]: the projection layer of Bengio et al. 2003, a
    lookup in C (V x M) with no bias and no activation, concatenated over the window."""

    def __init__(self, vocab_size: int, window: int, embedding_dim: int):
        super().__init__()
        if not isinstance(window, int) or window < 1:
            raise UserError(f"model.window must be a positive integer, got {window!r}")
        self.window = window
        self.output_dim = window * embedding_dim
        self.embedding = nn.Embedding(vocab_size, embedding_dim)  # C: V x M, a bare lookup

    def init_state(self, batch_size: int, device=None):
        """The ``window - 1`` tokens before a column's first input: all ``<eos>``, the
        start-of-sentence context the training windows also see at the start of the split."""
        device = device if device is not None else self.embedding.weight.device
        return torch.full((batch_size, self.window - 1), EOS_ID, dtype=torch.long, device=device)

    def windows(self, inputs: torch.Tensor, state=None, last: int | None = None):
        """The window ending at each input position (the last ``last`` positions only):
        inputs [B, S] -> (windows [B, S or last, window], the last window - 1 tokens)."""
        if state is None:
            state = self.init_state(inputs.size(0), inputs.device)
        context = torch.cat([state, inputs], dim=1)  # [B, window - 1 + S]
        windows = context.unfold(1, self.window, 1)  # [B, S, window]: position s sees s-window+1..s
        if last is not None:
            windows = windows[:, windows.size(1) - last :]
        return windows, context[:, context.size(1) - (self.window - 1) :]

    def forward(self, inputs: torch.Tensor, state=None, last: int | None = None):
        """inputs [B, S] -> (x [B, S or last, window * M], new state)."""
        windows, state = self.windows(inputs, state, last)
        return self.embedding(windows).flatten(2), state  # the concatenated projection
