"""Count-based n-gram language models, exact against KenLM, and their ARPA files.

    p(w | h) = (c(h w) - D) / c(h)  +  gamma(h) * p(w | h')        interpolated Kneser-Ney
                                                                  (h' = h without its first word)

An order-N model is stored the way KenLM stores one: per order n, a table of n-grams with
``log10 p(w | h)`` already interpolated down to the uniform distribution, and for each n-gram a
``log10`` backoff weight gamma used when it is the context of a longer n-gram. Scoring is then
"find the longest n-gram of the model that ends in w, add the backoffs of the longer contexts it
skipped" -- the ARPA semantics, so that ``export_arpa`` and ``load_arpa`` are exact and a model
estimated by KenLM on a web-scale corpus plugs in for one counted here.

Representation (everything is numpy arrays, nothing is a Python object per n-gram):

* ids ``0..V-1`` are the vocabulary's (``0`` = ``<unk>``, ``1`` = ``<eos>``); ``V`` is ``<s>``,
  a context-only id: an ``<eos>`` in a context means "a sentence starts here", nothing before
  it counts, exactly as each sentence of KenLM starts from ``<s>``.
* order 1 is dense (index = id, ``V + 1`` entries). An n-gram ``w1 .. wn`` of order n >= 2 is the
  int64 key ``w1 * size[n-1] + index(w2 .. wn)``: its first token and the index of its suffix in
  the table below, like a reversed trie. Keys are sorted; the index of an n-gram is its rank, so
  lookups are ``np.searchsorted`` and walking to a longer n-gram (one more word on the left) is
  one lookup per order.
* counting turns the token stream into these keys order by order (``group_keys``: one sort of
  packed key-position words per order); the estimator
  needs, per n-gram, its suffix (``key % size``), its first token (``key // size``) and its
  context (the n-gram without its last word), all as index arrays.

Smoothing (``smoothing=``): ``kneser_ney`` (interpolated modified Kneser-Ney, Chen & Goodman 1998,
with every convention of KenLM's ``lmplz``), ``witten_bell`` (interpolated), ``add_k`` and ``mle``
(no smoothing: an unseen n-gram gets probability 0 and a perplexity of inf -- the sparsity problem,
shown rather than hidden).
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import logging
import math
import os
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerFn

from lm_experiments.data.sampler import training_position
from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX, UNK_ID
from lm_experiments.errors import UserError
from lm_experiments.models.base import LanguageModel

log = logging.getLogger(__name__)

SMOOTHINGS = ("kneser_ney", "witten_bell", "add_k", "mle")
LN10 = math.log(10.0)
ARPA_ZERO = -99.0  # how ARPA files write log10(0); read back as -inf
NONE = -1  # "no token here" in a context (before the start of a column) / "not in the model"


# ------------------------------------------------------------------------------------------------
# The model: ARPA-style tables
# ------------------------------------------------------------------------------------------------
class NGramModel:
    """An order-N back-off model over ids ``0..V-1`` (``V`` = ``<s>``, context only).

    ``keys[n]`` (n >= 2): sorted int64 keys of the n-grams (see the module docstring);
    ``logprob[n]``: log10 p(last word | the others), interpolated (-inf: probability 0);
    ``backoff[n]`` (n < N): log10 of the weight given to the lower order when the n-gram is the
    context (0 when it never is one). Index 0 of each list is unused; order 1 has no keys.
    """

    def __init__(self, order, vocab_size, keys, logprob, backoff, smoothing="arpa", info=None):
        self.order, self.vocab_size, self.bos = int(order), int(vocab_size), int(vocab_size)
        self.keys, self.logprob, self.backoff = keys, logprob, backoff
        self.smoothing = smoothing
        self.info = dict(info or {})  # discounts, counts of n-grams ... (for reports)
        self._prefix: dict[int, np.ndarray] = {}
        self._last: dict[int, np.ndarray] = {}
        self._children: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    # --- structure ------------------------------------------------------------------------------
    def size(self, n: int) -> int:
        """Number of n-grams of order n (order 1: every id and ``<s>``)."""
        return self.vocab_size + 1 if n == 1 else len(self.keys[n])

    def num_ngrams(self) -> list[int]:
        return [self.size(n) for n in range(1, self.order + 1)]

    def num_values(self) -> int:
        """Stored probabilities and backoffs: the n-gram model's parameter count."""
        return sum(self.size(n) * (2 if n < self.order else 1) for n in range(1, self.order + 1))

    def first(self, n: int) -> np.ndarray:
        """First token of every n-gram of order n >= 2."""
        return self.keys[n] // self.size(n - 1)

    def suffix(self, n: int) -> np.ndarray:
        """Index (in order n - 1) of every n-gram without its first token."""
        return self.keys[n] % self.size(n - 1)

    def lookup(self, n: int, keys: np.ndarray) -> np.ndarray:
        """Index of each key in order n, or -1 (NONE) where the model lacks the n-gram."""
        table = self.keys[n]
        if len(table) == 0 or len(keys) == 0:
            return np.full(len(keys), NONE, dtype=np.int64)
        if len(keys) > 65536 and len(table) > 65536:
            # sorted queries walk the table in order: far fewer cache misses than random ones
            order = np.argsort(keys)
            at = np.empty(len(keys), dtype=np.int64)
            at[order] = np.searchsorted(table, keys[order])
        else:
            at = np.searchsorted(table, keys)
        np.minimum(at, len(table) - 1, out=at)
        return np.where(table[at] == keys, at, NONE)

    def prefix(self, n: int) -> np.ndarray:
        """Index (in order n - 1) of every n-gram without its last word (-1: not in the model)."""
        if n not in self._prefix:
            if n == 2:
                self._prefix[n] = self.first(2)
            else:
                lower = self.prefix(n - 1)[self.suffix(n)]  # w2 .. w(n-1)
                ok = lower >= 0
                out = np.full(self.size(n), NONE, dtype=np.int64)
                out[ok] = self.lookup(n - 1, self.first(n)[ok] * self.size(n - 2) + lower[ok])
                self._prefix[n] = out
        return self._prefix[n]

    def last(self, n: int) -> np.ndarray:
        """Last word of every n-gram of order n."""
        if n not in self._last:
            self._last[n] = np.arange(self.size(1)) if n == 1 else self.last(n - 1)[self.suffix(n)]
        return self._last[n]

    def tokens(self, n: int) -> np.ndarray:
        """[size(n), n] token ids of every n-gram of order n (for ARPA files)."""
        if n == 1:
            return np.arange(self.size(1))[:, None]
        return np.concatenate([self.first(n)[:, None], self.tokens(n - 1)[self.suffix(n)]], 1)

    def children(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The n-grams of order n grouped by context: (order, start) with the children of
        context h (an (n-1)-gram) at ``order[start[h]:start[h + 1]]``."""
        if n not in self._children:
            prefix = self.prefix(n)
            order = np.argsort(prefix, kind="stable")
            start = np.zeros(self.size(n - 1) + 1, dtype=np.int64)
            np.cumsum(np.bincount(prefix[prefix >= 0], minlength=self.size(n - 1)), out=start[1:])
            self._children[n] = (order[np.count_nonzero(prefix < 0) :], start)
        return self._children[n]

    # --- scoring --------------------------------------------------------------------------------
    def _walk(self, seq: np.ndarray) -> list[np.ndarray | None]:
        """For every position p of ``seq`` [B, L] (-1 = no token), the index of the k-gram of
        the model ending at p, k = 1..N (-1 where the model lacks it), reading seq[p] as the
        predicted word and the tokens before it as its context. An ``<eos>`` in the context is
        ``<s>``: the walk to longer n-grams stops there. Returns flat arrays [B * L] per order.
        """
        B, L = seq.shape
        flat = seq.reshape(-1)
        col = np.tile(np.arange(L), B)
        ctx = np.where(flat == EOS_ID, self.bos, flat)  # context reading of each token
        found = [None, np.where(flat >= 0, flat, NONE)]
        pos = np.flatnonzero(flat >= 0)
        for n in range(2, self.order + 1):
            if n > 2:  # the (n-1)-gram at pos starts with <s>: nothing can precede it
                pos = pos[flat[pos - (n - 2)] != EOS_ID]
            pos = pos[col[pos] >= n - 1]
            left = ctx[pos - (n - 1)]
            pos, left = pos[left >= 0], left[left >= 0]
            at = self.lookup(n, left * self.size(n - 1) + found[n - 1][pos])
            hit = at >= 0
            pos = pos[hit]
            idx = np.full(B * L, NONE, dtype=np.int64)
            idx[pos] = at[hit]
            found.append(idx)
        return found

    def log10_probs(self, seq: np.ndarray) -> np.ndarray:
        """log10 p(seq[b, p] | seq[b, :p]) for every position of ``seq`` [B, L] (int, -1 = no
        token); positions without a token (or without a context: column 0) get NaN.

        ``seq[b, :p]`` is read as KenLM reads a state: an ``<eos>`` there means ``<s>``; only the
        last N - 1 tokens since it count.
        """
        seq = np.asarray(seq, dtype=np.int64)
        if seq.ndim == 1:
            seq = seq[None]
        B, L = seq.shape
        flat = seq.reshape(-1)
        if flat.size and flat.max() >= self.vocab_size:
            raise ValueError(f"token id {flat.max()} outside the vocabulary ({self.vocab_size})")
        found = self._walk(seq)
        # the longest n-gram of the model ending at each position, and its probability
        longest = np.zeros(B * L, dtype=np.int8)
        for n in range(1, self.order + 1):
            longest[found[n] >= 0] = n
        out = np.full(B * L, np.nan)
        for n in range(1, self.order + 1):
            at = longest == n
            out[at] = self.logprob[n][found[n][at]]
        # + backoffs of the contexts longer than the match: the k-grams ending at p - 1
        has_prev = np.tile(np.arange(L) >= 1, B)
        prev_eos = np.zeros(B * L, dtype=bool)
        prev_eos[1:] = flat[:-1] == EOS_ID
        prev_eos &= has_prev
        for k in range(1, self.order):
            context = np.full(B * L, NONE, dtype=np.int64)
            context[1:] = found[k][:-1]
            context[~has_prev] = NONE
            context[prev_eos] = self.bos if k == 1 else NONE  # after <eos>: the context is <s>
            use = (context >= 0) & (longest <= k) & (longest > 0)
            out[use] += self.backoff[k][context[use]]
        out[~has_prev] = np.nan  # nothing to condition on: not a scored position
        return out.reshape(B, L)

    def score_stream(self, stream, context=None, chunk: int = 1 << 20) -> np.ndarray:
        """log10 p of every token of ``stream`` (ids, one ``<eos>`` after each sentence).

        ``context``: the tokens before it (default: a sentence start, ``[<eos>]``).
        """
        stream = np.asarray(stream, dtype=np.int64).reshape(-1)
        context = np.asarray([EOS_ID] if context is None else context, dtype=np.int64)
        keep = self.order - 1
        out = np.empty(len(stream))
        history = context[len(context) - keep :] if keep else context[:0]
        for start in range(0, len(stream), chunk):
            piece = stream[start : start + chunk]
            if len(history) == 0:  # order 1: a dummy context token that nothing reads
                history = np.array([EOS_ID])
            seq = np.concatenate([history, piece])
            out[start : start + len(piece)] = self.log10_probs(seq)[0, len(history) :]
            history = seq[len(seq) - keep :] if keep else seq[:0]
        return out

    def evaluate(self, stream, context=None) -> dict:
        """Corpus figures on a stream: tokens, log10 probability, perplexity, zero-probability
        tokens (perplexity inf when there are any: an unsmoothed model meets unseen n-grams)."""
        lp = self.score_stream(stream, context)
        total = float(lp.sum()) if len(lp) else 0.0
        zeros = int(np.count_nonzero(np.isneginf(lp)))
        ppl = 10.0 ** (-total / len(lp)) if len(lp) and zeros == 0 else math.inf
        return {"tokens": len(lp), "log10_prob": total, "perplexity": ppl, "zero_prob": zeros}

    def score(self, contexts: np.ndarray, words: np.ndarray) -> np.ndarray:
        """log10 p(words[i] | contexts[i]) for contexts [M, C] (-1 = no token; an ``<eos>``
        means ``<s>``) and words [M]."""
        words = np.asarray(words, dtype=np.int64)
        if self.order == 1:  # no context needed
            return self.logprob[1][words].astype(np.float64)
        contexts = np.asarray(contexts, dtype=np.int64).reshape(len(words), -1)
        return self.log10_probs(np.concatenate([contexts, words[:, None]], 1))[:, -1]

    def log_distribution(self, contexts: np.ndarray) -> np.ndarray:
        """[M, V] log10 p(w | contexts[m]) over the whole vocabulary, for contexts [M, C]."""
        contexts = np.asarray(contexts, dtype=np.int64)
        M = len(contexts)
        V = self.vocab_size
        dist = np.tile(self.logprob[1][:V], (M, 1))  # order 1
        if self.order == 1 or contexts.shape[1] == 0:
            return dist
        found = self._walk(contexts)  # the k-grams ending at the last context token
        last = contexts.shape[1] - 1
        ends_sentence = contexts[:, last] == EOS_ID
        for k in range(1, self.order):
            h = found[k].reshape(M, -1)[:, last].copy()
            h[ends_sentence] = self.bos if k == 1 else NONE
            rows = np.flatnonzero(h >= 0)
            if len(rows) == 0:
                break
            dist[rows] += self.backoff[k][h[rows]][:, None]  # words the context has not seen
            order, start = self.children(k + 1)
            counts = start[h[rows] + 1] - start[h[rows]]
            row = np.repeat(rows, counts)  # every (context, child) pair
            offset = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
            child = order[np.repeat(start[h[rows]], counts) + offset]
            dist[row, self.last(k + 1)[child]] = self.logprob[k + 1][child]
        return dist

    # --- persistence (plain tensors: checkpoints are loaded with weights_only=True) -------------
    def state_dict(self) -> dict:
        state = {
            "order": self.order,
            "vocab_size": self.vocab_size,
            "smoothing": self.smoothing,
            "info": {k: v for k, v in self.info.items() if isinstance(v, int | float | str)},
        }
        for n in range(1, self.order + 1):
            if n > 1:
                state[f"keys.{n}"] = torch.from_numpy(self.keys[n])
            state[f"logprob.{n}"] = torch.from_numpy(self.logprob[n])
            if n < self.order:
                state[f"backoff.{n}"] = torch.from_numpy(self.backoff[n])
        return state

    @classmethod
    def from_state_dict(cls, state: dict) -> NGramModel:
        N = state["order"]

        def arr(name):
            return state[name].numpy() if name in state else None

        return cls(
            N,
            state["vocab_size"],
            [None, None] + [arr(f"keys.{n}") for n in range(2, N + 1)],
            [None] + [arr(f"logprob.{n}") for n in range(1, N + 1)],
            [None] + [arr(f"backoff.{n}") for n in range(1, N)] + [None],
            state.get("smoothing", "arpa"),
            state.get("info"),
        )

    @classmethod
    def uniform(cls, vocab_size: int, order: int = 1) -> NGramModel:
        """The model before any counts: every word 1 / V."""
        N, V = order, vocab_size
        logprob = np.full(V + 1, -math.log10(V))
        logprob[V] = 0.0  # <s>
        keys = [None, None] + [np.zeros(0, dtype=np.int64)] * (N - 1)
        backoff = [None] + [np.zeros(V + 1 if n == 1 else 0) for n in range(1, N)] + [None]
        return cls(N, V, keys, [None, logprob] + [np.zeros(0)] * (N - 1), backoff, "uniform")


# ------------------------------------------------------------------------------------------------
# Counting
# ------------------------------------------------------------------------------------------------
@dataclass
class NGramCounts:
    """Raw counts of every n-gram of orders 1..N in a corpus, in the model's key layout.

    ``counts[n][i]``: occurrences of the n-gram with key ``keys[n][i]``; ``prefix[n][i]``: index
    (in order n - 1) of its context. Sentences are padded on the left with one ``<s>`` as in
    KenLM: an n-gram starting with ``<s>`` exists only at a sentence start.
    """

    order: int
    vocab_size: int
    keys: list
    counts: list
    prefix: list
    tokens: int


def _as_chunks(streams) -> list[np.ndarray]:
    if isinstance(streams, np.ndarray | torch.Tensor) and np.ndim(streams) == 1:
        streams = [streams]
    return [np.asarray(s, dtype=np.int64).reshape(-1) for s in streams if len(s)]


def _sort_groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort non-negative int64 keys: (the keys sorted, their positions in that order, where each
    distinct key's run begins, the rank of the key at each sorted place).

    When key and position fit in 63 bits together, one direct sort of the packed words
    ``key << bits | position`` (numpy's SIMD sort) replaces the stable indirect sort of
    ``np.unique``, which is 5-10x slower on 16M keys.
    """
    keys = np.asarray(keys, dtype=np.int64)  # int32 keys would overflow when packed
    n = len(keys)
    bits = max(1, (n - 1).bit_length())  # enough for a position
    if n and int(keys.max()).bit_length() + bits <= 63:
        ordered = keys << bits
        ordered |= np.arange(n, dtype=np.int64)
        ordered.sort()  # (key, position) words: by key, then by position
        order = ordered & ((1 << bits) - 1)  # the positions, in that order
        ordered >>= bits  # the keys, sorted
    else:  # keys too wide to pack (huge corpora): an indirect sort
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
    starts = np.ones(n, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])  # a new key begins here
    first = np.flatnonzero(starts)  # [U]
    rank = np.repeat(np.arange(len(first), dtype=np.int64), np.diff(first, append=n))  # [n]
    return ordered, order, first, rank


