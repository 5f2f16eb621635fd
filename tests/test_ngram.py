"""The n-gram family: counting, the four smoothings, ARPA files, KenLM's exact numbers, and the
LightningModule in the shared harness.

Three kinds of evidence:

* a small synthetic corpus against direct, dictionary-based implementations of each formula
  (independent of the vectorized code and of any reference files);
* KenLM's own output on PTB-mini (``../shared/reference/kenlm/ptb-mini``): tables, per-sentence
  scores and perplexities, to 1e-4 (skipped, saying why, where that folder is absent);
* the Python ``kenlm`` module reading our ARPA files (skipped where it is not installed).
"""

from __future__ import annotations

import json
import math
from collections import Counter

import lightning as L
import numpy as np
import pytest
import torch

from lm_experiments.data.batching import ColumnBatches
from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX, UNK_ID, Vocabulary
from lm_experiments.errors import UserError
from lm_experiments.models.ngram import (
    LN10,
    SMOOTHINGS,
    NGramModel,
    NGramNet,
    count_ngrams,
    estimate,
    export_arpa,
    group_keys,
    load_arpa,
    merge_counts,
    train_ngram,
)
from lm_experiments.runtime.checkpoints import read_checkpoint
from lm_experiments.tasks.counting import shard
from lm_experiments.tasks.language_modeling import LanguageModeling
from lm_experiments.train import build, train
from tests.conftest import FAST, compose_config, scored_tokens, shared_path, toy_overrides

V = 80  # synthetic vocabulary: 0 <unk>, 1 <eos>, words 2..79
BOS = V


def synthetic_sentences(n: int, seed: int) -> list[np.ndarray]:
    """Zipfian words (rare ones too, so that every Kneser-Ney discount is estimable) with a
    deterministic successor half of the time (so that longer contexts help); a few <unk>s."""
    rng = np.random.default_rng(seed)
    sentences = []
    for _ in range(n):
        words: list[int] = []
        for _ in range(int(rng.integers(1, 13))):
            if words and rng.random() < 0.5:
                words.append((words[-1] * 3) % (V - 2) + 2)
            else:
                words.append(min(int(rng.zipf(1.3)), V - 2) + 1)
            if rng.random() < 0.01:
                words[-1] = UNK_ID
        sentences.append(np.array(words))
    return sentences


def as_stream(sentences) -> np.ndarray:
    return np.concatenate([np.r_[s, EOS_ID] for s in sentences]).astype(np.int64)


TRAIN = synthetic_sentences(1000, seed=0)
HELD_OUT = synthetic_sentences(200, seed=1)
STREAM, HELD_OUT_STREAM = as_stream(TRAIN), as_stream(HELD_OUT)


