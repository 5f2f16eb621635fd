"""The embedded default corpus: a generated English-like language whose true perplexity is known.

A user with no network still gets a meaningful experiment, and every experiment gets a ruler: the
oracle perplexity, i.e. the perplexity of the process that generated the text. No model can beat it
on average, so "how far above the oracle" is an absolute measure of what a model failed to learn.

- `engine.py`: a PCFG run as an unambiguous stack machine (samples, scores, derivations);
- `lexicon.py`, `english.py`: the English grammar's words and its rules;
- `annotations.py`: what decided each token and how far back, word classes, sentence labels;
- `splits.py`: the seeded train/validation/test splits, cached through `datasets`.
"""

from lm_experiments.data.synthetic.annotations import (
    DISTANCE_BUCKETS,
    NO_DECIDER,
    NUMBER_LABELS,
    QUESTION_LABELS,
    TAGS,
    VERB_CLASSES,
    Annotation,
    annotate,
    distance_bucket,
)
from lm_experiments.data.synthetic.engine import EOS, GENERATOR_VERSION, Grammar
from lm_experiments.data.synthetic.english import default_grammar, english_rules
from lm_experiments.data.synthetic.lexicon import NOUNS, PREPOSITIONS, VERBS
from lm_experiments.data.synthetic.splits import (
    SENTENCE_LABELS,
    SPLITS,
    TOKEN_ANNOTATIONS,
    build_synthetic_splits,
    generate_split,
    oracle_perplexity,
    split_seed,
)

__all__ = [
    "DISTANCE_BUCKETS", "EOS", "GENERATOR_VERSION", "NOUNS", "NO_DECIDER",
    "NUMBER_LABELS", "PREPOSITIONS", "QUESTION_LABELS", "SENTENCE_LABELS", "SPLITS", "TAGS",
    "TOKEN_ANNOTATIONS", "VERBS",
    "VERB_CLASSES", "Annotation", "Grammar", "annotate", "build_synthetic_splits",
    "default_grammar", "distance_bucket", "english_rules", "generate_split",
    "oracle_perplexity", "split_seed",
]  # fmt: skip
