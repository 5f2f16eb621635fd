"""The recurrent LM (Elman 1990; Mikolov et al. 2010).

    e_t = E[w_t]                                  projection: a lookup in a V x M matrix
    h_t = tanh(W_x e_t + W_h h_{t-1} + b)         the recurrent hidden layer (cell=rnn_tanh)
    y_t = softmax(W_y h_t + b_y)                  the distribution of w_{t+1}

Training is teacher-forced (the true w_t is the input at step t, whatever the model predicted)
and uses mini-batch truncated BPTT: gradients flow back ``bptt`` steps, while the hidden state
itself is carried (detached) into the next batch of the same column, so the model still
conditions on everything since the column's start.

``nn.RNN`` computes exactly the equation above (``weight_ih`` is W_x, ``weight_hh`` is W_h, and
its two biases add up to b) with a fused kernel; ``cell=lstm|gru`` swaps in gated cells.

``softmax=adaptive`` replaces the full softmax over V by the adaptive softmax (``softmax.py``):
still a normalized distribution, so perplexity stays exact, at a fraction of the cost for
WikiText-103-size vocabularies.
"""

from __future__ import annotations

import torch
from torch import nn

from lm_experiments.errors import UserError
from lm_experiments.models.base import LanguageModel
from lm_experiments.models.softmax import output_layer

CELLS = {"rnn_tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


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
        with torch.autocast("cuda", enabled=False):  # (a carried state is float32: base.carried)
            return rnn(x.float(), state)
    return rnn(x, state)


class RNNLM(LanguageModel):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        cell: str = "rnn_tanh",
        num_layers: int = 1,
        dropout: float = 0.0,
        tie_weights: bool = False,
        softmax: str = "full",
        cutoffs: list[int] | None = None,
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(vocab_size, optimizer, scheduler)
        if cell not in CELLS:
            raise UserError(f"model.cell must be one of {sorted(CELLS)}, got '{cell}'")
        if tie_weights and embedding_dim != hidden_dim:
            raise UserError(
                "model.tie_weights=true needs model.embedding_dim == model.hidden_dim "
                f"(got {embedding_dim} and {hidden_dim})"
            )
        if tie_weights and softmax != "full":
            raise UserError("model.tie_weights=true needs model.softmax=full")
        self.cell = cell
        self.embedding = nn.Embedding(vocab_size, embedding_dim)  # E: V x M
        self.drop = nn.Dropout(dropout)
        self.rnn = CELLS[cell](
            embedding_dim,
            hidden_dim,
            num_layers=num_layers,
            dropout=dropout if num_layers > 1 else 0.0,  # between stacked layers
            batch_first=True,
            **({"nonlinearity": "tanh"} if cell == "rnn_tanh" else {}),
        )
        # W_y, b_y (full), or the adaptive softmax's head and tails; cutoffs null: from V
        self.output = output_layer(softmax, hidden_dim, vocab_size, cutoffs)
        if tie_weights:
            self.output.weight = self.embedding.weight  # Press & Wolf 2017: E doubles as W_y
        self.num_layers, self.hidden_dim = num_layers, hidden_dim

    def init_state(self, batch_size: int):
        h = torch.zeros(self.num_layers, batch_size, self.hidden_dim, device=self.device)
        return (h, h.clone()) if self.cell == "lstm" else h

    def features(self, inputs: torch.Tensor, state=None):
        """inputs [B, T] -> (h [B, T, H], the output layer's input, after dropout; new state)."""
        if state is None:
            state = self.init_state(inputs.size(0))
        e = self.drop(self.embedding(inputs))  # [B, T, M]
        h, state = recurrence(self.rnn, e, state)  # [B, T, H]; state: the last step's
        return self.drop(h), state

    def forward(self, inputs: torch.Tensor, state=None):
        h, state = self.features(inputs, state)
        return self.output(h), state  # [B, T, V]: logits (full) or log-probs (adaptive)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """The output layer scores only the T target positions, and the adaptive softmax never
        materialises [B, T, V]."""
        h, state = self.features(inputs, state)
        return self.output.nll(h[:, h.size(1) - targets.size(1) :], targets), state  # [B, T]
