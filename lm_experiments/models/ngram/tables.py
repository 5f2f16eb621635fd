"""The n-gram model as KenLM stores one: ARPA-style tables, and scoring with them.

An order-N model holds, per order n, a table of n-grams with ``log10 p(w | h)`` already
interpolated down to the uniform distribution, and for each n-gram a ``log10`` backoff weight
gamma used when it is the context of a longer n-gram. Scoring is then "find the longest n-gram of
the model that ends in w, add the backoffs of the longer contexts it skipped" -- the ARPA
semantics, so that ARPA files (``arpa.py``) are exact and a model estimated by KenLM on a
web-scale corpus plugs in for one counted here.

Representation (numpy arrays, nothing is a Python object per n-gram):

* ids ``0..V-1`` are the vocabulary's (``0`` = ``<unk>``, ``1`` = ``<eos>``); ``V`` is ``<s>``,
  a context-only id: an ``<eos>`` in a context means "a sentence starts here", nothing before
  it counts, exactly as each sentence of KenLM starts from ``<s>``.
* order 1 is dense (index = id, ``V + 1`` entries). An n-gram ``w1 .. wn`` of order n >= 2 is the
  int64 key ``w1 * size[n-1] + index(w2 .. wn)``: its first token and the index of its suffix in
  the table below, like a reversed trie. Keys are sorted; the index of an n-gram is its rank, so
  lookups are ``np.searchsorted`` and walking to a longer n-gram (one more word on the left) is
  one lookup per order.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from lm_experiments.data.vocab import EOS_ID

LN10 = math.log(10.0)
NONE = -1  # "no token here" in a context (before the start of a column) / "not in the model"


def log10(p: np.ndarray) -> np.ndarray:
    """log10, with log10(0) = -inf and no warning (an unsmoothed model's unseen n-grams)."""
    with np.errstate(divide="ignore"):
        return np.log10(p)


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
        dist = np.tile(self.logprob[1][:V].astype(np.float64), (M, 1))  # order 1
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

    def compact(self) -> NGramModel:
        """Stored as KenLM stores a model: probabilities and backoffs in float32 (about 7 digits,
        as many as an ARPA file prints), the lookup caches dropped (rebuilt when needed)."""
        for table in (self.logprob, self.backoff):
            for n, values in enumerate(table):
                if values is not None:
                    table[n] = values.astype(np.float32, copy=False)
        self._prefix.clear()
        return self

    @classmethod
    def uniform(cls, vocab_size: int, order: int = 1) -> NGramModel:
        """The model before any counts: every word 1 / V."""
        N, V = order, vocab_size
        logprob = np.full(V + 1, -math.log10(V))
        logprob[V] = 0.0  # <s>
        keys = [None, None] + [np.zeros(0, dtype=np.int64)] * (N - 1)
        backoff = [None] + [np.zeros(V + 1 if n == 1 else 0) for n in range(1, N)] + [None]
        return cls(N, V, keys, [None, logprob] + [np.zeros(0)] * (N - 1), backoff, "uniform")
