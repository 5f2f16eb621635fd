"""The recurrent LM (Elman 1990; Mikolov et al. 2010).

    e_t = E[w_t]                                  projection: a lookup in a V x M matrix
    h_t = tanh(W_x e_t + W_h h_{t-1} + b)         the recurrent hidden layer (cell=rnn_tanh)
    y_t = softmax(W_y h_t + b_y)                  the distribution of w_{t+1}

The net is the recurrent encoder (``encoders.RecurrentEncoder``: E, the cell, its layers) and an
output head (``softmax.py``: full, or adaptive for WikiText-103-size vocabularies; both exact).
``cell=lstm|gru`` swaps in gated cells. How it is trained -- teacher forcing on [B, bptt] columns,
truncated BPTT with the state carried (detached) into the next batch -- is the language-modeling
task's (``tasks/language_modeling.py``), the same for every recurrent family.
"""

from __future__ import annotations

import torch

from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder
from lm_experiments.models.net import LanguageModelNet
from lm_experiments.models.softmax import output_layer


class RNNLM(LanguageModelNet):
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
    ):
        super().__init__()
        if tie_weights and embedding_dim != hidden_dim:
            raise UserError(
                "model.tie_weights=true needs model.embedding_dim == model.hidden_dim "
                f"(got {embedding_dim} and {hidden_dim})"
            )
        if tie_weights and softmax != "full":
            raise UserError("model.tie_weights=true needs model.softmax=full")
        self.vocab_size = vocab_size
        self.encoder = RecurrentEncoder(
            vocab_size, embedding_dim, hidden_dim, cell, num_layers, dropout
        )
        # W_y, b_y (full), or the adaptive softmax's head and tails; cutoffs null: from V
        self.head = output_layer(softmax, hidden_dim, vocab_size, cutoffs)
        if tie_weights:
            self.head.weight = self.encoder.embedding.weight  # Press & Wolf 2017: E is W_y

    def init_state(self, batch_size: int, device=None):
        return self.encoder.init_state(batch_size, device)

    def forward(self, inputs: torch.Tensor, state=None):
        h, state = self.encoder(inputs, state)  # [B, T, H]
        return self.head(h), state  # [B, T, V]: logits (full) or log-probs (adaptive)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """The head scores only the T target positions, and the adaptive softmax never
        materialises [B, T, V]."""
        h, state = self.encoder(inputs, state)
        return self.head.nll(h[:, h.size(1) - targets.size(1) :], targets), state  # [B, T]
