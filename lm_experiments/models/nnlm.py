"""The feed-forward neural probabilistic LM (Bengio, Ducharme, Vincent & Jauvin 2003).

A fixed window of the n - 1 = ``window`` previous tokens predicts the next one:

    x = [C(w_{t-n+1}); ...; C(w_{t-1})]          projection: lookups in C (V x M), concatenated;
                                                  no bias, no activation
    h = tanh(d + H x)                             the hidden layer (H: h x (n-1)M, d: h)
    y = b + U h (+ W x)                           U: V x h, b: V; W: V x (n-1)M, the optional
                                                  "direct connections" from projection to output
    P(w_t | w_{t-n+1..t-1}) = softmax(y)          trained with cross-entropy

The window and the projection are the encoder (``encoders.WindowProjection``); the hidden layer,
the direct connections and the head (``softmax.py``) are this net's. The model has no memory
beyond its window, so for training the data module serves shuffled ``(window tokens, next
token)`` pairs (``train_window``), ``train_batch_size`` of them a step: a window costs one
output layer where a column of ``bptt`` tokens costs ``bptt``, so ``dataset.batch_size`` windows a
step would make an epoch thousands of tiny steps. Evaluation reads the same sentence-aligned
columns as every other family; the "state" carried from one batch to the next is just the last
``window - 1`` input tokens of each column, so a batch boundary changes nothing, and a column
start sees ``<eos>`` repeated: the start-of-sentence context the training windows also see at the
start of the split. Hence the NNLM scores exactly the tokens every other model scores.

The softmax over V is the expensive part, so ``token_nll`` computes the hidden and output layers
only for the positions that are scored: on a training window (S = window inputs, T = 1 target)
that is one position, not ``window``. ``softmax=adaptive`` replaces softmax(b + U h) by the
adaptive softmax (``softmax.py``) for large vocabularies; it is exact, but it has no logits over V
for the direct connections to add to, so the two do not combine.
"""

from __future__ import annotations

import torch
from torch import nn

from lm_experiments.errors import UserError
from lm_experiments.models.encoders import WindowProjection
from lm_experiments.models.net import LanguageModelNet
from lm_experiments.models.softmax import logits_nll, output_layer


class NNLM(LanguageModelNet):
    def __init__(
        self,
        vocab_size: int,
        window: int = 4,
        embedding_dim: int = 64,
        hidden_dim: int = 256,
        direct_connections: bool = False,
        dropout: float = 0.0,
        softmax: str = "full",
        cutoffs: list[int] | None = None,
        train_batch_size: int = 256,
    ):
        super().__init__()
        if not isinstance(train_batch_size, int) or train_batch_size <= 0:
            raise UserError(
                f"model.train_batch_size must be a positive integer, got {train_batch_size!r}"
            )
        if direct_connections and softmax != "full":
            raise UserError(
                "model.direct_connections=true adds W x to the output logits, so it needs"
                " model.softmax=full (the adaptive softmax has no logits over V to add to)"
            )
        self.vocab_size = vocab_size
        self.projection = WindowProjection(vocab_size, window, embedding_dim)  # C, the window
        self.window = window
        self.train_window = window  # the data module serves (window tokens, next token) pairs
        self.train_batch_size = train_batch_size  # windows a training step (global, as batch_size)
        self.hidden = nn.Linear(self.projection.output_dim, hidden_dim)  # H, d
        self.head = output_layer(softmax, hidden_dim, vocab_size, cutoffs)  # U, b (or adaptive)
        # W: Bengio's optional direct connections from the projection layer to the output
        self.direct = (
            nn.Linear(self.projection.output_dim, vocab_size, bias=False)
            if direct_connections
            else None
        )
        self.drop = nn.Dropout(dropout)

    def init_state(self, batch_size: int, device=None):
        """The ``window - 1`` tokens before a column's first input: all ``<eos>``."""
        return self.projection.init_state(batch_size, device)

    def _projection_and_hidden(self, inputs, state, last=None):
        """inputs [B, S] -> (x [B, P, window * M], h [B, P, hidden], new state); P = S or last."""
        x, state = self.projection(inputs, state, last)
        x = self.drop(x)
        return x, self.drop(torch.tanh(self.hidden(x))), state

    def forward(self, inputs: torch.Tensor, state=None):
        """-> (scores [B, S, V]: logits (full) or log-probs (adaptive), new state)."""
        x, h, state = self._projection_and_hidden(inputs, state)
        y = self.head(h)  # b + U h
        if self.direct is not None:
            y = y + self.direct(x)  # + W x
        return y, state

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """Like the contract's default, but the hidden and output layers run only on the T
        scored positions (on a training window, one position, not ``window``); the adaptive
        softmax never materialises [B, T, V]."""
        x, h, state = self._projection_and_hidden(inputs, state, last=targets.size(1))
        if self.direct is None:
            return self.head.nll(h, targets), state  # [B, T]
        return logits_nll(self.head(h) + self.direct(x), targets), state
