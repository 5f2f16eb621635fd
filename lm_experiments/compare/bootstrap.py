"""The statistics of the report: a bootstrap over sentences, paired across models, and over seeds.

Every figure of the report is a *ratio of sums* over the sentences of the test split, passed
through a transform: perplexity = exp(sum NLL / sum tokens), accuracy = sum correct / sum
labels, excess NLL = sum (NLL - oracle NLL) / sum tokens. The sentence is the unit that is
resampled (tokens within a sentence are not independent), so a resample draws n sentences with
replacement and recomputes the sums with each sentence counted as often as it was drawn.

* **Percentile intervals.** The 95% interval is the 2.5% and 97.5% quantile of the statistic
  over :data:`RESAMPLES` resamples. The statistics are smooth functions of means over thousands
  of sentences, for which the percentile interval's coverage is close to nominal
  (``tests/test_bootstrap.py`` measures it on simulated data with a known truth).
* **Paired.** The counts depend only on (seed, number of sentences), so every model of a
  comparison sees the *same* resamples, sentence for sentence. The ratio of two models'
  perplexities is then computed resample by resample: what varies between sentences for both
  models (hard sentences are hard for all) cancels, and the interval is much narrower than two
  separate intervals would suggest.
* **Seeds (hierarchical bootstrap).** A configuration trained with S seeds is resampled twice
  per replicate: the sentences (shared by all models), then S seeds drawn with replacement from
  its S runs; the replicate's value is the mean over the drawn seeds. The interval thus holds
  both sources of variation: which sentences the test split holds and which seed trained the
  model. With few seeds the seed part is rough (3 seeds: the interval spans roughly the range of
  the three runs), which is as much as 3 runs can tell.

Vectorized: the counts of a chunk of resamples are one ``integers`` draw and one ``bincount``
([chunk, n] matrix), and the sums are one matrix product with the [n, k] score columns; 10^5
sentences x 1,000 resamples take seconds (``benchmarks/bench_bootstrap.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

RESAMPLES = 1000
SEED = 0
LEVEL = 0.95
CHUNK_CELLS = 1 << 22  # counts per chunk: 4M cells = 32 MiB of float64


def resample_counts(
    num_sentences: int, resamples: int = RESAMPLES, seed: int = SEED
) -> Iterator[np.ndarray]:
    """[chunk, n] float64 matrices: how often resample r draws sentence i. The same (seed, n)
    gives the same counts: what makes two models' resamples paired."""
    n = num_sentences
    if n <= 0:
        raise ValueError("a bootstrap needs at least one sentence")
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, CHUNK_CELLS // n))
    for start in range(0, resamples, chunk):
        rows = min(chunk, resamples - start)
        draws = rng.integers(0, n, size=(rows, n))  # [rows, n]: sentence indices
        draws += np.arange(rows)[:, None] * n  # row r's draws count in row r
        yield np.bincount(draws.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)


def resampled_sums(columns: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """The column sums of each resample: [n, k] -> [resamples, k] (float64)."""
    columns = np.asarray(columns, dtype=np.float64)
    flat = columns.reshape(len(columns), -1)  # [n, k]
    sums = np.concatenate([counts @ flat for counts in resample_counts(len(flat), resamples, seed)])
    return sums.reshape(resamples, *columns.shape[1:])


def ratio_of_sums(
    numerator: np.ndarray,
    denominator: np.ndarray | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> np.ndarray:
    """Bootstrap replicates of ``transform(sum numerator / sum denominator)``.

    ``numerator`` is [n] (one series) or [n, ...] (several series over the same n sentences,
    resampled alike); ``denominator`` has its shape, or is None (each sentence counts 1).
    Returns [resamples] or [resamples, ...].
    """
    numerator = np.asarray(numerator, dtype=np.float64)
    if denominator is None:
        denominator = np.ones_like(numerator)
    denominator = np.broadcast_to(np.asarray(denominator, dtype=np.float64), numerator.shape)
    sums = resampled_sums(np.stack([numerator, denominator], axis=-1), resamples, seed)
    with np.errstate(divide="ignore", invalid="ignore"):  # a bucket no resample drew: nan
        value = sums[..., 0] / sums[..., 1]
    return transform(value) if transform is not None else value


def seed_mean(replicates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The hierarchical step: [resamples, S] replicates of S seeds -> [resamples], each the mean
    over S seeds drawn with replacement. One seed: its replicates as they are."""
    replicates = np.asarray(replicates, dtype=np.float64)
    resamples, seeds = replicates.shape
    if seeds == 1:
        return replicates[:, 0]
    picks = rng.integers(0, seeds, size=(resamples, seeds))
    return np.take_along_axis(replicates, picks, axis=1).mean(axis=1)


def interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval over axis 0: (lo, hi), each of the replicates' trailing shape."""
    tail = (1 - level) / 2
    lo, hi = np.nanquantile(np.asarray(replicates, dtype=np.float64), [tail, 1 - tail], axis=0)
    return lo, hi


def excludes(lo: float, hi: float, value: float = 1.0) -> bool:
    """Significant at the interval's level: the interval lies wholly on one side of ``value``."""
    return bool(hi < value or lo > value)
