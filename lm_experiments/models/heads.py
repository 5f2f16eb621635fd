"""Heads for the supervised tasks, on a recurrent encoder (``encoders.RecurrentEncoder``).

* ``SentenceClassifier``: one label per sentence from a pooled state, ``pooling``:
  ``last`` = h_n (bidirectional: the forward end [h->_n] joined with the backward end [h<-_1]),
  ``mean`` / ``max`` over the sentence's real positions. ``encoder=None`` with ``mean`` is the
  bag-of-words baseline: the average embedding, blind to word order.
* ``SequenceTagger``: one tag per token from each position's state (or, on the NNLM's
  ``WindowEncoder``, from a window around the token).

Sentences are padded; the encoder reads them packed, so the backward direction starts at each
sentence's own last word, never at padding.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder, recurrence
from lm_experiments.models.window_encoder import WindowEncoder

POOLINGS = ("last", "mean", "max")


def read_sentences(encoder: RecurrentEncoder, tokens: torch.Tensor, lengths: torch.Tensor):
    """tokens [B, T], lengths [B] -> (states [B, T, D] zero past each end, ends [B, D]):
    ``ends`` is the top layer's h_n per direction, concatenated."""
    e = encoder.drop(encoder.embedding(tokens))  # [B, T, M]
    packed = pack_padded_sequence(e, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, h_n = recurrence(encoder.rnn, packed, None)
    h, _ = pad_packed_sequence(out, batch_first=True, total_length=tokens.size(1))
    h_n = h_n[0] if isinstance(h_n, tuple) else h_n  # the LSTM's (h, c): h
    ends = h_n[-encoder.directions :].transpose(0, 1).flatten(1)  # [B, directions * H]
    return encoder.drop(h), encoder.drop(ends)


def mask_of(tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """[B, T] True at each sentence's real positions."""
    return torch.arange(tokens.size(1), device=tokens.device)[None, :] < lengths[:, None]


class SentenceClassifier(nn.Module):
    def __init__(
        self,
        encoder: RecurrentEncoder | None,
        num_labels: int,
        pooling: str = "last",
        embedding: nn.Embedding | None = None,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise UserError(f"task.pooling must be one of {list(POOLINGS)}, got '{pooling}'")
        if encoder is None and pooling == "last":
            raise UserError("a bag-of-words classifier pools with task.pooling=mean or max")
        self.encoder, self.pooling, self.embedding = encoder, pooling, embedding
        width = encoder.output_dim if encoder is not None else embedding.embedding_dim
        self.head = nn.Linear(width, num_labels)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """-> logits [B, labels]"""
        if self.encoder is None:  # bag of words: the embeddings themselves
            states, ends = self.embedding(tokens), None
        else:
            states, ends = read_sentences(self.encoder, tokens, lengths)
        if self.pooling == "last":
            return self.head(ends)
        mask = mask_of(tokens, lengths).unsqueeze(-1)  # [B, T, 1]
        if self.pooling == "mean":
            pooled = (states * mask).sum(1) / lengths.clamp(min=1)[:, None]
        else:
            pooled = states.masked_fill(~mask, float("-inf")).max(1).values
        return self.head(pooled)


class SequenceTagger(nn.Module):
    def __init__(self, encoder: RecurrentEncoder, num_tags: int):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.output_dim, num_tags)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """-> logits [B, T, tags]"""
        if isinstance(self.encoder, WindowEncoder):  # the NNLM's: a window around each token
            return self.head(self.encoder(tokens, lengths))
        states, _ = read_sentences(self.encoder, tokens, lengths)
        return self.head(states)