def group_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index=True, return_inverse=True, return_counts=True)`` for
    non-negative int64 keys (``_sort_groups``): the sorted distinct keys, where each first
    occurs, the rank of each key, and the count of each distinct key."""
    ordered, order, first, rank = _sort_groups(keys)
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = rank
    return ordered[first], order[first], inverse, np.diff(first, append=len(keys))


def count_ngrams(streams, vocab_size: int, order: int) -> NGramCounts:
    """Count the n-grams of ``streams``: one id array, or a list of them, each a run of whole
    sentences (ids, every sentence followed by ``<eos>``; each array starts a sentence)."""
    V, N, bos = vocab_size, order, vocab_size
    chunks = _as_chunks(streams)
    # each chunk behind a virtual <eos>: the context that starts its first sentence
    x = np.concatenate([np.concatenate([[EOS_ID], c]) for c in chunks]) if chunks else [EOS_ID]
    x = np.asarray(x, dtype=np.int64)
    L = len(x)
    if L and (x.min() < 0 or x.max() >= V):
        raise ValueError(f"token ids must lie in [0, {V}); got {x.min()}..{x.max()}")
    predicted = np.ones(L, dtype=bool)
    predicted[np.cumsum([0] + [len(c) + 1 for c in chunks[:-1]])] = False
    # tokens since the last <eos> before each position: how long a context it can have
    is_eos = x == EOS_ID
    last_eos = np.maximum.accumulate(np.where(is_eos, np.arange(L), 0))
    since = np.zeros(L, dtype=np.int64)
    since[1:] = np.arange(1, L) - last_eos[:-1]
    ctx = np.where(is_eos, bos, x)  # a token read as context: <eos> is <s>

    keys, counts, prefix = [None, None], [None], [None, None]
    counts.append(np.bincount(x[predicted], minlength=V + 1).astype(np.int64))
    pos = np.flatnonzero(predicted)
    index = x.copy()  # index of the (n-1)-gram ending at each position (order 1: the token)
    size = V + 1
    for n in range(2, N + 1):
        pos = pos[since[pos] >= n - 1]
        ordered, order, first, rank = _sort_groups(ctx[pos - (n - 1)] * size + index[pos])
        # the context of the n-gram at p is the (n-1)-gram ending at p - 1 (order 1: a token)
        at = pos[order[first]] - 1  # [U]: before one occurrence of each n-gram
        context = ctx[at] if n == 2 else index[at]
        keys.append(ordered[first])
        counts.append(np.diff(first, append=len(pos)))
        prefix.append(context)
        index.fill(NONE)  # reused: a fresh [L] array per order costs page faults, not just time
        index[pos[order]] = rank  # the n-gram ending at each position
        size = len(first)
    return NGramCounts(N, V, keys, counts, prefix, int(predicted.sum()))


# ------------------------------------------------------------------------------------------------
# Estimation
# ------------------------------------------------------------------------------------------------
def kneser_ney_discounts(adjusted: np.ndarray, n: int) -> np.ndarray:
    """[0, D1, D2, D3+] from counts-of-counts (Chen & Goodman eq. 26, as lmplz computes them)."""
    nr = [int(np.count_nonzero(adjusted == j)) for j in range(5)]
    discounts = np.zeros(4)
    if all(nr[j] > 0 for j in (1, 2, 3)):
        y = nr[1] / (nr[1] + 2.0 * nr[2])
        discounts[1:] = [j - (j + 1) * y * nr[j + 1] / nr[j] for j in (1, 2, 3)]
    if not all(0 <= discounts[j] <= j for j in (1, 2, 3)) or nr[1] == 0 or nr[2] == 0 or nr[3] == 0:
        # lmplz refuses; its --discount_fallback uses these (small or artificial data)
        warnings.warn(
            f"Kneser-Ney: counts-of-counts of {n}-grams {nr[1:4]} give no valid discounts "
            "(small or artificial data); using the fallback 0.5, 1, 1.5",
            stacklevel=3,
        )
        discounts[1:] = [0.5, 1.0, 1.5]
    return discounts


def _log10(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log10(p)


def estimate(counts: NGramCounts, smoothing: str = "kneser_ney", k: float = 1.0) -> NGramModel:
    """ARPA-style tables from raw counts (see the module docstring for the smoothings)."""
    if smoothing not in SMOOTHINGS:
        raise UserError(f"model.smoothing must be one of {list(SMOOTHINGS)}, got '{smoothing}'")
    N, V, bos = counts.order, counts.vocab_size, counts.vocab_size
    sizes = [None, V + 1] + [len(counts.keys[n]) for n in range(2, N + 1)]
    first = [None, None] + [counts.keys[n] // sizes[n - 1] for n in range(2, N + 1)]
    suffix = [None, None] + [counts.keys[n] % sizes[n - 1] for n in range(2, N + 1)]
    raw, prefix = counts.counts, counts.prefix
    logprob = [None] * (N + 1)
    backoff = [None] + [np.zeros(sizes[n]) for n in range(1, N)] + [None]
    info: dict = {"tokens": counts.tokens}

    def per_context(n, weights):  # sum over the n-grams sharing a context (an (n-1)-gram)
        return np.bincount(prefix[n], weights=weights, minlength=sizes[n - 1])

    if smoothing == "kneser_ney":
        # adjusted counts: raw for the highest order and for n-grams that start with <s> (nothing
        # precedes them), else the number of distinct words seen before them (continuation)
        adjusted = [None] * (N + 1)
        adjusted[N] = raw[N].copy()
        for n in range(N - 1, 0, -1):
            adjusted[n] = np.bincount(suffix[n + 1], minlength=sizes[n]).astype(np.int64)
            if n >= 2:
                adjusted[n] = np.where(first[n] == bos, raw[n], adjusted[n])
        adjusted[1][bos] = 0  # lmplz: <s> has count 0 (and <unk>, unless the text has it)
        prob = None
        for n in range(1, N + 1):
            a = adjusted[n]
            D = kneser_ney_discounts(a, n)
            info.update({f"D{j}.{n}": float(D[j]) for j in (1, 2, 3)})
            discount = D[np.minimum(a, 3)]
            if n == 1:
                denominator = a.sum()
                gamma = discount.sum() / denominator if denominator else 1.0
                p = (a - discount) / max(denominator, 1) + gamma / V  # uniform: 1 / V
                p[bos] = 1.0  # lmplz: <s> is never predicted; log10 1 = 0 in the file
            else:
                denominator = per_context(n, a.astype(np.float64))
                has = denominator > 0
                gamma = np.zeros(sizes[n - 1])
                gamma[has] = per_context(n, discount)[has] / denominator[has]
                h = prefix[n]
                p = (a - discount) / denominator[h] + gamma[h] * prob[suffix[n]]
                backoff[n - 1][has] = _log10(gamma[has])
            prob = p
            logprob[n] = _log10(p)
    elif smoothing == "witten_bell":
        prob = None
        for n in range(1, N + 1):
            r = raw[n].astype(np.float64)
            if n == 1:
                seen = np.count_nonzero(r[:V])
                total = r[:V].sum()
                p = (r + seen / V) / (total + seen) if total else np.full(V + 1, 1.0 / V)
                p[bos] = 1.0
            else:
                h = prefix[n]
                c_h = per_context(n, r)
                types = per_context(n, None)
                p = (r + types[h] * prob[suffix[n]]) / (c_h[h] + types[h])
                has = types > 0
                backoff[n - 1][has] = _log10(types[has] / (c_h[has] + types[has]))
            prob = p
            logprob[n] = _log10(p)
    else:  # add_k, mle: the full context only (for a sentence's first words: <s> and after)
        uniform = -math.log10(V)
        for n in range(1, N + 1):
            r = raw[n].astype(np.float64)
            if n == 1:  # the full context only when the model is a unigram model
                full, c_h = np.full(V + 1, N == 1), r[:V].sum()
            else:  # the full context: N - 1 words, or fewer after <s>
                full, c_h = (first[n] == bos) | (n == N), per_context(n, r)[prefix[n]]
            with np.errstate(divide="ignore", invalid="ignore"):
                if smoothing == "mle":
                    lp = np.where(full, _log10(r / c_h), -np.inf)
                else:
                    lp = np.where(full, _log10((r + k) / (c_h + k * V)), uniform)
            if n == 1:
                lp[bos] = 0.0
            logprob[n] = lp
            if smoothing == "add_k" and n >= 2:
                # the weight of an unseen word after a full context h: k / (c(h) + kV) = bo * 1/V
                lower = n - 1
                full_context = np.zeros(sizes[lower], dtype=bool)
                if lower == N - 1:
                    full_context[:] = True
                elif lower == 1:
                    full_context[bos] = True
                else:
                    full_context = first[lower] == bos
                c = per_context(n, r)
                backoff[lower][full_context] = np.log10(k * V / (c[full_context] + k * V))
    model = NGramModel(N, V, counts.keys, logprob, backoff, smoothing, info)
    model._prefix.update({n: prefix[n] for n in range(2, N + 1)})
    return model


def train_ngram(streams, vocab_size: int, order: int = 5, smoothing="kneser_ney", k=1.0):
    """Count and estimate in one call."""
    if smoothing not in SMOOTHINGS:
        raise UserError(f"model.smoothing must be one of {list(SMOOTHINGS)}, got '{smoothing}'")
    if smoothing == "add_k" and not k > 0:
        raise UserError(f"model.k must be positive for add_k smoothing, got {k}")
    chunks = _as_chunks(streams)
    with _reusing_freed_memory(sum(len(c) for c in chunks)):
        return estimate(count_ngrams(chunks, vocab_size, order), smoothing, k)


_ALLOCATOR_LOCK = threading.Lock()


@contextlib.contextmanager
def _reusing_freed_memory(num_tokens: int):
    """While counting and estimating a large corpus, let glibc's malloc reuse freed arrays.

    glibc serves an allocation larger than its mmap threshold (at most 32 MB) with a fresh
    ``mmap`` that ``free`` returns to the kernel, so each of the many large temporaries of a big
    corpus is page-faulted (zeroed) anew: on the project's VMs that made a 16M-token 5-gram grow
    as n^1.2-1.4 instead of n log n. Here ``mmap`` is off and trimming deferred, so freed arrays
    are reused; afterwards the heap is trimmed and the limits are set to glibc's own steady state
    (mmap above 32 MB, trim above 64 MB). It is process-wide, so it is used only where it
    matters (more than 2^20 tokens), one estimation at a time, and never
    where the user set glibc's ``MALLOC_*`` variables or the C library is not glibc.
    """
    large = num_tokens > 2**20  # temporaries of 8 MB and more; the default corpora are smaller
    user_tuned = any(k.startswith("MALLOC_") for k in os.environ)
    libc = _glibc() if large and not user_tuned else None
    if libc is None or not _ALLOCATOR_LOCK.acquire(blocking=False):
        yield  # small corpus, not glibc, user-tuned, or another estimation is running
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4
    try:
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, 65536)  # glibc's default
        libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
        libc.mallopt(M_TRIM_THRESHOLD, 64 * 2**20)
        libc.malloc_trim(0)
        _ALLOCATOR_LOCK.release()


def _glibc():
    """The C library if it is glibc (it has ``mallopt`` and ``malloc_trim``), else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def benchmark(train_stream, vocab_size: int, held_out=None, order: int = 5, repeat: int = 3):
    """The figures ``make bench`` reports: estimation time (count + estimate, best of
    ``repeat``), scoring speed on ``held_out`` (default: the training stream), n-grams, and the
    peak memory numpy allocates while estimating (tracemalloc, in a separate run)."""
    import tracemalloc

    held_out = train_stream if held_out is None else held_out
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        model = train_ngram(train_stream, vocab_size, order)
        seconds.append(time.perf_counter() - started)
    scoring = []
    for _ in range(repeat):
        started = time.perf_counter()
        model.score_stream(held_out)
        scoring.append(time.perf_counter() - started)
    tracemalloc.start()
    train_ngram(train_stream, vocab_size, order)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "train_tokens": int(np.size(train_stream)),
        "order": order,
        "estimate_seconds": min(seconds),
        "score_tokens_per_sec": np.size(held_out) / min(scoring),
        "ngrams": model.num_ngrams(),
        "estimate_peak_mb": peak / 2**20,
    }


