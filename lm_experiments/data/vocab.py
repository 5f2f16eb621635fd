"""Word (or character) vocabulary built from the train split only.

Ids 0 and 1 are reserved: ``<unk>`` for every token outside the vocabulary (closed-vocabulary
perplexity: an unknown test word is scored as ``<unk>``), and ``<eos>``, which ends every sentence
and doubles as the start-of-sentence context at the beginning of a split.
The remaining ids are sorted by descending train frequency, which an adaptive softmax needs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import numpy as np

UNK = "<unk>"
EOS = "<eos>"
UNK_ID = 0
EOS_ID = 1
IGNORE_INDEX = -100  # a padded target: never scored, never counted


class Vocabulary:
    def __init__(self, itos: list[str]):
        if itos[:2] != [UNK, EOS]:
            raise ValueError(f"a vocabulary must start with {UNK!r}, {EOS!r}; got {itos[:2]}")
        self.itos = list(itos)
        self.stoi = {token: i for i, token in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("a vocabulary may not list a token twice")

    @classmethod
    def build(
        cls, sentences: Iterable[list[str]], min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """Count tokens; keep those seen ``min_freq`` times, at most ``max_size`` in all."""
        counts = Counter()
        for tokens in sentences:
            counts.update(tokens)
        return cls.from_counts(
            list(counts), np.fromiter(counts.values(), np.int64, len(counts)), min_freq, max_size
        )

    @classmethod
    def from_counts(
        cls, tokens: list[str], counts: np.ndarray, min_freq: int = 1, max_size: int | None = None
    ) -> Vocabulary:
        """From distinct ``tokens`` in first-occurrence order and their ``counts``: the tokens
        seen ``min_freq`` times, most frequent first, ties in first-occurrence order (so builds
        are repeatable), at most ``max_size`` ids in all."""
        counts = np.array(counts, dtype=np.int64)
        for special in (UNK, EOS):  # a literal <unk> in the text *is* the vocabulary's <unk>
            if special in tokens:
                counts[tokens.index(special)] = -1
        order = np.argsort(-counts, kind="stable")
        order = order[counts[order] >= max(min_freq, 1)]  # never the specials (-1)
        if max_size is not None:
            order = order[: max(0, max_size - 2)]
        return cls([UNK, EOS, *(tokens[i] for i in order)])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.itos == other.itos

    def encode(self, tokens: list[str]) -> list[int]:
        """Ids of one sentence followed by its end-of-sentence id."""
        get = self.stoi.get
        return [get(t, UNK_ID) for t in tokens] + [EOS_ID]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.itos[i] for i in ids]
