"""Causal self-attention over a window of [memory; segment], with relative positions.

A batch holds a segment of ``S`` tokens per column; the carried state holds, for every layer,
the hidden states of the ``m`` tokens before it (the memory, Dai et al. 2019, "Transformer-XL").
A layer's queries are the segment's tokens, its keys and values the ``K = m + S`` tokens of the
window [memory; segment]. Query i (window position m + i) may read key j when

    0 <= d = (m + i) - j < context

so a token reads itself and at most ``context - 1`` tokens before it, never one after it: a
sliding window whose width does not depend on where a segment starts.

Positions enter only through the distance d (relative positions), Transformer-XL's eq. (3):

    score(i, j) = (q_i + u) . k_j  +  (q_i + v) . W_r R_d          (scaled by 1 / sqrt(head dim))

R is a table of ``context`` rows, one per distance: Vaswani et al.'s sinusoids of d
(``positions=sinusoidal``, fixed) or a learned row per distance (``positions=learned``); u and v
are learned per-head biases for content and position. Why relative: a token's encoding then
depends on nothing but how far back each key is, so it is the same whether the key is in the
memory or the segment, in a training segment of ``bptt`` tokens or in an evaluation pass over
the whole column. Absolute positions counted from the window's start would give the same word a
different position in every split of the stream, and the hidden states in the memory would carry
positions of a window that no longer exists.

The content term is torch's ``scaled_dot_product_attention``; the position term and the causal
window arrive as its additive float mask (-inf where a key is out of reach).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lm_experiments.errors import UserError

POSITIONS = ("sinusoidal", "learned")


def sinusoids(length: int, dim: int) -> torch.Tensor:
    """[length, dim]: row d = sin/cos of d at geometrically spaced frequencies (Vaswani et al.)."""
    distance = torch.arange(length, dtype=torch.float32)[:, None]  # [length, 1]
    frequency = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(1e4) / dim))
    table = torch.zeros(length, dim)
    table[:, 0::2] = torch.sin(distance * frequency)
    table[:, 1::2] = torch.cos(distance * frequency[: dim // 2])
    return table


class RelativePositions(nn.Module):
    """R: one encoding per query-key distance 0 .. context - 1, sinusoidal or learned."""

    def __init__(self, kind: str, context: int, dim: int):
        super().__init__()
        if kind == "sinusoidal":  # a function of the sizes: recomputed, not stored in checkpoints
            self.register_buffer("table", sinusoids(context, dim), persistent=False)
        elif kind == "learned":
            self.table = nn.Parameter(torch.randn(context, dim) * 0.02)
        else:
            raise UserError(f"model.positions must be one of {list(POSITIONS)}, got '{kind}'")

    def forward(self) -> torch.Tensor:
        return self.table  # [context, d]


def distances(queries: int, keys: int, device: torch.device) -> torch.Tensor:
    """[S, K]: (m + i) - j for the S queries at the end of a window of K = m + S keys."""
    i = torch.arange(keys - queries, keys, device=device)
    return i[:, None] - torch.arange(keys, device=device)[None, :]


def relative_mask(query: torch.Tensor, table: torch.Tensor, keys: int) -> torch.Tensor:
    """The position term (query . table[d]) of every query i and key j, -inf where key j is after
    query i or ``context`` or more tokens before it: query [B, H, S, dh], table [H, C, dh] ->
    [B, H, S, K]."""
    context = table.size(1)
    by_distance = query @ table.transpose(-1, -2)  # [B, H, S, C]: one column per distance
    d = distances(query.size(2), keys, query.device)  # [S, K]
    index = d.clamp(0, context - 1).expand(*query.shape[:2], *d.shape)  # [B, H, S, K]
    term = by_distance.gather(-1, index)
    return term.masked_fill(~((d >= 0) & (d < context)), -math.inf)


class CausalSelfAttention(nn.Module):
    """Multi-head attention of a segment's tokens over [memory; segment] (module docstring)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads, self.head_dim, self.dropout = num_heads, dim // num_heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key_value = nn.Linear(dim, 2 * dim)
        self.position = nn.Linear(dim, dim, bias=False)  # W_r: R -> per-head position keys
        self.content_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))  # u
        self.position_bias = nn.Parameter(torch.zeros(num_heads, self.head_dim))  # v
        self.projection = nn.Linear(dim, dim)  # the heads' outputs back into the residual stream
        self.residual_drop = nn.Dropout(dropout)

    def forward(self, segment: torch.Tensor, window: torch.Tensor, table: torch.Tensor):
        """segment [B, S, d] (the queries' inputs), window [B, K, d] (its last S rows are the
        segment), table R [C, d] -> [B, S, d]."""
        (B, S, d), K, H, dh = segment.shape, window.size(1), self.num_heads, self.head_dim
        q = self.query(segment).view(B, S, H, dh).transpose(1, 2)  # [B, H, S, dh]
        k, v = self.key_value(window).view(B, K, 2, H, dh).permute(2, 0, 3, 1, 4)  # [B, H, K, dh]
        r = self.position(table).view(-1, H, dh).transpose(0, 1)  # [H, C, dh]
        position = relative_mask((q + self.position_bias[:, None]).to(r.dtype), r, K)
        y = F.scaled_dot_product_attention(
            (q + self.content_bias[:, None]).to(k.dtype),
            k,
            v,
            attn_mask=(position / math.sqrt(dh)).to(k.dtype),  # SDPA scales only q . k
            dropout_p=self.dropout if self.training else 0.0,
        )  # [B, H, S, dh]
        return self.residual_drop(self.projection(y.transpose(1, 2).reshape(B, S, d)))
