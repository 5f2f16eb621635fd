"""Estimation: raw counts -> the model's tables, for each smoothing.

    p(w | h) = (c(h w) - D) / c(h)  +  gamma(h) * p(w | h')        interpolated Kneser-Ney
                                                                  (h' = h without its first word)

``kneser_ney`` is interpolated modified Kneser-Ney (Chen & Goodman 1998) with every convention of
KenLM's ``lmplz``; ``witten_bell`` is interpolated; ``add_k`` and ``mle`` use the full context
only (``mle`` has no smoothing: an unseen n-gram gets probability 0 and a perplexity of inf --
the sparsity problem, shown rather than hidden). Everything is ``bincount`` sums per context.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from lm_experiments.errors import UserError
from lm_experiments.models.ngram.counting import BLOCK, NGramCounts, as_chunks, count_ngrams
from lm_experiments.models.ngram.memory import reusing_freed_memory
from lm_experiments.models.ngram.tables import NGramModel, log10

SMOOTHINGS = ("kneser_ney", "witten_bell", "add_k", "mle")


def check_options(smoothing: str, k: float = 1.0, order: int | None = None) -> None:
    """The one place that refuses a bad ``model.order``, ``model.smoothing`` or ``model.k``."""
    if order is not None and (not isinstance(order, int) or isinstance(order, bool) or order < 1):
        raise UserError(f"model.order must be a positive integer, got {order!r}")
    if smoothing not in SMOOTHINGS:
        raise UserError(f"model.smoothing must be one of {list(SMOOTHINGS)}, got '{smoothing}'")
    if smoothing == "add_k" and not k > 0:
        raise UserError(f"model.k must be positive for add_k smoothing, got {k}")


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


class _Orders:
    """What every smoothing reads of the counts, per order, computed when asked (one order's
    arrays at a time, not every order's at once: they are the size of the corpus)."""

    def __init__(self, counts: NGramCounts, dtype):
        N, V = counts.order, counts.vocab_size
        self.N, self.V, self.bos, self.counts, self.dtype = N, V, V, counts, dtype
        self.sizes = [None, V + 1] + [len(counts.keys[n]) for n in range(2, N + 1)]
        self.raw, self.prefix = counts.counts, counts.prefix
        self.logprob: list = [None] * (N + 1)
        self.backoff: list = [None] + [np.zeros(self.sizes[n], dtype) for n in range(1, N)] + [None]

    def _blocks(self, n: int):
        return ((s, min(s + BLOCK, self.sizes[n])) for s in range(0, self.sizes[n], BLOCK))

    def first(self, n: int) -> np.ndarray:
        """First token of every n-gram (int32, computed a block at a time)."""
        out = np.empty(self.sizes[n], dtype=np.int32)
        for s, e in self._blocks(n):
            out[s:e] = self.counts.keys[n][s:e] // self.sizes[n - 1]
        return out

    def suffix(self, n: int) -> np.ndarray:
        """Index of every n-gram without its first token (int32 below 2^31 n-grams)."""
        out = np.empty(self.sizes[n], dtype=np.int32 if self.sizes[n - 1] < 2**31 else np.int64)
        for s, e in self._blocks(n):
            out[s:e] = self.counts.keys[n][s:e] % self.sizes[n - 1]
        return out

    def per_context(self, n: int, weights) -> np.ndarray:
        """Sums over the n-grams that share a context (an (n-1)-gram), block by block:
        ``weights`` is an array, None (count the n-grams) or ``f(start, end)`` giving a block's.
        A block's contexts span a short range (the tables are sorted, so are the contexts):
        each block's ``bincount`` covers only that range, not every context."""
        out = np.zeros(self.sizes[n - 1])
        for s, e in self._blocks(n):
            h = self.prefix[n][s:e]
            lo, hi = int(h.min()), int(h.max()) + 1
            w = weights(s, e) if callable(weights) else None if weights is None else weights[s:e]
            out[lo:hi] += np.bincount(h - lo, weights=w, minlength=hi - lo)
        return out

    def store(self, n: int, logprob: np.ndarray) -> None:
        self.logprob[n] = logprob.astype(self.dtype, copy=False)


def _adjusted_counts(o: _Orders) -> list:
    """Kneser-Ney's adjusted counts (int32): raw for the highest order and for n-grams that
    start with <s> (nothing precedes them), else the number of distinct words seen before them
    (continuation)."""
    N, bos = o.N, o.bos
    count_type = np.int32 if o.counts.tokens < 2**31 else np.int64
    adjusted = [None] * (N + 1)
    adjusted[N] = o.raw[N].astype(count_type, copy=False)
    for n in range(N - 1, 0, -1):
        adjusted[n] = np.bincount(o.suffix(n + 1), minlength=o.sizes[n]).astype(count_type)
        if n >= 2:
            starts = o.first(n) == bos
            adjusted[n][starts] = o.raw[n][starts]
    adjusted[1][bos] = 0  # lmplz: <s> has count 0 (and <unk>, unless the text has it)
    return adjusted


def _kneser_ney(o: _Orders, info: dict) -> None:
    N, V, bos = o.N, o.V, o.bos
    adjusted = _adjusted_counts(o)
    prob = None  # float64 p of the order below (the arithmetic is float64; storage o.dtype)
    for n in range(1, N + 1):
        a, adjusted[n] = adjusted[n], None
        D = kneser_ney_discounts(a, n)
        info.update({f"D{j}.{n}": float(D[j]) for j in (1, 2, 3)})
        if n == 1:
            discount = D[np.minimum(a, 3)]
            denominator = a.sum()
            gamma = discount.sum() / denominator if denominator else 1.0
            p = (a - discount) / max(denominator, 1) + gamma / V  # uniform: 1 / V
            p[bos] = 1.0  # lmplz: <s> is never predicted; log10 1 = 0 in the file
            o.store(n, log10(p))
            prob = p
            continue
        denominator = o.per_context(n, lambda s, e, a=a: a[s:e].astype(np.float64))
        has = denominator > 0
        gamma = o.per_context(n, lambda s, e, a=a, D=D: D[np.minimum(a[s:e], 3)])
        np.divide(gamma, denominator, out=gamma, where=has)  # in place: no [has] copies
        gamma[~has] = 0.0
        with np.errstate(divide="ignore"):  # log10 0 = -inf, as log10() writes it
            np.log10(gamma, out=o.backoff[n - 1], where=has, casting="same_kind")
        # p(w | h) = (a - D) / c(h) + gamma(h) p(w | h'), a block of n-grams at a time
        p = np.empty(o.sizes[n]) if n < N else None
        logprob = np.empty(o.sizes[n], dtype=o.dtype)
        keys, below = o.counts.keys[n], o.sizes[n - 1]
        for s, e in o._blocks(n):
            h = o.prefix[n][s:e]
            block = a[s:e] - D[np.minimum(a[s:e], 3)]
            block /= denominator[h]
            block += gamma[h] * prob[keys[s:e] % below]
            logprob[s:e] = log10(block)
            if p is not None:
                p[s:e] = block
        del a, denominator, gamma
        prob = p
        o.logprob[n] = logprob


def _witten_bell(o: _Orders) -> None:
    V, bos = o.V, o.bos
    prob = None
    for n in range(1, o.N + 1):
        r = o.raw[n].astype(np.float64)
        if n == 1:
            seen = np.count_nonzero(r[:V])
            total = r[:V].sum()
            p = (r + seen / V) / (total + seen) if total else np.full(V + 1, 1.0 / V)
            p[bos] = 1.0
        else:
            h = o.prefix[n]
            c_h = o.per_context(n, r)
            types = o.per_context(n, None)
            p = (r + types[h] * prob[o.suffix(n)]) / (c_h[h] + types[h])
            has = types > 0
            o.backoff[n - 1][has] = log10(types[has] / (c_h[has] + types[has]))
        prob = p
        o.store(n, log10(p))


def _full_context_only(o: _Orders, smoothing: str, k: float) -> None:
    """add_k, mle: the full context only (for a sentence's first words: <s> and after)."""
    N, V, bos = o.N, o.V, o.bos
    uniform = -math.log10(V)
    for n in range(1, N + 1):
        r = o.raw[n].astype(np.float64)
        if n == 1:  # the full context only when the model is a unigram model
            full, c_h = np.full(V + 1, N == 1), r[:V].sum()
        else:  # the full context: N - 1 words, or fewer after <s>
            full, c_h = (o.first(n) == bos) | (n == N), o.per_context(n, r)[o.prefix[n]]
        with np.errstate(divide="ignore", invalid="ignore"):
            if smoothing == "mle":
                lp = np.where(full, log10(r / c_h), -np.inf)
            else:
                lp = np.where(full, log10((r + k) / (c_h + k * V)), uniform)
        if n == 1:
            lp[bos] = 0.0
        o.store(n, lp)
        if smoothing == "add_k" and n >= 2:
            # the weight of an unseen word after a full context h: k / (c(h) + kV) = bo * 1/V
            lower = n - 1
            full_context = np.zeros(o.sizes[lower], dtype=bool)
            if lower == N - 1:
                full_context[:] = True
            elif lower == 1:
                full_context[bos] = True
            else:
                full_context = o.first(lower) == bos
            c = o.per_context(n, r)
            o.backoff[lower][full_context] = np.log10(k * V / (c[full_context] + k * V))


def estimate(
    counts: NGramCounts, smoothing: str = "kneser_ney", k: float = 1.0, dtype=np.float64
) -> NGramModel:
    """ARPA-style tables from raw counts (see the module docstring for the smoothings).
    ``dtype``: of the stored log10 probabilities and backoffs (the arithmetic is float64)."""
    check_options(smoothing, k)
    orders = _Orders(counts, dtype)
    info: dict = {"tokens": counts.tokens}
    if smoothing == "kneser_ney":
        _kneser_ney(orders, info)
    elif smoothing == "witten_bell":
        _witten_bell(orders)
    else:
        _full_context_only(orders, smoothing, k)
    N = counts.order
    model = NGramModel(
        N, counts.vocab_size, counts.keys, orders.logprob, orders.backoff, smoothing, info
    )
    model._prefix.update({n: counts.prefix[n] for n in range(2, N + 1)})
    return model


def train_ngram(streams, vocab_size: int, order: int = 5, smoothing="kneser_ney", k=1.0):
    """Count and estimate in one call."""
    check_options(smoothing, k)  # before counting: a typo should not cost a counting pass
    chunks = as_chunks(streams)
    with reusing_freed_memory(sum(len(c) for c in chunks)):
        return estimate(count_ngrams(chunks, vocab_size, order), smoothing, k)
