"""Counting: a token stream -> the raw count of every n-gram of orders 1..N, in the tables' key
layout (``tables.py``), with one sort of packed (key, position) words per order; and the merge of
counts made on separate parts of a corpus (the DDP ranks' shards) into the counts of the whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.models.ngram.tables import NONE, NGramModel


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


def as_chunks(streams) -> list[np.ndarray]:
    """The id arrays of ``streams`` (one array or several), in their own integer dtype: an int32
    stream (memory-mapped from the cache) is not copied to int64 here."""
    if isinstance(streams, np.ndarray | torch.Tensor) and np.ndim(streams) == 1:
        streams = [streams]
    chunks = [np.asarray(s).reshape(-1) for s in streams if len(s)]
    return [c if c.dtype.kind in "iu" else c.astype(np.int64) for c in chunks]


BLOCK = 1 << 20  # elements per step of the blockwise passes below (8 MB of int64)


def _sort_groups(
    keys: np.ndarray, scratch: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort non-negative int64 keys: (the keys sorted, their positions in that order, where each
    distinct key's run begins, the rank of the key at each sorted place).

    When key and position fit in 63 bits together, one direct sort of the packed words
    ``key << bits | position`` (numpy's SIMD sort) replaces the stable indirect sort of
    ``np.unique``, which is 5-10x slower on 16M keys. ``scratch``: ``keys`` is a temporary of
    the caller's, packed in place (one corpus-sized array fewer). Positions, run starts and
    ranks are int32 below 2^31 keys, and the packing and unpacking go block by block, so that
    no other int64 array the size of ``keys`` is made.
    """
    keys = np.asarray(keys, dtype=np.int64)  # int32 keys would overflow when packed
    n = len(keys)
    small = np.int32 if n < 2**31 else np.int64
    bits = max(1, (n - 1).bit_length())  # enough for a position
    if n and int(keys.max()).bit_length() + bits <= 63:
        ordered = np.left_shift(keys, bits, out=keys if scratch else None)
        for start in range(0, n, BLOCK):  # | position, a block at a time
            ordered[start : start + BLOCK] |= np.arange(start, min(start + BLOCK, n))
        ordered.sort()  # (key, position) words: by key, then by position
        order = np.empty(n, dtype=small)  # the positions, in that order
        mask = (1 << bits) - 1
        for start in range(0, n, BLOCK):
            np.bitwise_and(
                ordered[start : start + BLOCK],
                mask,
                out=order[start : start + BLOCK],
                casting="unsafe",
            )
        ordered >>= bits  # the keys, sorted
    else:  # keys too wide to pack (huge corpora): an indirect sort
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
    starts = np.ones(n, dtype=bool)
    np.not_equal(ordered[1:], ordered[:-1], out=starts[1:])  # a new key begins here
    first = np.flatnonzero(starts).astype(small)  # [U]
    rank = np.cumsum(starts, dtype=small)  # [n]
    del starts
    rank -= 1
    return ordered, order, first, rank


