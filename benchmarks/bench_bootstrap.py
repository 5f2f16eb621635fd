"""The comparison's bootstrap: how long 1,000 resamples of 10^5 sentences take.

    python -m benchmarks.run bootstrap            # 10^4 and 10^5 sentences, 1,000 resamples
    python -m benchmarks.run bootstrap --quick    # 10^3 and 10^4 (a smoke check)

Times ``compare.bootstrap.ratio_of_sums`` (one model's perplexity replicates: the counts of every
resample and the sums of its NLL and token columns) and a paired comparison of six models (six
perplexity series resampled alike, their ratios to the best, the intervals), on simulated
per-sentence scores; the best of three runs.
"""

from __future__ import annotations

import time

import numpy as np

from lm_experiments.compare import bootstrap

TITLE = "Bootstrap over sentences (comparison report)"
MODELS = 6


def _best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def _scores(sentences: int):
    rng = np.random.default_rng(0)
    tokens = 1 + rng.poisson(20, sentences)
    nll = tokens[:, None] * rng.normal(5.0, 0.5, (sentences, MODELS))  # [n, models]
    return tokens, nll


def _one_model(tokens, nll):
    return bootstrap.ratio_of_sums(nll[:, 0], tokens, np.exp)


def _paired(tokens, nll):
    ppl = [bootstrap.ratio_of_sums(nll[:, m], tokens, np.exp) for m in range(MODELS)]
    best = min(range(MODELS), key=lambda m: np.median(ppl[m]))
    return [bootstrap.interval(p / ppl[best]) for p in ppl]


def run(quick: bool = False) -> str:
    sizes = (10**3, 10**4) if quick else (10**4, 10**5)
    lines = [
        f"| sentences | resamples | one model (s) | {MODELS} models, paired (s) |",
        "|---:|---:|---:|---:|",
    ]
    for n in sizes:
        tokens, nll = _scores(n)
        one = _best_of(lambda tokens=tokens, nll=nll: _one_model(tokens, nll))
        paired = _best_of(lambda tokens=tokens, nll=nll: _paired(tokens, nll))
        lines.append(f"| {n:,} | {bootstrap.RESAMPLES:,} | {one:.2f} | {paired:.2f} |")
    return (
        "Percentile bootstrap over sentences as the report runs it (`compare/bootstrap.py`): "
        "each chunk of resamples is one `integers` draw, one `bincount` into a [chunk, n] "
        "count matrix and one matrix product with the score columns. 'paired' resamples every "
        f"model with the same counts and takes the {MODELS} ratios to the best with their "
        "intervals. Best of three runs.\n\n" + "\n".join(lines)
    )


if __name__ == "__main__":
    import sys

    print(run(quick="--quick" in sys.argv))