# ------------------------------------------------------------------------------------------------
# ARPA files
# ------------------------------------------------------------------------------------------------
def _itos(vocab) -> list[str]:
    return list(vocab.itos if hasattr(vocab, "itos") else vocab)


def _open_text(path, mode: str):
    path = Path(path)
    if mode.startswith("r"):
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
    else:
        gzipped = path.suffix == ".gz"
    if gzipped:
        return gzip.open(path, mode + "t", encoding="utf-8", compresslevel=6)
    return open(path, mode, encoding="utf-8")


def _arpa_number(values: np.ndarray) -> list[str]:
    """Shortest strings that read back as the same float64 (log10 0 as -99)."""
    values = np.where(np.isneginf(values), ARPA_ZERO, values)
    return [repr(v) for v in values.tolist()]


def export_arpa(model, path, vocab=None) -> Path:
    """Write ``model`` (an :class:`NGramModel` or an :class:`NGramLM`) as an ARPA file (gzipped
    when ``path`` ends in ``.gz``) that KenLM, SRILM and :func:`load_arpa` read.

    ``<eos>`` is written ``</s>``, the context id ``<s>`` (log10 p = 0, as lmplz writes it);
    a probability 0 (``mle``) is -99.
    """
    if isinstance(model, NGramLM):
        vocab = vocab if vocab is not None else model.vocab
        model = model.estimated()
    if vocab is None:
        raise UserError("export_arpa needs the vocabulary (the model's ids have no words)")
    names = np.array(_itos(vocab) + ["<s>"], dtype=object)
    if len(names) != model.vocab_size + 1:
        raise UserError(f"vocabulary of {len(names) - 1} words for a model of {model.vocab_size}")
    names[EOS_ID], names[UNK_ID] = "</s>", "<unk>"
    N = model.order
    path = Path(path)
    with _open_text(path, "w") as f:
        f.write("\\data\\\n")
        for n in range(1, N + 1):
            f.write(f"ngram {n}={model.size(n)}\n")
        for n in range(1, N + 1):
            f.write(f"\n\\{n}-grams:\n")
            tokens = model.tokens(n)
            words = names[tokens[:, 0]]
            for j in range(1, n):
                words = words + " " + names[tokens[:, j]]
            columns = [_arpa_number(model.logprob[n]), words.tolist()]
            if n < N:
                columns.append(_arpa_number(model.backoff[n]))
            f.writelines("\t".join(row) + "\n" for row in zip(*columns, strict=True))
        f.write("\n\\end\\\n")
    return path


