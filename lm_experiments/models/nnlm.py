"""The feed-forward neural probabilistic LM (Bengio, Ducharme, Vincent & Jauvin 2003).

A fixed window of the n - 1 = ``window`` previous tokens predicts the next one:

    x = [C(w_{t-n+1}); ...; C(w_{t-1})]          projection: lookups in C (V x M), concatenated;
                                                  no bias, no activation
    h = tanh(d + H x)                             the hidden layer (H: h x (n-1)M, d: h)
    y = b + U h (+ W x)                           U: V x h, b: V; W: V x (n-1)M, the optional
                                                  "direct connections" from projection to output
    P(w_t | w_{t-n+1..t-1}) = softmax(y)          trained with cross-entropy

The model has no memory beyond its window, so for training the data module serves shuffled
``(window tokens, next token)`` pairs (``train_window``). Evaluation reads the same sentence-aligned
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

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.errors import UserError
from lm_experiments.models.base import LanguageModel
from lm_experiments.models.softmax import logits_nll, output_layer


class NNLM(LanguageModel):
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
        optimizer=None,
        scheduler=None,
    ):
        super().__init__(vocab_size, optimizer, scheduler)
        if not isinstance(window, int) or window < 1:
            raise UserError(f"model.window must be a positive integer, got {window!r}")
        if direct_connections and softmax != "full":
            raise UserError(
                "model.direct_connections=true adds W x to the output logits, so it needs"
                " model.softmax=full (the adaptive softmax has no logits over V to add to)"
            )
        self.window = window
        self.train_window = window  # the data module serves (window tokens, next token) pairs
        self.embedding = nn.Embedding(vocab_size, embedding_dim)  # C: V x M, a bare lookup
        self.hidden = nn.Linear(window * embedding_dim, hidden_dim)  # H, d
        self.output = output_layer(softmax, hidden_dim, vocab_size, cutoffs)  # U, b (or adaptive)
        # W: Bengio's optional direct connections from the projection layer to the output
        self.direct = (
            nn.Linear(window * embedding_dim, vocab_size, bias=False)
            if direct_connections
            else None
        )
        self.drop = nn.Dropout(dropout)

    def init_state(self, batch_size: int):
        """The ``window - 1`` tokens before a column's first input: all ``<eos>``."""
        return torch.full(
            (batch_size, self.window - 1), EOS_ID, dtype=torch.long, device=self.device
        )

    def _projection_and_hidden(self, windows: torch.Tensor):
        """windows [B, P, window] of token ids -> (x [B, P, window * M], h [B, P, h])."""
        x = self.drop(self.embedding(windows).flatten(2))  # the concatenated projection
        h = torch.tanh(self.hidden(x))
        return x, self.drop(h)

    def _windows(self, inputs: torch.Tensor, state: torch.Tensor | None, last: int | None = None):
        """The window ending at each input position (the last ``last`` positions only)."""
        if state is None:
            state = self.init_state(inputs.size(0))
        context = torch.cat([state, inputs], dim=1)  # [B, window - 1 + S]
        windows = context.unfold(1, self.window, 1)  # [B, S, window]: position s sees s-window+1..s
        if last is not None:
            windows = windows[:, windows.size(1) - last :]
        new_state = context[:, context.size(1) - (self.window - 1) :]  # the last window-1 tokens
        return windows, new_state

    def forward(self, inputs: torch.Tensor, state=None):
        """-> (scores [B, S, V]: logits (full) or log-probs (adaptive), new state)."""
        windows, state = self._windows(inputs, state)
        x, h = self._projection_and_hidden(windows)
        y = self.output(h)  # b + U h
        if self.direct is not None:
            y = y + self.direct(x)  # + W x
        return y, state

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """Like the base's, but the hidden and output layers run only on the T scored positions
        (on a training window, one position, not ``window``); the adaptive softmax never
        materialises [B, T, V]."""
        windows, state = self._windows(inputs, state, last=targets.size(1))  # [B, T, window]
        x, h = self._projection_and_hidden(windows)
        if self.direct is None:
            return self.output.nll(h, targets), state  # [B, T]
        return logits_nll(self.output(h) + self.direct(x), targets), state
