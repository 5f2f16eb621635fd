"""Per-sentence score files: ``<run_dir>/scores/<split>.parquet``, what a paired comparison reads.

A run's ``metrics.json`` holds corpus figures (exp of one sum over one count); these files hold
the same sums split by sentence, so the report can resample sentences (``bootstrap.py``) and
compare two models on the same sentences. One row per sentence, in corpus order:

============================  ======  ==========================================================
column                        dtype   what
============================  ======  ==========================================================
``sentence``                  int64   the sentence's index in the split (0, 1, 2, ... in order)
``tokens``                    int64   the tokens scored in it, its end-of-sentence included
``nll``                       float64 the sum of their NLLs in nats (the biRNN: its forward LM)
``nll_backward``              float64 the biRNN's backward LM, same tokens
``oracle_nll``                float64 the generator's own NLL (embedded corpus only)
``tokens_<b>``, ``nll_<b>``,  ...     the same three restricted to the tokens whose deciding
``oracle_nll_<b>``                    word is ``b`` tokens back (:data:`BUCKETS`; embedded corpus)
``correct`` (``labels``)      int64   a classifier's 0/1 per sentence (a tagger: correct tags and
                                      its tag count ``labels``); the report's ``acc`` metric
============================  ======  ==========================================================

Summing a column reproduces the corpus sum of ``metrics.json`` (``test/ppl`` = exp(sum nll /
sum tokens)). The writer (the task, at the end of an evaluation) collects per-token values and
calls :func:`sentence_of_token`, :func:`sentence_sums` and :func:`distance_columns`, then
:func:`write_scores`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lm_experiments.data.synthetic import DISTANCE_BUCKETS, distance_bucket
from lm_experiments.errors import UserError

SCORES_DIR = "scores"
#: distance buckets: tokens back to the word that decided a token ("none": nothing earlier did);
#: the grammar's own definition (``data/synthetic/annotations.py``), so the two cannot drift apart
BUCKETS = DISTANCE_BUCKETS
INTEGER_COLUMNS = ("sentence", "tokens", "correct", "labels")


def scores_path(run_dir: str | Path, split: str = "test") -> Path:
    return Path(run_dir) / SCORES_DIR / f"{split}.parquet"


def bucket_column(quantity: str, bucket: str) -> str:
    """``bucket_column("nll", "1-3")`` -> ``"nll_1-3"``: the column of one distance bucket."""
    if bucket not in BUCKETS:
        raise ValueError(f"distance bucket {bucket!r} is not one of {', '.join(BUCKETS)}")
    return f"{quantity}_{bucket}"


def bucket_of_distance(distance: np.ndarray) -> np.ndarray:
    """Each token's bucket index into :data:`BUCKETS` (0 = none: distance 0 or less)."""
    distance = np.asarray(distance)
    return np.where(distance > 0, distance_bucket(distance), 0)  # 1 -> 1, 3 -> 1, 4 -> 2


def sentence_of_token(is_end: np.ndarray) -> np.ndarray:
    """Each scored token's sentence index, from whether it is an end-of-sentence: a sentence's
    tokens are its words and its closing ``<eos>`` (the stream of targets in corpus order)."""
    is_end = np.asarray(is_end, dtype=np.int64)
    return np.cumsum(is_end) - is_end  # ends strictly before each token


def sentence_sums(sentence_of_token: np.ndarray, values: np.ndarray, num_sentences: int):
    """Per-sentence float64 sums of per-token ``values`` (``sentence_of_token[i]`` is token i's
    sentence): one ``np.bincount``, so a 10^7-token split takes well under a second."""
    sentence_of_token = np.asarray(sentence_of_token, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if sentence_of_token.shape != values.shape:
        raise ValueError(f"{sentence_of_token.shape} sentence ids for {values.shape} values")
    return np.bincount(sentence_of_token, weights=values, minlength=num_sentences)


def distance_columns(
    sentence_of_token: np.ndarray,
    distance: np.ndarray,
    nll: np.ndarray,
    oracle_nll: np.ndarray,
    num_sentences: int,
) -> dict[str, np.ndarray]:
    """``tokens_<b>``, ``nll_<b>``, ``oracle_nll_<b>`` for every bucket: per-token NLLs and the
    grammar's per-token distance (0: no earlier word decided the token) summed per sentence."""
    bucket = bucket_of_distance(distance)
    columns = {}
    for index, name in enumerate(BUCKETS):
        inside = (bucket == index).astype(np.float64)
        tokens = sentence_sums(sentence_of_token, inside, num_sentences)
        columns[bucket_column("tokens", name)] = tokens.round().astype(np.int64)
        columns[bucket_column("nll", name)] = sentence_sums(
            sentence_of_token, np.where(inside > 0, nll, 0.0), num_sentences
        )
        columns[bucket_column("oracle_nll", name)] = sentence_sums(
            sentence_of_token, np.where(inside > 0, oracle_nll, 0.0), num_sentences
        )
    return columns


def write_scores(path: str | Path, columns: dict[str, np.ndarray]) -> Path:
    """Write one score file (atomically: a reader never sees half of it). ``sentence`` defaults
    to 0..n-1; integer columns are stored as int64, the others as float64."""
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"score columns of different lengths: {lengths}")
    n = next(iter(lengths.values()), 0)
    columns = {"sentence": np.arange(n, dtype=np.int64), **columns}
    arrays = {
        name: np.asarray(values, dtype=np.int64 if name in INTEGER_COLUMNS else np.float64)
        for name, values in columns.items()
    }
    if n and np.any(np.diff(arrays["sentence"]) <= 0):
        raise ValueError("score rows must be in corpus order, one per sentence")
    return write_table(path, arrays)


def write_table(path: str | Path, arrays: dict) -> Path:
    """Write columns as a Parquet file, atomically (a reader never sees half of it)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    pq.write_table(pa.table(arrays), partial)
    partial.replace(path)
    return path


def read_scores(path: str | Path) -> dict[str, np.ndarray]:
    """A score file as ``{column: array}``; a file that is not one is a UserError."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow's errors have no common base beyond these
        raise UserError(f"{path}: not a readable score file ({err})") from None
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    if "sentence" not in columns:
        raise UserError(f"{path}: a score file needs a 'sentence' column")
    return columns