def group_keys(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(keys, return_index=True, return_inverse=True, return_counts=True)`` for
    non-negative int64 keys (``_sort_groups``): the sorted distinct keys, where each first
    occurs, the rank of each key, and the count of each distinct key."""
    ordered, order, first, rank = _sort_groups(keys)
    inverse = np.empty(len(keys), dtype=np.int64)
    inverse[order] = rank
    return ordered[first], order[first].astype(np.int64), inverse, np.diff(first, append=len(keys))


def _since_sentence_start(x: np.ndarray, order: int) -> np.ndarray:
    """Tokens since the last ``<eos>`` before each position (how long a context it can have),
    capped at ``order``: int8 (int16 for orders above 127), not one more int64 array the size of
    the corpus. Block by block: a run of ``<eos>``-free tokens carries over between blocks."""
    L = len(x)
    cap = min(order, 2**15 - 1)
    since = np.zeros(L, dtype=np.int8 if cap < 2**7 else np.int16)
    last = 0  # position of the last <eos> so far (the virtual one at 0 if none)
    for start in range(0, L, BLOCK):
        block = x[start : start + BLOCK]
        last_eos = np.where(block == EOS_ID, np.arange(start, start + len(block)), last)
        np.maximum.accumulate(last_eos, out=last_eos)
        before = np.concatenate([[last], last_eos[:-1]])  # the last <eos> before each position
        gap = np.arange(start, start + len(block)) - before
        np.minimum(gap, cap, out=gap)
        since[start : start + len(block)] = gap
        last = int(last_eos[-1])
    since[0] = 0
    return since


def _stream(chunks: list[np.ndarray], dtype) -> tuple[np.ndarray, np.ndarray]:
    """The chunks one after another, each behind a virtual ``<eos>`` (the context that starts its
    first sentence), in ``dtype``; and where those virtual tokens are."""
    starts = np.cumsum([0] + [len(c) + 1 for c in chunks[:-1]], dtype=np.int64)
    x = np.empty(sum(len(c) + 1 for c in chunks) if chunks else 1, dtype=dtype)
    x[0] = EOS_ID
    for at, c in zip(starts, chunks, strict=False):  # a loop over chunks, copied block-free
        x[at] = EOS_ID
        x[at + 1 : at + 1 + len(c)] = c
    return x, starts


def count_ngrams(streams, vocab_size: int, order: int) -> NGramCounts:
    """Count the n-grams of ``streams``: one id array, or a list of them, each a run of whole
    sentences (ids, every sentence followed by ``<eos>``; each array starts a sentence).

    Memory: int32 throughout below 2^31 tokens (tokens, positions, ranks), the one int64 array
    the size of the corpus being each order's packed keys, sorted in place."""
    V, N, bos = vocab_size, order, vocab_size
    chunks = as_chunks(streams)
    for c in chunks:
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= V):
            raise ValueError(f"token ids must lie in [0, {V}); got {c.min()}..{c.max()}")
    L = sum(len(c) + 1 for c in chunks) if chunks else 1
    small = np.int32 if L < 2**31 and V < 2**31 - 1 else np.int64  # tokens, positions, ranks
    x, virtual = _stream(chunks, small)
    del chunks
    predicted = np.ones(L, dtype=bool)
    predicted[virtual] = False
    since = _since_sentence_start(x, N)
    keys, counts, prefix = [None, None], [None], [None, None]
    counts.append(np.bincount(x[predicted], minlength=V + 1).astype(np.int64))
    pos = np.arange(L, dtype=small)[predicted]
    tokens = int(predicted.sum())
    del predicted
    ctx = x.copy()  # a token read as context: <eos> is <s>
    ctx[x == EOS_ID] = bos
    index, x = x, None  # index of the (n-1)-gram ending at each position (order 1: the token)
    size = V + 1
    for n in range(2, N + 1):
        pos = pos[since[pos] >= n - 1]
        key = ctx[pos - (n - 1)].astype(np.int64)
        key *= size
        key += index[pos]
        ordered, order, first, rank = _sort_groups(key, scratch=True)
        del key
        # the context of the n-gram at p is the (n-1)-gram ending at p - 1 (order 1: a token)
        at = pos[order[first]]  # [U]: one occurrence of each n-gram
        at -= 1  # the position before it
        prefix.append(ctx[at] if n == 2 else index[at])
        del at
        keys.append(ordered[first])
        del ordered
        counts.append(np.diff(first, append=small(len(pos))))
        size = len(first)
        del first
        index.fill(NONE)  # reused: a fresh [L] array per order costs page faults, not just time
        index[pos[order]] = rank  # the n-gram ending at each position
        del order, rank
    return NGramCounts(N, V, keys, counts, prefix, tokens)


def _index_of(rows: np.ndarray, keys: list, V: int) -> np.ndarray:
    """Index of each k-gram ``rows`` [M, k] in tables with keys ``keys`` (each row must be there).

    Built from the right: the last word is its own order-1 index, each word to its left makes the
    key of one order more (``first * size(below) + index``), looked up in that order."""
    index = rows[:, -1].astype(np.int64)
    size = V + 1
    for j in range(rows.shape[1] - 2, -1, -1):
        order = rows.shape[1] - j
        index = np.searchsorted(keys[order], rows[:, j] * size + index)
        size = len(keys[order])
    return index


def merge_counts(parts: list[NGramCounts]) -> NGramCounts:
    """The counts of the concatenated corpus from the counts of its parts (each a run of whole
    sentences, as count_ngrams requires): no n-gram crosses a sentence, so the counts add up.
    Order by order, bottom-up: each part's n-grams as tokens, their keys in the merged tables of
    the orders below, then per distinct key the sum of the parts' counts."""
    first = parts[0]
    if len(parts) == 1:
        return first
    N, V = first.order, first.vocab_size
    readers = [NGramModel(N, V, p.keys, [None] * (N + 1), [None] * (N + 1)) for p in parts]
    keys, counts, prefix = [None, None], [None, sum(p.counts[1] for p in parts)], [None, None]
    for n in range(2, N + 1):
        rows = np.concatenate([reader.tokens(n) for reader in readers])  # [M, n]
        raw = np.concatenate([p.counts[n] for p in parts])
        key = rows[:, 0] * (V + 1 if n == 2 else len(keys[n - 1])) + _index_of(rows[:, 1:], keys, V)
        unique, at, inverse, _ = group_keys(key)
        keys.append(unique)
        counts.append(np.bincount(inverse, weights=raw, minlength=len(unique)).astype(np.int64))
        context = rows[at, :-1]  # [U, n - 1]
        prefix.append(context[:, 0] if n == 2 else _index_of(context, keys, V))
    return NGramCounts(N, V, keys, counts, prefix, sum(p.tokens for p in parts))