def _read_arpa(path) -> dict[int, tuple[np.ndarray, list[str], np.ndarray]]:
    """Per order n: log10 probabilities [M], the M * n words, backoffs [M] (0 where absent)."""
    sections: dict[int, list[str]] = {}
    n = 0
    with _open_text(path, "r") as f:
        for line in f:
            if line.startswith("\\"):
                line = line.strip()
                if line.endswith("-grams:"):
                    n = int(line[1:].split("-")[0])
                    sections[n] = []
                elif line == "\\end\\":
                    break
            elif n and not line.isspace():
                sections[n].append(line)
    if not sections:
        raise UserError(f"'{path}' is not an ARPA file (no \\1-grams: section)")
    out = {}
    for n, lines in sections.items():
        fields = " ".join(lines).split()  # one split for the section: fast
        for width in (n + 2, n + 1):  # every line with a backoff, or none with one
            if len(fields) == width * len(lines):
                rows = [fields[j::width] for j in range(width)]
                break
        else:  # some lines with a backoff, some without (SRILM omits zeros): line by line
            split = [line.split() for line in lines]
            if any(len(r) not in (n + 1, n + 2) for r in split):
                bad = next(r for r in split if len(r) not in (n + 1, n + 2))
                raise UserError(f"'{path}': malformed {n}-gram line: {' '.join(bad)}")
            rows = [[r[j] for r in split] for j in range(n + 1)]
            rows.append([r[n + 1] if len(r) > n + 1 else "0" for r in split])
        prob = np.array(rows[0], dtype=np.float64)
        words = [w for group in zip(*rows[1 : n + 1], strict=True) for w in group]
        backoff = np.array(rows[n + 1], dtype=np.float64) if len(rows) > n + 1 else None
        out[n] = (prob, words, np.zeros(len(prob)) if backoff is None else backoff)
    return out


