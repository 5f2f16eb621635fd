"""Count-based n-gram language models, exact against KenLM, and their ARPA files.

    tables.py     the model as KenLM stores one (ARPA-style tables) and scoring with it
    counting.py   token stream -> raw counts of every n-gram; merging the counts of parts
    smoothing.py  raw counts -> tables: modified Kneser-Ney (as lmplz), Witten-Bell, add-k, MLE
    arpa.py       ARPA files in and out
    memory.py     glibc's allocator while a large corpus is counted
    net.py        the net (``model=ngram``): fit (count once), init_state, forward, token_nll

The language-modeling task (``tasks/language_modeling.py``) wraps it like every net and counts it
once from the training stream (``tasks/counting.py``) instead of running a training loop.
"""

from lm_experiments.models.ngram.arpa import export_arpa, load_arpa
from lm_experiments.models.ngram.counting import (
    NGramCounts,
    count_ngrams,
    group_keys,
    merge_counts,
)
from lm_experiments.models.ngram.net import NGramNet
from lm_experiments.models.ngram.smoothing import (
    SMOOTHINGS,
    check_options,
    estimate,
    kneser_ney_discounts,
    train_ngram,
)
from lm_experiments.models.ngram.tables import LN10, NONE, NGramModel

__all__ = [
    "LN10",
    "NONE",
    "SMOOTHINGS",
    "NGramCounts",
    "NGramModel",
    "NGramNet",
    "check_options",
    "count_ngrams",
    "estimate",
    "export_arpa",
    "group_keys",
    "kneser_ney_discounts",
    "load_arpa",
    "merge_counts",
    "train_ngram",
]
