"""The decoder-only Transformer LM (Radford et al. 2019, in nanoGPT's reading order), with
Transformer-XL's memory (Dai et al. 2019) as its carried state.

    x^0_t = dropout(E[w_t])                                     the residual stream, width d
    a^l   = x^{l-1} + Attention(LN([m^{l-1}; x^{l-1}]))          l = 1..L (pre-LayerNorm blocks)
    x^l   = a^l + dropout(W_2 GELU(W_1 LN(a^l)))                 the MLP, inner width hidden_dim
    y_t   = softmax(W_y LN(x^L_t) + b_y)                        the distribution of w_{t+1}

m^{l-1} is the memory: the residual stream entering block l at the ``memory`` tokens before the
segment, carried (detached) from the last batch of the same column. This is truncated BPTT's
idea applied to attention: gradients stay inside the ``bptt``-token segment, while the segment's
tokens still read the hidden states of the tokens before it, exactly as they were computed then.

Every token attends to itself and the ``context - 1`` tokens before it, never to a later one
(``attention.py``), with positions that depend only on the query-key distance. So with
``memory = context - 1`` (the default) every layer of every token finds its whole window either
in the segment or in the memory, and a split of the stream into ``[B, bptt]`` batches gives each
token the left context (and the NLL) it gets when the whole column is read in one pass, up to
``context`` tokens per layer (tested); with a smaller memory the first tokens of a segment see
less. A column starts with an empty memory, as an RNN starts from a zero state.

``TransformerNet`` is a plain net (``models/net.py``); the language-modeling task trains and
samples it like every family. The embedding and the output layer share their weights
(``tie_weights``, Press & Wolf 2017); ``softmax=adaptive`` swaps in the adaptive softmax.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lm_experiments.errors import UserError
from lm_experiments.models.attention import CausalSelfAttention, RelativePositions
from lm_experiments.models.net import LanguageModelNet
from lm_experiments.models.softmax import output_layer


class MLP(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(dim, hidden_dim)  # W_1
        self.gelu = nn.GELU()
        self.projection = nn.Linear(hidden_dim, dim)  # W_2
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.projection(self.gelu(self.fc(x))))


class Block(nn.Module):
    """One pre-LayerNorm block: attention over [memory; segment], then the MLP, each added to
    the residual stream."""

    def __init__(self, dim: int, num_heads: int, hidden_dim: int, dropout: float):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attention = CausalSelfAttention(dim, num_heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, hidden_dim, dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, table: torch.Tensor):
        """x [B, S, d], memory [B, m, d] -> [B, S, d]."""
        window = self.ln_1(torch.cat([memory.to(x.dtype), x], dim=1))  # [B, m + S, d]
        x = x + self.attention(window[:, memory.size(1) :], window, table)
        return x + self.mlp(self.ln_2(x))


def check_options(embedding_dim, num_heads, num_layers, context, memory, tie_weights, softmax):
    """One readable line for each impossible combination of options."""
    if num_layers < 1 or num_heads < 1 or embedding_dim % num_heads:
        raise UserError(
            "model.num_layers and model.num_heads must be >= 1 and model.num_heads must divide "
            f"model.embedding_dim (got {num_layers}, {num_heads}, {embedding_dim})"
        )
    if context < 1 or not 0 <= memory <= context - 1:
        raise UserError(
            f"model.context must be >= 1 and model.memory between 0 and context - 1 = "
            f"{context - 1} (a token reads at most context - 1 earlier ones); got context="
            f"{context}, memory={memory}"
        )
    if tie_weights and softmax != "full":
        raise UserError("model.tie_weights=true needs model.softmax=full")


class TransformerNet(LanguageModelNet):
    """Token ids and the memory -> next-token scores and the next memory (module docstring)."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        num_heads: int = 4,
        num_layers: int = 2,
        hidden_dim: int = 512,
        context: int = 64,
        memory: int | None = None,
        positions: str = "sinusoidal",
        dropout: float = 0.1,
        tie_weights: bool = True,
        softmax: str = "full",
        cutoffs: list[int] | None = None,
    ):
        super().__init__()
        memory = context - 1 if memory is None else memory
        check_options(embedding_dim, num_heads, num_layers, context, memory, tie_weights, softmax)
        self.num_layers, self.dim, self.memory = num_layers, embedding_dim, memory
        self.embedding = nn.Embedding(vocab_size, embedding_dim)  # E: V x d
        self.positions = RelativePositions(positions, context, embedding_dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            Block(embedding_dim, num_heads, hidden_dim, dropout) for _ in range(num_layers)
        )
        self.ln_f = nn.LayerNorm(embedding_dim)
        self.output = output_layer(softmax, embedding_dim, vocab_size, cutoffs)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # GPT-2: the residual projections shrink with L
            if name.endswith("projection.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * num_layers))
        if tie_weights:
            self.output.weight = self.embedding.weight  # E doubles as W_y

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        """nanoGPT's initialisation: N(0, 0.02) weights, zero biases."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def init_state(self, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """The memory at a column start: no earlier tokens, [L, B, 0, d]."""
        return torch.zeros(self.num_layers, batch_size, 0, self.dim, device=device)

    def features(self, inputs: torch.Tensor, state: torch.Tensor | None):
        """inputs [B, S], memory [L, B, m, d] (None: a column start) -> (LN(x^L) [B, S, d], the
        next memory [L, B, min(m + S, memory), d]: each block's input at the last ``memory``
        tokens)."""
        if state is None:
            state = self.init_state(inputs.size(0), inputs.device)
        x = self.drop(self.embedding(inputs))  # [B, S, d]
        table = self.positions()
        entering = []  # each block's input over the segment
        for block, memory in zip(self.blocks, state, strict=True):
            entering.append(x)
            x = block(x, memory, table)
        stream = torch.cat([state, torch.stack(entering).to(state.dtype)], dim=2)  # [L,B,m+S,d]
        kept = stream[:, :, max(0, stream.size(2) - self.memory) :]
        return self.ln_f(x), kept.detach()  # no gradient into earlier segments (truncated BPTT)

    def forward(self, inputs: torch.Tensor, state: torch.Tensor | None = None):
        """-> (scores [B, S, V]: logits (full) or log-probs (adaptive), the next memory)."""
        h, state = self.features(inputs, state)
        return self.output(h), state

    def token_nll(
        self, inputs: torch.Tensor, targets: torch.Tensor, state: torch.Tensor | None = None
    ):
        """-log p(target) [B, T] of the last T = targets.size(1) positions; the output layer runs
        on those only, and the adaptive softmax never materialises [B, T, V]."""
        h, state = self.features(inputs, state)
        return self.output.nll(h[:, h.size(1) - targets.size(1) :], targets), state