def _row_codes(rows: np.ndarray) -> np.ndarray:
    """Equal codes for equal rows of a non-negative int matrix [M, n] (hierarchical grouping)."""
    code = rows[:, -1].copy()
    for j in range(rows.shape[1] - 2, -1, -1):
        code = group_keys(rows[:, j] * (code.max() + 1) + code)[2]
    return code


def _from_ngrams(grams: list, vocab_size: int, unknown_logprob: float) -> NGramModel:
    """Tables from explicit n-grams: ``grams[n] = (tokens [M, n], logprob [M], backoff [M])``
    (ids ``0..vocab_size-1``, ``<s>`` = vocab_size). An n-gram whose suffix the list lacks
    (pruned files) gets that suffix inserted with the probability the back-off gives it, as
    KenLM does, so that every suffix of an n-gram is in the model."""
    N, V, bos = len(grams) - 1, vocab_size, vocab_size
    tokens = [None]
    for n in range(1, N + 1):
        tokens.append(np.asarray(grams[n][0], dtype=np.int64).reshape(-1, n))
    lp = [None] + [np.asarray(g[1], dtype=np.float64) for g in grams[1:]]
    bo = [None] + [np.asarray(g[2], dtype=np.float64) for g in grams[1:]]
    # top-down: every n-gram's suffix must be an (n-1)-gram; find its row (or add one)
    suffix_row: list = [None] * (N + 1)
    for n in range(N, 1, -1):
        suffixes = tokens[n][:, 1:]
        if n == 2:
            suffix_row[n] = suffixes[:, 0]  # order 1 is dense: the row is the id
            continue
        lower = tokens[n - 1]
        codes = _row_codes(np.concatenate([lower, suffixes]))
        lower_codes, suffix_codes = codes[: len(lower)], codes[len(lower) :]
        rows = np.full(len(suffixes), NONE, dtype=np.int64)
        present = np.zeros(len(suffixes), dtype=bool)
        if len(lower):
            order = np.argsort(lower_codes, kind="stable")
            at = np.minimum(np.searchsorted(lower_codes[order], suffix_codes), len(lower) - 1)
            present = lower_codes[order][at] == suffix_codes
            rows[present] = order[at][present]
        if not present.all():
            _, first_at, back, _ = group_keys(suffix_codes[~present])
            added = suffixes[~present][first_at]
            rows[~present] = len(lower) + back
            tokens[n - 1] = np.concatenate([lower, added])
            lp[n - 1] = np.concatenate([lp[n - 1], np.full(len(added), np.nan)])
            bo[n - 1] = np.concatenate([bo[n - 1], np.zeros(len(added))])
        suffix_row[n] = rows
    # bottom-up: keys
    logprob1 = np.full(V + 1, unknown_logprob)
    backoff1 = np.zeros(V + 1)
    logprob1[tokens[1][:, 0]], backoff1[tokens[1][:, 0]] = lp[1], bo[1]
    logprob1[bos] = 0.0  # never predicted
    keys, logprob, backoff = [None, None], [None, logprob1], [None, backoff1]
    entry = np.arange(V + 1)  # row -> index in the table below
    size = V + 1
    for n in range(2, N + 1):
        key = tokens[n][:, 0] * size + entry[suffix_row[n]]
        order = np.argsort(key, kind="stable")
        key = key[order]
        unique = np.ones(len(key), dtype=bool)
        unique[1:] = key[1:] != key[:-1]
        if not unique.all():
            log.warning("ARPA: %d duplicate %d-grams ignored", int((~unique).sum()), n)
        entry = np.empty(len(order), dtype=np.int64)
        entry[order] = np.cumsum(unique) - 1
        keys.append(key[unique])
        logprob.append(lp[n][order][unique])
        backoff.append(bo[n][order][unique])
        size = len(keys[n])
    backoff[N] = None
    model = NGramModel(N, V, keys, logprob, backoff, "arpa")
    # inserted n-grams: p(w | h) = backoff(h) * p(w | h'), in log10
    for n in range(2, N + 1):
        missing = np.flatnonzero(np.isnan(model.logprob[n]))
        if len(missing):
            h = model.prefix(n)[missing]
            weight = np.where(h >= 0, model.backoff[n - 1][np.maximum(h, 0)], 0.0)
            model.logprob[n][missing] = model.logprob[n - 1][model.suffix(n)[missing]] + weight
    return model


