"""The default corpus's splits: seeded draws of the English grammar, cached through `datasets`.

Each row is one sentence: its text, the oracle NLL of every token (the words and the final
<eos>), and what the grammar knows about it (`annotations.py`): per token the distance to the
word that decided it and the word class, per sentence the question / subject-number / main-verb
labels.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

from lm_experiments.data.synthetic.annotations import (
    NUMBER_LABELS,
    QUESTION_LABELS,
    TAGS,
    VERB_CLASSES,
    annotate,
)
from lm_experiments.data.synthetic.engine import Grammar
from lm_experiments.data.synthetic.english import default_grammar

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "validation", "test")
TOKEN_ANNOTATIONS = ("distance", "tag")  # one value per token: the words, then <eos>
SENTENCE_LABELS = ("question", "subject_number", "verb_class")  # one value per sentence

# Bump when annotations.py changes what it computes: `datasets` cannot see that in the cache key.
ANNOTATIONS_VERSION = 1


def split_seed(seed: int, split: str) -> int:
    """Independent sampling seed per split, derived by hashing (seed, split).

    Hashing rather than seed+1, seed+2 keeps seed 0's validation split from being seed 1's train.
    """
    digest = hashlib.sha256(f"lm-experiments/synthetic/{seed}/{split}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def generate_split(grammar: Grammar, seed: int, num_tokens: int) -> Iterator[dict]:
    """Sentences `{"text", "oracle_nll"}` until at least `num_tokens` tokens (words + <eos>)."""
    rng = random.Random(seed)
    emitted = 0
    while emitted < num_tokens:
        words, nlls = grammar.sample_sentence(rng)
        emitted += len(nlls)
        yield {"text": " ".join(words), "oracle_nll": nlls}


def _generate_default_split(
    seed: int, num_tokens: int, grammar_fingerprint: str, annotations_version: int
) -> Iterator[dict]:
    """`generate_split` over the default grammar, annotated, with arguments `datasets` can
    fingerprint.

    `datasets` hashes a module-level generator by its name only, so the grammar's own fingerprint
    and the annotations' version travel in gen_kwargs: editing either gives a new cache entry
    instead of stale splits.
    """
    grammar = default_grammar()
    if grammar.fingerprint() != grammar_fingerprint:
        raise ValueError("grammar changed between fingerprinting and generation")
    for row in generate_split(grammar, seed, num_tokens):
        yield row | annotate(grammar, row["text"].split())._asdict()


def features() -> datasets.Features:
    """The corpus's columns (``datasets`` is imported only when the corpus is built)."""
    import datasets

    return datasets.Features(
        {
            "text": datasets.Value("string"),
            "oracle_nll": datasets.List(datasets.Value("float64")),
            "distance": datasets.List(datasets.Value("int32")),
            "tag": datasets.List(datasets.ClassLabel(names=list(TAGS))),
            "question": datasets.ClassLabel(names=list(QUESTION_LABELS)),
            "subject_number": datasets.ClassLabel(names=list(NUMBER_LABELS)),
            "verb_class": datasets.ClassLabel(names=list(VERB_CLASSES)),
        }
    )


def build_synthetic_splits(
    seed: int = 0,
    train_tokens: int = 200_000,
    valid_tokens: int = 20_000,
    test_tokens: int = 20_000,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """The default corpus as a DatasetDict (train/validation/test; the columns of features()).

    Built with `Dataset.from_generator`, so it is cached under `cache_dir` like any corpus; the
    cache key covers the seed, the sizes, the grammar's fingerprint and the annotations' version.
    """
    import datasets

    fingerprint = default_grammar().fingerprint()
    sizes = {"train": train_tokens, "validation": valid_tokens, "test": test_tokens}
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_generator(
                _generate_default_split,
                features=features(),
                cache_dir=cache_dir,
                split=split,
                gen_kwargs={
                    "seed": split_seed(seed, split),
                    "num_tokens": sizes[split],
                    "grammar_fingerprint": fingerprint,
                    "annotations_version": ANNOTATIONS_VERSION,
                },
            )
            for split in SPLITS
        }
    )


def oracle_perplexity(dataset_split) -> float:
    """exp(total oracle NLL / number of tokens), tokens = words + one <eos> per sentence."""
    total, count = 0.0, 0
    for nlls in dataset_split["oracle_nll"]:
        total += math.fsum(nlls)
        count += len(nlls)
    return math.exp(total / count)