def random_contexts(order: int, n: int, seed: int) -> np.ndarray:
    """[n, max(order-1, 1)] contexts: windows of the training stream (sentence starts among
    them), random tokens (mostly unseen), and bare sentence starts; -1 = no token."""
    rng = np.random.default_rng(seed)
    width = max(order - 1, 1)
    ends = rng.integers(0, len(STREAM), n)
    seen = np.stack([np.r_[np.full(width, -1), STREAM][e : e + width] for e in ends])
    unseen = rng.integers(0, V, (n // 2, width))
    start = np.full((2, width), -1)
    start[:, -1] = EOS_ID
    return np.concatenate([seen, unseen, start])


# --- direct implementations of the formulas (dictionaries, recursion) ---------------------------
def padded_counts(sentences, order: int) -> Counter:
    """Every n-gram (n <= order) of every sentence with one <s> in front and </s> at the end."""
    counts = Counter()
    for s in sentences:
        tokens = [BOS, *map(int, s), EOS_ID]
        for i in range(1, len(tokens)):
            for n in range(1, min(order, i + 1) + 1):
                counts[tuple(tokens[i - n + 1 : i + 1])] += 1
    return counts


def history(context: np.ndarray, order: int) -> tuple:
    """The KenLM state a context leaves: after its last <eos>, <s>; at most order - 1 tokens."""
    tokens = [int(t) for t in context if t >= 0]
    if EOS_ID in tokens:
        at = len(tokens) - 1 - tokens[::-1].index(EOS_ID)
        tokens = [BOS, *tokens[at + 1 :]]
    return tuple(tokens[max(0, len(tokens) - (order - 1)) :]) if order > 1 else ()


class DirectModel:
    """p(w | h) written as in the papers, for one smoothing: the reference for the tables."""

    def __init__(self, sentences, order: int, smoothing: str, k: float = 0.5):
        self.N, self.smoothing, self.k = order, smoothing, k
        self.c = padded_counts(sentences, order)
        self.followers = Counter()  # c(h .) per context
        self.types = Counter()  # N1+(h .)
        for g, count in self.c.items():
            self.followers[g[:-1]] += count
            self.types[g[:-1]] += 1
        if smoothing == "kneser_ney":
            left = Counter(g[1:] for g in self.c if len(g) > 1)  # distinct words before g
            self.a = {
                g: count if len(g) == order or g[0] == BOS else left[g]
                for g, count in self.c.items()
            }
            self.D = {}
            for n in range(1, order + 1):
                nr = Counter(a for g, a in self.a.items() if len(g) == n)
                self.D[n] = [0.0, 0.5, 1.0, 1.5]  # lmplz --discount_fallback: too few types
                if nr[1] and nr[2] and nr[3]:
                    y = nr[1] / (nr[1] + 2 * nr[2])
                    D = [0.0] + [j - (j + 1) * y * nr[j + 1] / nr[j] for j in (1, 2, 3)]
                    if all(0 <= D[j] <= j for j in (1, 2, 3)):
                        self.D[n] = D
            self.denominator, self.gamma = Counter(), Counter()
            for g, a in self.a.items():
                self.denominator[g[:-1]] += a
                self.gamma[g[:-1]] += self.D[len(g)][min(a, 3)]

    def prob(self, h: tuple, w: int) -> float:
        c = self.c
        if self.smoothing in ("add_k", "mle"):  # the full context only
            total = self.followers[h]
            if self.smoothing == "mle":
                return c[(*h, w)] / total if total else 0.0
            return (c[(*h, w)] + self.k) / (total + self.k * V)
        if self.smoothing == "witten_bell":
            if not h:
                seen = sum(1 for v in range(V) if c[(v,)])
                return (c[(w,)] + seen / V) / (self.followers[()] + seen)
            lower = self.prob(h[1:], w)
            if not self.followers[h]:
                return lower
            t = self.types[h]
            return (c[(*h, w)] + t * lower) / (self.followers[h] + t)
        lower = 1.0 / V if not h else self.prob(h[1:], w)  # kneser_ney
        if not self.denominator[h]:
            return lower
        a = self.a.get((*h, w), 0)
        discounted = (a - self.D[len(h) + 1][min(a, 3)]) / self.denominator[h]
        return discounted + self.gamma[h] / self.denominator[h] * lower


def log10(p: float) -> float:
    return math.log10(p) if p > 0 else -math.inf


# --- counting and the smoothings ----------------------------------------------------------------
def test_counts_are_those_of_the_sentences_padded_with_one_start_symbol():
    chunks = [as_stream(TRAIN[:300]), as_stream(TRAIN[300:])]  # two columns, say
    counts = count_ngrams(chunks, V, order=4)
    reference = padded_counts(TRAIN, 4)
    model = NGramModel(4, V, counts.keys, [None] * 5, [None] * 5)  # to read the keys back
    found = {}
    for n in range(1, 5):
        raw = counts.counts[n][:V] if n == 1 else counts.counts[n]
        for row, count in zip(model.tokens(n)[: len(raw)], raw, strict=True):
            if count:
                found[tuple(int(t) for t in row)] = int(count)
    assert found == dict(reference)
    assert counts.tokens == len(STREAM)


def test_counting_in_small_blocks_and_from_int32_ids_gives_the_same_tables(monkeypatch):
    """The blockwise passes (packing, unpacking, tokens since a sentence start, per-context
    sums) carry over their block boundaries: tiny blocks give the tables of one big block, and
    an int32 stream (as the cache maps it) counts as its int64 copy does."""
    import lm_experiments.models.ngram.counting as counting
    import lm_experiments.models.ngram.smoothing as smoothing

    whole = count_ngrams(STREAM, V, order=4)
    reference = estimate(whole)
    monkeypatch.setattr(counting, "BLOCK", 7)
    monkeypatch.setattr(smoothing, "BLOCK", 7)
    blocked = count_ngrams(STREAM.astype(np.int32), V, order=4)
    model = estimate(blocked)
    for n in range(1, 5):
        np.testing.assert_array_equal(blocked.counts[n], whole.counts[n])
        # float64 sums in another order: equal to the last bits
        np.testing.assert_allclose(model.logprob[n], reference.logprob[n], rtol=1e-12)
        if n > 1:
            np.testing.assert_array_equal(blocked.keys[n], whole.keys[n])
            np.testing.assert_array_equal(blocked.prefix[n], whole.prefix[n])
        if n < 4:
            np.testing.assert_allclose(model.backoff[n], reference.backoff[n], rtol=1e-12)
    since = counting._since_sentence_start(np.asarray(STREAM), 4)
    ends = np.flatnonzero(np.asarray(STREAM) == EOS_ID)
    expected = [
        min(p - (ends[ends < p].max() if (ends < p).any() else 0), 4) for p in range(1, len(STREAM))
    ]
    np.testing.assert_array_equal(since[1:], expected)


@pytest.mark.parametrize("world", [2, 3, 7])
def test_the_ranks_shards_cover_the_stream_and_their_merged_counts_are_the_whole_streams(world):
    """What the DDP ranks do: each counts its shard (whole sentences), the counts are merged."""
    shards = [shard(STREAM, rank, world) for rank in range(world)]
    np.testing.assert_array_equal(np.concatenate(shards), STREAM)
    assert all(len(s) == 0 or s[-1] == EOS_ID for s in shards)  # cut at sentence ends
    merged = merge_counts([count_ngrams(s, V, order=4) for s in shards])
    whole = count_ngrams(STREAM, V, order=4)
    assert merged.tokens == whole.tokens
    for n in range(1, 5):
        np.testing.assert_array_equal(merged.counts[n], whole.counts[n])
        if n > 1:
            np.testing.assert_array_equal(merged.keys[n], whole.keys[n])
            np.testing.assert_array_equal(merged.prefix[n], whole.prefix[n])


# 2**50: key and position (13 bits) fill 63 bits exactly; 2**51 and up: an indirect sort
@pytest.mark.parametrize("high", [50, 2**40, 2**50, 2**51, 2**62])
def test_grouping_keys_is_np_unique(high):
    keys = np.random.default_rng(0).integers(0, high, 5_000)
    keys[0] = high - 1  # the widest key
    keys[::7] = keys[3]  # repeats
    got = group_keys(keys)
    want = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    assert all(len(a) == 0 for a in group_keys(np.zeros(0, dtype=np.int64)))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_each_smoothing_is_its_formula(smoothing, order):
    model = train_ngram(STREAM, V, order, smoothing, k=0.5)
    direct = DirectModel(TRAIN, order, smoothing, k=0.5)
    contexts = random_contexts(order, 60, seed=order)
    words = np.random.default_rng(order).integers(0, V, len(contexts))
    got = model.score(contexts, words)
    expected = [
        log10(direct.prob(history(c, order), int(w))) for c, w in zip(contexts, words, strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("order", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_every_distribution_sums_to_one(smoothing, order):
    """Over the whole vocabulary (<unk> and <eos> included, <s> excluded), for random contexts;
    the unsmoothed model only where it has seen the context, and there exactly."""
    model = train_ngram(STREAM, V, order, smoothing, k=0.5)
    contexts = random_contexts(order, 40, seed=10 + order)
    logp = model.log_distribution(contexts)  # [M, V]
    total = (10.0**logp).sum(1)
    if smoothing == "mle":
        direct = DirectModel(TRAIN, order, smoothing)
        seen = np.array([direct.followers[history(c, order)] > 0 for c in contexts])
        assert seen.sum() >= 40
        np.testing.assert_allclose(total[seen], 1.0, atol=1e-6)
        np.testing.assert_array_equal(total[~seen], 0.0)  # 0/0: nothing to give
    else:
        np.testing.assert_allclose(total, 1.0, atol=1e-6)
    words = np.random.default_rng(order).integers(0, V, len(contexts))  # scoring = distribution
    np.testing.assert_array_equal(model.score(contexts, words), logp[np.arange(len(words)), words])


def test_the_unsmoothed_model_shows_the_sparsity_problem_without_crashing():
    model = train_ngram(STREAM, V, 3, "mle")
    on_train = model.evaluate(STREAM)
    assert on_train["zero_prob"] == 0 and math.isfinite(on_train["perplexity"])
    held_out = model.evaluate(HELD_OUT_STREAM)
    assert held_out["perplexity"] == math.inf
    assert 0 < held_out["zero_prob"] < held_out["tokens"] == len(HELD_OUT_STREAM)
    smoothed = train_ngram(STREAM, V, 3).evaluate(HELD_OUT_STREAM)
    assert smoothed["zero_prob"] == 0 and math.isfinite(smoothed["perplexity"])
    # in the harness: inf NLL where the probability is 0, 0 at padded positions
    lm = LanguageModeling(NGramNet(V, order=3, smoothing="mle"))
    lm.net.tables = model
    inputs, targets = ColumnBatches(HELD_OUT_STREAM, 3, bptt=10_000)[0]
    nll, _ = lm.token_nll(inputs, targets, lm.init_state(3))
    padded = targets == IGNORE_INDEX
    assert padded.any() and (nll[padded] == 0).all()
    assert int(torch.isinf(nll).sum()) == held_out["zero_prob"]


# --- the LightningModule's scoring: state, forward, generation ----------------------------------
@pytest.mark.parametrize("order", [1, 2, 3, 5])
def test_the_carried_state_scores_every_batch_layout_as_one_stream(order):
    lm = LanguageModeling(NGramNet(V, order=order))
    lm.net.tables = train_ngram(STREAM, V, order)
    expected = -lm.net.tables.score_stream(HELD_OUT_STREAM).sum() * LN10
    for columns, bptt in [(1, 100_000), (3, 7), (5, 1)]:
        batches, state, total = ColumnBatches(HELD_OUT_STREAM, columns, bptt), None, 0.0
        for i in range(len(batches)):
            inputs, targets = batches[i]
            state = lm.init_state(columns) if state is None else state
            nll, state = lm.token_nll(inputs, targets, state)
            total += float(nll.double().sum())
        assert total == pytest.approx(expected, rel=1e-6)  # float32 per token


@pytest.mark.parametrize("order", [1, 3, 5])
def test_forward_gives_the_distributions_token_nll_scores(order):
    lm = LanguageModeling(NGramNet(V, order=order))
    lm.net.tables = train_ngram(STREAM, V, order)
    inputs, targets = ColumnBatches(HELD_OUT_STREAM, 4, bptt=9)[3]
    state = torch.randint(-1, V, (4, order - 1))
    logp, new_state = lm(inputs, state)  # [B, T, V]
    assert logp.shape == (4, 9, V)
    torch.testing.assert_close(logp.double().exp().sum(-1), torch.ones(4, 9, dtype=torch.float64))
    nll, state_after = lm.token_nll(inputs, targets, state)
    valid = targets != IGNORE_INDEX
    from_forward = -logp.gather(2, targets.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(nll[valid], from_forward[valid], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(new_state, state_after)
    # targets that do not continue the inputs (any use of token_nll): each against its context
    other = targets.clone()
    other[valid] = (other[valid] + 1) % V
    nll, _ = lm.token_nll(inputs, other, state)
    from_forward = -logp.gather(2, other.clamp(min=0)[..., None])[..., 0]
    torch.testing.assert_close(nll[valid], from_forward[valid], rtol=1e-6, atol=1e-5)


def test_sampled_sentences_are_made_of_seen_ngrams_under_the_unsmoothed_model():
    lm = LanguageModeling(NGramNet(V, order=3, smoothing="mle"))
    lm.net.tables = train_ngram(STREAM, V, 3, "mle")
    seen = padded_counts(TRAIN, 3)
    sentences = lm.generate(20, max_length=30, generator=torch.Generator().manual_seed(0))
    assert len(sentences) == 20 and any(len(s) > 2 for s in sentences)
    for sentence in sentences:
        tokens = [BOS, *sentence]
        for i in range(1, len(tokens)):
            assert tuple(tokens[max(0, i - 2) : i + 1]) in seen


# --- ARPA files ---------------------------------------------------------------------------------
VOCAB = Vocabulary(["<unk>", "<eos>", *(f"w{i}" for i in range(2, V))])


@pytest.mark.parametrize("smoothing", SMOOTHINGS)
def test_arpa_files_round_trip_exactly(smoothing, tmp_path):
    model = train_ngram(STREAM, V, 4, smoothing, k=0.5)
    for name in ("model.arpa", "model.arpa.gz"):
        back = load_arpa(export_arpa(model, tmp_path / name, VOCAB), VOCAB)
        assert back.num_ngrams() == model.num_ngrams()
        for n in range(1, 5):
            if n > 1:
                np.testing.assert_array_equal(back.keys[n], model.keys[n])
            np.testing.assert_array_equal(back.logprob[n], model.logprob[n])  # -inf too
            if n < 4:
                np.testing.assert_array_equal(back.backoff[n], model.backoff[n])


def test_an_arpa_file_with_spaces_and_omitted_zero_backoffs_reads_the_same(tmp_path):
    """SRILM-style lines (spaces, a zero backoff left out) take the line-by-line reader."""
    model = train_ngram(STREAM, V, 3, "witten_bell")
    text = export_arpa(model, tmp_path / "tabs.arpa", VOCAB).read_text()
    loose = tmp_path / "loose.arpa"
    loose.write_text(
        "\n".join(line.removesuffix("\t0").replace("\t", "  ") for line in text.split("\n"))
    )
    assert "\t" not in loose.read_text()
    back = load_arpa(loose, VOCAB)
    for n in range(1, 4):
        np.testing.assert_array_equal(back.logprob[n], model.logprob[n])
        if n < 3:
            np.testing.assert_array_equal(back.backoff[n], model.backoff[n])


@pytest.mark.parametrize("smoothing", ["kneser_ney", "witten_bell", "add_k"])
def test_kenlm_scores_our_arpa_files_as_we_do(smoothing, tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed (test extra)")
    model = train_ngram(STREAM, V, 4, smoothing, k=0.5)
    reference = kenlm.Model(str(export_arpa(model, tmp_path / "model.arpa", VOCAB)))
    ours = model.score_stream(HELD_OUT_STREAM)
    ends = np.cumsum([len(s) + 1 for s in HELD_OUT])
    per_sentence = [part.sum() for part in np.split(ours, ends[:-1])]
    theirs = [
        reference.score(" ".join(VOCAB.itos[t] for t in s), bos=True, eos=True) for s in HELD_OUT
    ]
    np.testing.assert_allclose(per_sentence, theirs, rtol=1e-4, atol=1e-4)


def test_words_outside_the_vocabulary_go_to_unk_exactly(tmp_path):
    """A file over a larger vocabulary (a web-scale KenLM model, say), read with ours: each
    context keeps its probabilities for our words and gives <unk> all the rest."""
    big = train_ngram(STREAM, V, 3)
    path = export_arpa(big, tmp_path / "big.arpa", VOCAB)
    small_vocab = Vocabulary(VOCAB.itos[:30])  # words w2..w29; w30..w79 become <unk>
    small = load_arpa(path, small_vocab)
    assert small.info["arpa_words_outside_vocab"] == V - 30
    rng = np.random.default_rng(0)
    contexts = rng.integers(0, 30, (200, 2))
    contexts[:20, 0] = EOS_ID  # sentence starts too
    contexts[20:25] = [-1, EOS_ID]
    p_small = 10.0 ** small.log_distribution(contexts)  # [M, 30]
    p_big = 10.0 ** big.log_distribution(contexts)  # [M, V]
    np.testing.assert_allclose(p_small.sum(1), 1.0, atol=1e-9)
    np.testing.assert_allclose(p_small[:, 1:], p_big[:, 1:30], rtol=1e-9)
    np.testing.assert_allclose(p_small[:, UNK_ID], p_big[:, UNK_ID] + p_big[:, 30:].sum(1))


def test_an_ngram_whose_suffix_the_file_lacks_gets_it_by_back_off(tmp_path):
    path = tmp_path / "pruned.arpa"
    path.write_text(
        "\\data\\\nngram 1=6\nngram 2=2\nngram 3=1\n\n\\1-grams:\n"
        "-1.0\t<unk>\t0\n-99\t<s>\t-0.5\n-0.5\t</s>\t0\n-0.7\tw2\t-0.2\n-0.9\tw3\t-0.3\n"
        "-1.1\tw4\t-0.1\n\n\\2-grams:\n-0.4\t<s> w2\t-0.25\n-0.6\tw2 w3\t-0.15\n\n"
        "\\3-grams:\n-0.05\tw2 w3 w4\n\n\\end\\\n"  # "w3 w4" is missing
    )
    vocab = Vocabulary(VOCAB.itos[:5])
    model = load_arpa(path, vocab)
    w2, w3, w4 = 2, 3, 4
    score = lambda context, word: model.score(np.array([context]), np.array([word]))[0]  # noqa: E731
    assert score([-1, w2, w3], w4) == pytest.approx(-0.05)
    assert score([-1, w4, w3], w4) == pytest.approx(-0.3 + -1.1)  # b(w3) + p(w4): the filled one
    assert score([w4, w2, w3], w4) == pytest.approx(-0.05)
    assert score([-1, EOS_ID, w2], w3) == pytest.approx(-0.25 + -0.6)  # b(<s> w2) + p(w3 | w2)


# --- KenLM on PTB-mini: tables, scores and perplexities to 1e-4 --------------------------------
@pytest.fixture(scope="module")
def ptb_mini():
    folder = shared_path("reference", "kenlm", "ptb-mini")

    def sentences(split):
        lines = (line.split() for line in (folder / f"{split}.txt").read_text().splitlines())
        return [words for words in lines if words]

    train_sentences = sentences("train")
    vocab = Vocabulary.build(train_sentences)  # the data module's convention
    streams = {
        split: np.array([i for words in s for i in vocab.encode(words)])
        for split, s in [
            ("train", train_sentences),
            ("valid", sentences("valid")),
            ("test", sentences("test")),
        ]
    }
    lengths = {split: [len(words) + 1 for words in sentences(split)] for split in ("valid", "test")}
    summary = json.loads((folder / "summary.json").read_text())
    return folder, vocab, streams, lengths, summary


@pytest.mark.parametrize("order", [2, 3, 4, 5])
def test_kneser_ney_reproduces_kenlm_exactly(order, ptb_mini):
    folder, vocab, streams, lengths, summary = ptb_mini
    ours = train_ngram(streams["train"], len(vocab), order)
    kenlm_file = load_arpa(folder / f"order{order}.arpa.gz", vocab)
    # the same n-grams, probabilities and backoffs (the file prints floats to ~7 digits)
    assert ours.num_ngrams() == kenlm_file.num_ngrams()
    for n in range(1, order + 1):
        if n > 1:
            np.testing.assert_array_equal(ours.keys[n], kenlm_file.keys[n])
        np.testing.assert_allclose(ours.logprob[n], kenlm_file.logprob[n], rtol=0, atol=1e-4)
        if n < order:
            np.testing.assert_allclose(ours.backoff[n], kenlm_file.backoff[n], rtol=0, atol=1e-4)
    for split in ("valid", "test"):
        reference = np.loadtxt(folder / f"order{order}.{split}.scores.tsv", skiprows=1)
        for model in (ours, kenlm_file):  # our estimate, and KenLM's file read by us
            scores = model.score_stream(streams[split])
            ends = np.cumsum(lengths[split])[:-1]
            per_sentence = np.array([part.sum() for part in np.split(scores, ends)])
            np.testing.assert_array_equal(reference[:, 1], lengths[split])
            np.testing.assert_allclose(per_sentence, reference[:, 2], rtol=1e-4)
            figures = model.evaluate(streams[split])
            expected = summary[f"order{order}.{split}"]
            assert figures["tokens"] == expected["tokens_scored"]
            assert figures["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-4)
            assert figures["log10_prob"] == pytest.approx(expected["log10_prob"], rel=1e-6)


def test_kenlm_scores_our_ptb_model_as_it_scored_its_own(ptb_mini, tmp_path):
    kenlm = pytest.importorskip("kenlm", reason="the kenlm module is not installed (test extra)")
    folder, vocab, streams, lengths, _ = ptb_mini
    ours = kenlm.Model(
        str(export_arpa(train_ngram(streams["train"], len(vocab), 5), tmp_path / "5.arpa", vocab))
    )
    lines = [line for line in (folder / "test.txt").read_text().splitlines() if line.split()]
    reference = np.loadtxt(folder / "order5.test.scores.tsv", skiprows=1)[:, 2]
    np.testing.assert_allclose(
        [ours.score(line, bos=True, eos=True) for line in lines], reference, rtol=1e-4
    )


# --- the LightningModule in the harness ---------------------------------------------------------
def ptb_mini_overrides(folder) -> list[str]:
    files = {split: folder / f"{split}.txt" for split in ("train", "valid", "test")}
    return toy_overrides({"train": files["train"], "valid": files["valid"], "test": files["test"]})


def test_trained_through_the_harness_it_reproduces_kenlm(tmp_path, cache_dir):
    """dataset=text on KenLM's files, model=ngram: train.py's fit (counting, estimation, the
    checkpoint) and test (from the best checkpoint) give KenLM's perplexities."""
    folder = shared_path("reference", "kenlm", "ptb-mini")
    summary = json.loads((folder / "summary.json").read_text())
    cfg = compose_config([*ptb_mini_overrides(folder), "model=ngram", *FAST], tmp_path, cache_dir)
    metrics = train(cfg)
    assert metrics["epochs"] == 1  # one counting pass, whatever trainer.max_epochs says
    for stage, split in (("val", "valid"), ("test", "test")):
        expected = summary[f"order5.{split}"]
        assert metrics[f"{stage}/ppl"] == pytest.approx(expected["perplexity"], rel=1e-4)
        assert metrics[f"{stage}/tokens"] == expected["tokens_scored"]
    # the checkpoint holds the tables (plain tensors: weights_only loads)
    checkpoint = read_checkpoint(metrics["best_checkpoint"])
    model = NGramModel.from_state_dict(checkpoint["ngram"])
    assert model.num_ngrams() == [6024, 38515, 58346, 62572, 61490]
    assert metrics["params"] == model.num_values()


def test_it_has_no_parameter_and_refuses_a_training_loop(tmp_path, cache_dir, toy_corpus):
    """Counted, not trained: nothing for an optimizer, and trainer.fit says how to run it."""
    cfg = compose_config([*toy_overrides(toy_corpus), "model=ngram", *FAST], tmp_path, cache_dir)
    datamodule, model = build(cfg)
    assert list(model.parameters()) == [] and model.num_parameters() == 0
    trainer = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    with pytest.raises(UserError, match="counted, not trained"):
        trainer.fit(model, datamodule=datamodule)
    model.count_and_validate(trainer, datamodule)
    assert model.results["val"]["tokens"] == scored_tokens(toy_corpus["valid"])
    assert model.results["train"]["tokens"] == scored_tokens(toy_corpus["train"])


def test_it_reads_an_arpa_file_instead_of_counting(tmp_path, cache_dir, toy_corpus):
    cfg = compose_config([*toy_overrides(toy_corpus), "model=ngram", *FAST], tmp_path, cache_dir)
    datamodule, _ = build(cfg)
    source = train_ngram(datamodule.streams["train"], len(datamodule.vocab), 3, "witten_bell")
    path = export_arpa(source, tmp_path / "toy.arpa.gz", datamodule.vocab)
    cfg = compose_config(
        [*toy_overrides(toy_corpus), "model=ngram", f"model.arpa_path={path}", *FAST],
        tmp_path,
        cache_dir,
    )
    datamodule, model = build(cfg)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    expected = source.evaluate(datamodule.streams["test"])["perplexity"]
    assert model.results["test"]["ppl"] == pytest.approx(expected, rel=1e-6)


def test_one_checkpoint_of_tables_resumes_exactly_without_counting_again(
    tmp_path, cache_dir, toy_corpus
):
    """The counting pass is not a training loop, so no checkpoint is ever saved inside it: the
    run saves one checkpoint, of the estimated tables (no raw columns), and resuming from it (a
    run stopped after it, say during testing) ends exactly where the whole run ended, from the
    tables alone: the training text is changed in between and nothing of it is counted again."""
    common = [*toy_overrides(toy_corpus), "model=ngram", "dataset.batch_size=2", *FAST]
    whole = train(compose_config(common, tmp_path / "whole", cache_dir))
    last = tmp_path / "whole" / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]  # one copy
    checkpoint = read_checkpoint(str(last))
    assert "ngram" in checkpoint and "ngram_columns" not in checkpoint  # the tables, not tokens
    saved = last.read_bytes()
    changed = dict(toy_corpus, train=tmp_path / "train.txt")  # the same vocabulary, twice
    changed["train"].write_text(toy_corpus["train"].read_text() * 2)  # the counts (recounted,
    resumed_cfg = [*toy_overrides(changed), "model=ngram", "dataset.batch_size=2", *FAST]
    resumed = train(compose_config([*resumed_cfg, f"ckpt_path={last}"], tmp_path / "r", cache_dir))
    for key in ("val/ppl", "test/ppl", "train/tokens", "params"):  # another val/ppl) twice
        assert resumed[key] == pytest.approx(whole[key], rel=1e-9), key
    assert last.read_bytes() == saved  # not overwritten
    assert resumed["best_checkpoint"] == str(last)


@pytest.mark.parametrize("asked", ["model.order=5", "model.smoothing=witten_bell"])
def test_a_checkpoint_of_another_order_or_smoothing_is_refused_not_reported_as_asked(
    tmp_path, cache_dir, toy_corpus, asked
):
    """The tables fix the order and smoothing, and an n-gram's state dict is empty: without the
    check, the run would report the saved 3-gram's perplexity under the asked settings."""
    common = [*toy_overrides(toy_corpus), "model=ngram", *FAST]
    trained = train(compose_config([*common, "model.order=3"], tmp_path / "a", cache_dir))
    evaluate = [*common, asked, "train=false", f"ckpt_path={trained['best_checkpoint']}"]
    with pytest.raises(UserError, match=r"holds NGramNet\(.*order=3, smoothing=kneser_ney\)"):
        train(compose_config(evaluate, tmp_path / "b", cache_dir))
    same = [*common, "model.order=3", "train=false", f"ckpt_path={trained['best_checkpoint']}"]
    assert train(compose_config(same, tmp_path / "c", cache_dir))["test/ppl"] == trained["test/ppl"]


def test_export_cli_writes_the_checkpoint_as_an_arpa_file_kenlm_reads(
    tmp_path, cache_dir, toy_corpus
):
    kenlm = pytest.importorskip("kenlm")
    from lm_experiments.ngram import main as ngram_cli

    cfg = compose_config(
        [*toy_overrides(toy_corpus), "model=ngram", "model.order=3", *FAST], tmp_path, cache_dir
    )
    metrics = train(cfg)
    out = tmp_path / "toy.arpa"
    assert ngram_cli(["export", f"ckpt_path={metrics['best_checkpoint']}", f"out={out}"]) == 0
    ours = load_arpa(out, Vocabulary((tmp_path / "vocab.txt").read_text().split()))
    lines = toy_corpus["test"].read_text().splitlines()
    log10_total = sum(kenlm.Model(str(out)).score(line, bos=True, eos=True) for line in lines)
    tokens = scored_tokens(toy_corpus["test"])
    assert 10 ** (-log10_total / tokens) == pytest.approx(metrics["test/ppl"], rel=1e-5)
    assert ours.num_ngrams()[0] == len((tmp_path / "vocab.txt").read_text().split()) + 1
    assert ngram_cli(["export", "ckpt_path=/no/such.ckpt", f"out={out}"]) == 2


def test_the_harness_reports_inf_and_the_zero_probability_count_for_mle(
    tmp_path, cache_dir, toy_corpus
):
    cfg = compose_config(
        [*toy_overrides(toy_corpus), "model=ngram", "model.smoothing=mle", *FAST],
        tmp_path,
        cache_dir,
    )
    metrics = train(cfg)  # no crash on zero probabilities
    assert metrics["test/ppl"] == math.inf
    assert 0 < metrics["test/zero_prob"] < metrics["test/tokens"]
    written = json.loads((tmp_path / "metrics.json").read_text())  # strict JSON: inf -> null
    assert written["test/ppl"] is None and written["test/zero_prob"] == metrics["test/zero_prob"]
    smoothed = train(
        compose_config(
            [*toy_overrides(toy_corpus), "model=ngram", *FAST], tmp_path / "kn", cache_dir
        )
    )
    assert math.isfinite(smoothed["test/ppl"]) and "test/zero_prob" not in smoothed