def load_arpa(path, vocab, order: int | None = None) -> NGramModel:
    """Read an ARPA file (plain or gzipped; from KenLM, SRILM, or :func:`export_arpa`) into a
    model over ``vocab``'s ids.

    ``</s>`` is ``<eos>``, ``<s>`` the start context. Words of the file outside ``vocab`` are
    what ``<unk>`` stands for in this project, so their probability goes to ``<unk>``, exactly, in
    every context: p(<unk> | h) = the file's sum over those words (and its own ``<unk>``); n-grams
    with such a word in their context are dropped (the project's text can never match them).
    Words of ``vocab`` that the file lacks are scored as KenLM scores them: with the file's
    ``<unk>`` probability (the distribution then sums to slightly more than 1; a warning says so).
    ``order`` keeps only the orders up to it.
    """
    itos = _itos(vocab)
    V = len(itos)
    stoi = {w: i for i, w in enumerate(itos)}
    stoi.pop(itos[EOS_ID], None)  # the vocabulary's <eos> is "</s>" in ARPA
    stoi.update({"</s>": EOS_ID, "<unk>": UNK_ID})
    sections = _read_arpa(path)
    N = max(sections) if order is None else min(order, max(sections))
    # ids: the vocabulary's, then the file's other words, then <s>
    extra: dict[str, int] = {}
    for word in sections[1][1]:
        if word not in stoi and word != "<s>" and word not in extra:
            extra[word] = V + len(extra)
    E = V + len(extra)  # <s> of the extended vocabulary
    ids = {**stoi, **extra, "<s>": E}
    grams: list = [None]
    dropped = 0
    for n in range(1, N + 1):
        prob, words, bow = sections.get(n, (np.zeros(0), [], np.zeros(0)))
        try:
            tok = np.fromiter(map(ids.__getitem__, words), np.int64, len(words))
        except KeyError:  # a word missing from the 1-grams: that n-gram is dropped below
            tok = np.fromiter((ids.get(w, NONE) for w in words), np.int64, len(words))
        tok = tok.reshape(-1, n)
        # well-formed: known words, <s> only first, </s> only last
        ok = (tok >= 0).all(1)
        if n > 1:
            ok &= (tok[:, 1:] != E).all(1) & (tok[:, :-1] != EOS_ID).all(1)
        dropped += int((~ok).sum())
        prob = np.where(prob <= ARPA_ZERO, -np.inf, prob)
        grams.append((tok[ok], prob[ok], bow[ok]))
    if dropped:
        log.warning("ARPA: %d malformed n-grams ignored", dropped)
    unknown = grams[1][1][grams[1][0][:, 0] == UNK_ID]
    unknown_logprob = float(unknown[0]) if len(unknown) else -np.inf
    listed = np.zeros(E + 1, dtype=bool)
    listed[grams[1][0][:, 0]] = True
    absent = int(V - listed[:V].sum())
    if absent:
        log.warning(
            "ARPA: %d words of the vocabulary are not in %s; they get its <unk> probability",
            absent,
            path,
        )
    model = _from_ngrams(grams, E, unknown_logprob)
    if extra:
        model = _fold_into_unknown(model, V)
    model.info.update({"arpa": str(path), "arpa_words_outside_vocab": len(extra)})
    model.smoothing = "arpa"
    return model


