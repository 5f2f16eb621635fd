"""The NNLM's window encoder for tagging: h_t = tanh(d + H [C(w_{t-l}); ...; C(w_{t+r})]).

Collobert & Weston's window approach on Bengio's layers: the NNLM's projection C and hidden
layer H read a window of ``window`` tokens around each token (``r`` after it, ``l`` before:
``l + r + 1 = window``), so an LM checkpoint's C and H carry over as they are. Forward-only
(``right=0``) the window ends at the token, the LM's own window: the states are the LM's
hidden layer. Outside the sentence the window sees ``<eos>``, as the LM does at a sentence end
and, before a split's first sentence, at its start.
"""

from __future__ import annotations

import torch
from torch import nn

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.models.encoders import WindowProjection


class WindowEncoder(nn.Module):
    def __init__(self, projection: WindowProjection, hidden: nn.Linear, dropout: float, right: int):
        super().__init__()
        self.projection, self.hidden = projection, hidden  # the LM's C and H (shared modules)
        self.window, self.right = projection.window, right
        self.left = self.window - 1 - right
        self.drop = nn.Dropout(dropout)
        self.output_dim = hidden.out_features

    def windows(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] -> windows [B, T, window]: position t sees t-left .. t+right, and
        ``<eos>`` past either end of its own sentence (never the padding)."""
        inside = torch.arange(tokens.size(1), device=tokens.device)[None, :] < lengths[:, None]
        tokens = tokens.masked_fill(~inside, EOS_ID)
        eos = tokens.new_full((tokens.size(0), 1), EOS_ID)
        context = torch.cat([eos.expand(-1, self.left), tokens, eos.expand(-1, self.right)], 1)
        return context.unfold(1, self.window, 1)  # [B, left + T + right - window + 1 = T, window]

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """-> states [B, T, hidden]"""
        x = self.drop(self.projection.embedding(self.windows(tokens, lengths)).flatten(2))
        return self.drop(torch.tanh(self.hidden(x)))