def _fold_into_unknown(model: NGramModel, V: int) -> NGramModel:
    """The same model over ids ``0..V-1`` only: every word with an id >= V (outside the
    vocabulary) merged into ``<unk>``, exactly.

    Let U(h) = sum of p(w | h) over the merged words (those and <unk> itself). With E(h), L(h)
    the sums of p(w | h) and p(w | h') over the merged words that h lists explicitly,
    U(h) = E(h) + backoff(h) * (U(h') - L(h)); U of the empty context is the unigram sum.
    Contexts that list a merged word get an explicit (h, <unk>) n-gram with log10 U(h); all
    others back off to U(h') as before.
    """
    N, E = model.order, model.vocab_size
    merged = np.zeros(E + 1, dtype=bool)
    merged[V:E] = True
    merged[UNK_ID] = True
    U = [None, np.array(float(np.sum(10.0 ** model.logprob[1][merged])))]  # U[n]: contexts of n
    explicit_unknown = [None]  # per order: contexts h (in order n - 1) that list a merged word
    for n in range(2, N + 1):
        last = model.last(n)
        lists = np.flatnonzero(merged[last])
        h = model.prefix(n)[lists]
        sizes = model.size(n - 1)
        E_h = np.bincount(h, weights=10.0 ** model.logprob[n][lists], minlength=sizes)
        L_h = np.bincount(
            h, weights=10.0 ** model.logprob[n - 1][model.suffix(n)[lists]], minlength=sizes
        )
        lower = U[n - 1] if n == 2 else U[n - 1][model.suffix(n - 1)]  # U(h') per h
        if n == 2:
            lower = np.full(sizes, U[1])
        U.append(E_h + 10.0 ** model.backoff[n - 1] * np.maximum(lower - L_h, 0.0))
        explicit_unknown.append(np.unique(h))
    # the reduced n-gram lists: nothing with a merged word other than <unk> itself
    bos_old = E
    grams: list = [None]
    for n in range(1, N + 1):
        tok = model.tokens(n)
        keep = ~((tok >= V) & (tok < E)).any(1)
        lp = model.logprob[n][keep].copy()
        bo = model.backoff[n][keep] if n < N else np.zeros(int(keep.sum()))
        tok = tok[keep]
        if n == 1:
            lp[tok[:, 0] == UNK_ID] = _log10(U[1])
        else:
            h = explicit_unknown[n - 1]
            context = model.tokens(n - 1)[h]
            ok = ~((context >= V) & (context < E)).any(1)
            h, context = h[ok], context[ok]
            # (h, <unk>): where the file lists it, a new probability (its backoff stays); add it
            # where it does not
            prefix = model.prefix(n)[keep]
            listed = np.flatnonzero(tok[:, -1] == UNK_ID)
            listed = listed[np.isin(prefix[listed], h)]
            lp[listed] = _log10(U[n][prefix[listed]])
            h, context = h[~np.isin(h, prefix[listed])], context[~np.isin(h, prefix[listed])]
            new = np.concatenate([context, np.full((len(h), 1), UNK_ID)], 1)
            tok = np.concatenate([tok, new])
            lp = np.concatenate([lp, _log10(U[n][h])])
            bo = np.concatenate([bo, np.zeros(len(h))])
        tok = np.where(tok == bos_old, V, tok)
        grams.append((tok, lp, bo))
    unknown_logprob = float(grams[1][1][grams[1][0][:, 0] == UNK_ID][0])
    return _from_ngrams(grams, V, unknown_logprob)


# ------------------------------------------------------------------------------------------------
# The LightningModule
# ------------------------------------------------------------------------------------------------
class NGramLM(LanguageModel):
    """An n-gram model in the same harness as the neural ones.

    "Training" is one pass over the training batches that keeps this rank's tokens (no optimizer,
    no gradients); the model is estimated from all ranks' tokens the first time it is needed
    after that pass -- Lightning validates *before* ``on_train_epoch_end`` -- and then stops the
    fit: another epoch would count the same text again. Evaluation goes through the base class's
    perplexity accounting over exactly the tokens the neural models score.

    The carried state is the last N - 1 input tokens of each column (-1 where there are none),
    cut after the most recent ``<eos>``, which is the ``<s>`` context of the next sentence.
    With ``arpa_path`` the model is read from an ARPA file (e.g. estimated by KenLM on a corpus
    far larger than this process could count) and nothing is counted.

    Lightning's automatic optimization stays on, with no optimizer and a zero loss, rather than
    manual optimization: Lightning refuses that together with the trainer's gradient clipping,
    and under DDP it refuses a training step that returns nothing.
    """

    def __init__(
        self,
        vocab_size: int,
        order: int = 5,
        smoothing: str = "kneser_ney",
        k: float = 1.0,
        arpa_path: str | None = None,
    ):
        super().__init__(vocab_size)
        if not isinstance(order, int) or order < 1:
            raise UserError(f"model.order must be a positive integer, got {order!r}")
        if smoothing not in SMOOTHINGS:
            raise UserError(f"model.smoothing must be one of {list(SMOOTHINGS)}, got '{smoothing}'")
        if smoothing == "add_k" and not k > 0:
            raise UserError(f"model.k must be positive for add_k smoothing, got {k}")
        self.order, self.smoothing, self.k = order, smoothing, k
        self.arpa_path = None if arpa_path is None else str(Path(arpa_path).expanduser())
        self.ngram: NGramModel | None = None
        self._columns: list[np.ndarray] = []  # this rank's training batches' targets [B, T]
        self._counting = False  # tokens came in since the last estimate
        self._fitted = False  # the counting pass is over (or the model came from a file/ckpt)
        self._resumed: list[np.ndarray] | None = None  # columns from a mid-pass checkpoint
        # DistributedDataParallel refuses a module without a trainable parameter: this one has no
        # elements (nothing to train, nothing in the parameter count)
        self.ddp_anchor = torch.nn.Parameter(torch.empty(0))

    # --- the estimated model ------------------------------------------------------------------
    def estimated(self) -> NGramModel:
        """The model, estimated (or read) now if it has not been; uniform before any counts."""
        if self._counting or (self.ngram is None and self.arpa_path is not None):
            started = time.perf_counter()
            if self.arpa_path is not None:
                if not Path(self.arpa_path).is_file():  # checked here: a checkpoint needs it not
                    raise UserError(f"model.arpa_path: no such file '{self.arpa_path}'")
                if self.vocab is None:
                    raise UserError("NGramLM with arpa_path needs the vocabulary (model.vocab)")
                self.ngram = load_arpa(self.arpa_path, self.vocab, self.order)
                if self.ngram.order < self.order:
                    log.warning(
                        "%s holds a %d-gram model; model.order=%d",
                        self.arpa_path,
                        self.ngram.order,
                        self.order,
                    )
            else:
                self.ngram = train_ngram(
                    self._all_columns(), self.vocab_size, self.order, self.smoothing, self.k
                )
            self._counting = False
            seconds = time.perf_counter() - started
            self._train_seconds += seconds  # part of "training" time (tokens per second)
            log.info(
                "n-gram model (%s, order %d) ready in %.2f s: %s n-grams",
                self.ngram.smoothing,
                self.ngram.order,
                seconds,
                self.ngram.num_ngrams(),
            )
        if self.ngram is None:
            return NGramModel.uniform(self.vocab_size, self.order)
        return self.ngram

    def _local_columns(self) -> list[np.ndarray]:
        """This rank's training text: one stream per column (columns start a sentence)."""
        if not self._columns:
            return []
        width = max(b.shape[0] for b in self._columns)
        out = []
        for c in range(width):
            column = np.concatenate([b[c] for b in self._columns if c < b.shape[0]])
            out.append(column[column != IGNORE_INDEX])
        return out

    def _all_columns(self) -> list[np.ndarray]:
        """Every rank's columns (DDP: gathered, so that every rank estimates the same model)."""
        mine = self._local_columns()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, mine)
            return [column for part in gathered for column in part]
        return mine

    def num_parameters(self) -> int:
        """Stored probabilities and backoffs (an n-gram model's parameters; 0 before counting)."""
        return 0 if self.ngram is None else self.ngram.num_values()

    # --- training: one pass that keeps the tokens ---------------------------------------------
    def training_step(self, batch, batch_idx):
        """Keep the batch's tokens; the loss is a constant 0 (through the empty parameter, so that
        DDP and gradient clipping have their backward pass and nothing changes)."""
        zero = self.ddp_anchor.sum()
        if self._fitted or self.arpa_path is not None:
            return zero  # counted already (a later epoch, a checkpoint) or read from a file
        if self._resumed is not None:  # a mid-pass resume (in case no epoch start came first)
            self._columns, self._resumed = self._resumed, None
        inputs, targets = batch
        if batch_idx == 0 and not bool((inputs[:, 0] == EOS_ID).all()):
            raise UserError("NGramLM trains on sentence-aligned columns (each starts with <eos>)")
        self._columns.append(targets.to("cpu", torch.int32).numpy())
        self._counting = True
        return zero

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        if not self._fitted:  # a counting pass starts, or resumes from a mid-pass checkpoint
            self._columns, self._resumed = self._resumed or [], None
            self._counting = bool(self._columns)

    def on_train_epoch_end(self):
        counted = bool(self._columns)
        model = self.estimated()
        if counted:  # perplexity on the training text itself (this rank's part)
            for column in self._local_columns():
                lp = model.score_stream(column)
                self.train_ppl.update(
                    torch.tensor(-lp.sum() * LN10, dtype=torch.float64), torch.tensor(len(lp))
                )
            super().on_train_epoch_end()
        self._columns, self._fitted = [], True
        self.trainer.should_stop = True  # one pass is the whole training of a count model

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self.estimated()

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self.estimated()

    # --- scoring ------------------------------------------------------------------------------
    def init_state(self, batch_size: int):
        return torch.full((batch_size, self.order - 1), NONE, dtype=torch.long, device=self.device)

    def _history(self, inputs: torch.Tensor, state) -> np.ndarray:
        """[B, N-1+S]: the carried tokens, then the inputs."""
        if state is None:
            state = self.init_state(inputs.size(0))
        return np.concatenate(
            [state.to("cpu", torch.int64).numpy(), inputs.to("cpu", torch.int64).numpy()], 1
        )

    def _next_state(self, history: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """The last N - 1 tokens of each row, nothing before its last ``<eos>``."""
        keep = self.order - 1
        state = history[:, history.shape[1] - keep :].copy() if keep else history[:, :0].copy()
        if keep:
            columns = np.arange(keep)
            last_eos = np.where(state == EOS_ID, columns, -1).max(1, keepdims=True)
            state[columns < last_eos] = NONE
        return torch.from_numpy(state).to(like.device)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """-ln p(target) [B, T] for the last T inputs, in one vectorized walk of the tables."""
        model = self.estimated()
        history = self._history(inputs, state)  # [B, N-1+S]
        T = targets.size(1)
        y = targets.to("cpu", torch.int64).numpy()
        valid = y != IGNORE_INDEX
        before = history.shape[1] - T  # history[:, before]: the input before the first target
        seq = np.concatenate([history[:, : before + 1], np.where(valid, y, NONE)], 1)
        # the targets continue the inputs (the column layout): score the sequence itself
        continues = np.array_equal(
            np.where(valid[:, :-1], seq[:, before + 1 : -1], 0),
            np.where(valid[:, :-1], history[:, before + 1 :], 0),
        )
        if continues:
            lp = model.log10_probs(seq)[:, -T:]
        else:  # any inputs: each target against its own context
            keep = max(self.order - 1, 1)
            windows = np.lib.stride_tricks.sliding_window_view(history, keep, axis=1)
            contexts = windows[:, before + 1 - keep : before + 1 - keep + T].reshape(-1, keep)
            lp = model.score(contexts, np.where(valid, y, EOS_ID).reshape(-1)).reshape(y.shape)
        nll = np.where(valid, -lp * LN10, 0.0).astype(np.float32)  # float, like every family
        return torch.from_numpy(nll).to(inputs.device), self._next_state(history, inputs)

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs [B, S] -> (log p(next token) [B, S, V], new state): the full distributions."""
        model = self.estimated()
        history = self._history(inputs, state)
        B, S = inputs.shape
        keep = max(self.order - 1, 1)
        if history.shape[1] < keep:
            history = np.concatenate([np.full((B, keep - history.shape[1]), NONE), history], 1)
        windows = np.lib.stride_tricks.sliding_window_view(history, keep, axis=1)
        contexts = windows[:, history.shape[1] - S - keep + 1 :].reshape(B * S, keep)
        logp = model.log_distribution(contexts) * LN10  # [B*S, V]
        logits = torch.from_numpy(logp.astype(np.float32)).view(B, S, -1).to(inputs.device)
        return logits, self._next_state(history, inputs)

    # --- checkpoints carry the estimated tables (or, inside the counting pass, the tokens) ------
    def resume_state(self) -> dict:
        state = super().resume_state()
        if not self._fitted:  # inside the counting pass: a resume counts the rest on top of these
            state["ngram_columns"] = [torch.from_numpy(c) for c in self._local_columns()]
        return state

    def load_resume_state(self, state: dict) -> None:
        super().load_resume_state(state)
        if "ngram_columns" in state:  # this rank's columns so far, as one [B, T] batch
            mine = [column.numpy() for column in state["ngram_columns"]]
            batch = np.full((len(mine), max(map(len, mine), default=0)), IGNORE_INDEX)
            for row, column in zip(batch, mine, strict=True):
                row[: len(column)] = column
            self._resumed = [batch.astype(np.int32)]

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        position = training_position(self._trainer)
        inside_the_pass = not self._fitted and position is not None and position["batches"] > 0
        if inside_the_pass:
            return  # the tokens so far are in the resume state (lm_experiments/runtime/resume.py)
        if self._counting or self.ngram is not None or self.arpa_path is not None:
            checkpoint["ngram"] = self.estimated().state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._counting, self._columns = False, []
        ranks = checkpoint.get("carried", {}).get("ranks", [])
        if "ngram" in checkpoint:
            self.ngram, self._fitted = NGramModel.from_state_dict(checkpoint["ngram"]), True
        elif any("ngram_columns" in rank for rank in ranks):
            fitting = self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING
            if not fitting:  # evaluate what was counted when it stopped (a resume: see above)
                columns = [c.numpy() for rank in ranks for c in rank["ngram_columns"]]
                self.ngram = train_ngram(
                    columns, self.vocab_size, self.order, self.smoothing, self.k
                )
                self._fitted = True
