"""The embedded corpus: an exact oracle, deterministic splits, real long-range structure."""

import hashlib
import math

import pytest

from lm_experiments.data.synthetic import (
    EOS,
    NOUNS,
    PREPOSITIONS,
    VERBS,
    Grammar,
    build_synthetic_splits,
    default_grammar,
    english_rules,
    generate_split,
    oracle_perplexity,
    split_seed,
)
from lm_experiments.data.synthetic import splits as split_builder
from lm_experiments.data.synthetic.english import Clause, Sentence

# A grammar small enough to work out by hand: the first word (x or y) decides the last one (p or q)
# across a run of m's of geometric length.
#   S -> x A p (1/2) | y A q (1/2);  A -> m A (1/4) | n (3/4)
TINY_RULES = {
    "S": [(0.5, ("x", "A", "p")), (0.5, ("y", "A", "q"))],
    "A": [(0.25, ("m", "A")), (0.75, ("n",))],
}
H_QUARTER = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # entropy of one A step
# Per sentence: the x/y choice (ln 2) and E[#A steps] = 4/3 binary choices; p/q and <eos> are sure.
# Tokens per sentence: x/y + E[#A steps] + p/q + <eos> = 1 + 4/3 + 1 + 1 = 13/3.
TINY_ENTROPY_PER_TOKEN = (math.log(2) + 4 / 3 * H_QUARTER) / (13 / 3)


# Digests of the default grammar's rule table and of the start of its seed-0 train split.
GRAMMAR_FINGERPRINT = "7944ad6384561612"
TEXT_DIGEST = "b1e8ec90103ba0bf"
NLL_DIGEST = "c8cdaa8215c580b9"  # the exact oracle NLLs of the same tokens (float.hex)


@pytest.fixture(scope="module")
def grammar():
    return default_grammar()


@pytest.fixture(scope="module")
def sample(grammar):
    """About 30k tokens of the default grammar (shared by several tests)."""
    return list(generate_split(grammar, seed=1234, num_tokens=30_000))


def test_tiny_grammar_scores_match_hand_computation():
    tiny = Grammar(TINY_RULES, start="S")
    expected = [math.log(2), -math.log(0.25), -math.log(0.25), -math.log(0.75), 0.0, 0.0]
    assert tiny.score(["x", "m", "m", "n", "p"]) == pytest.approx(expected, abs=1e-12)
    assert tiny.score(["y", "n", "q"]) == pytest.approx([math.log(2), -math.log(0.75), 0, 0])
    assert tiny.vocabulary() == sorted([EOS, "x", "y", "m", "n", "p", "q"])
    for impossible in (["x", "n", "q"], ["x", "m"], ["x", "n", "p", "p"], ["m"]):
        with pytest.raises(ValueError):
            tiny.score(impossible)


def test_tiny_grammar_empirical_perplexity_matches_entropy():
    tiny = Grammar(TINY_RULES, start="S")
    rows = list(generate_split(tiny, seed=0, num_tokens=60_000))
    nlls = [x for row in rows for x in row["oracle_nll"]]
    # the per-token entropy has a standard deviation of about 0.6 nats: 60k tokens give ~0.003
    assert sum(nlls) / len(nlls) == pytest.approx(TINY_ENTROPY_PER_TOKEN, abs=0.015)
    # ... and the text obeys the long-range rule: x ... p, y ... q
    assert all((row["text"][0] == "x") == (row["text"][-1] == "p") for row in rows)


def test_ambiguous_or_improper_grammars_are_refused():
    ambiguous = Grammar({"S": [(0.5, ("a", "b")), (0.5, ("a", "c"))]}, start="S")
    with pytest.raises(ValueError, match="ambiguous"):
        ambiguous.distribution(ambiguous.initial_state())
    with pytest.raises(ValueError, match="sum"):
        Grammar({"S": [(0.5, ("a",)), (0.4, ("b",))]}, start="S")
    # Two rule paths that emit the same token AND leave the same stack are one event: merged.
    merged = Grammar({"S": [(0.5, ("a", "B")), (0.5, ("a", "B"))], "B": [(1.0, ("b",))]}, "S")
    assert merged.distribution(merged.initial_state()) == {"a": 1.0}


def test_every_reachable_state_is_a_proper_distribution(grammar, sample):
    """In every state reachable from the start (a finite set, walked breadth first), the
    next-token distribution sums to one and every token with positive probability can be emitted.
    """
    states = set(grammar.reachable_states(limit=50_000))
    assert () in states
    for state in states - {()}:
        dist = grammar.distribution(state)
        assert math.fsum(dist.values()) == pytest.approx(1.0, abs=1e-12)
        for token, p in dist.items():
            assert p > 0
            assert grammar.advance(state, token) in states
    # the sentences actually generated only visit those states
    for row in sample[:500]:
        state = grammar.initial_state()
        for token in [*row["text"].split(), EOS]:
            state = grammar.advance(state, token)
            assert state in states


def test_tiny_grammar_reachable_states_are_the_hand_listed_ones():
    tiny = Grammar(TINY_RULES, start="S")
    expected = {
        ("S", EOS),  # start
        ("A", "p", EOS),  # after x and any m's
        ("A", "q", EOS),  # after y and any m's
        ("p", EOS),  # after x ... n
        ("q", EOS),  # after y ... n
        (EOS,),  # after p or q
        (),  # after <eos>
    }
    assert set(tiny.reachable_states()) == expected
    for state in expected - {()}:
        assert math.fsum(tiny.distribution(state).values()) == pytest.approx(1.0, abs=1e-12)


def test_rescoring_reproduces_recorded_oracle(grammar, sample):
    for row in sample:
        assert grammar.score(row["text"].split()) == pytest.approx(row["oracle_nll"], abs=1e-12)
    with pytest.raises(ValueError):
        grammar.score(["the", "cats", "eats", "the", "apple", "."])  # agreement violated
    with pytest.raises(ValueError):
        grammar.score(["the", "cat", "eats", "the", "apple", "?"])  # a statement cannot end in "?"


def test_oracle_perplexity_and_token_counts(sample):
    words = sum(len(row["text"].split()) for row in sample)
    tokens = sum(len(row["oracle_nll"]) for row in sample)
    assert tokens == words + len(sample)
    assert 30_000 <= tokens < 30_000 + 100  # stops at the first sentence that reaches the count
    mean = math.fsum(x for row in sample for x in row["oracle_nll"]) / tokens
    assert oracle_perplexity({"oracle_nll": [row["oracle_nll"] for row in sample]}) == (
        pytest.approx(math.exp(mean), rel=1e-12)
    )


def test_generation_is_deterministic_and_seed_dependent(grammar):
    first = list(generate_split(grammar, seed=7, num_tokens=3_000))
    again = list(generate_split(Grammar(grammar.rules, grammar.start), seed=7, num_tokens=3_000))
    other = list(generate_split(grammar, seed=8, num_tokens=3_000))
    assert [r["text"] for r in first] == [r["text"] for r in again]
    assert [r["oracle_nll"] for r in first] == [r["oracle_nll"] for r in again]
    assert [r["text"] for r in first] != [r["text"] for r in other]
    assert (
        len({split_seed(0, s) for s in ("train", "validation", "test")} | {split_seed(1, "train")})
        == 4
    )


def test_default_corpus_is_pinned(grammar):
    """The default corpus is the same on every machine and Python version (and changes only on
    purpose: after a deliberate change to the grammar, update these digests)."""
    rows = list(generate_split(grammar, split_seed(0, "train"), 5_000))
    text = "\n".join(row["text"] for row in rows)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == TEXT_DIGEST
    assert grammar.fingerprint() == GRAMMAR_FINGERPRINT
    nlls = " ".join(x.hex() for row in rows for x in row["oracle_nll"])
    assert hashlib.sha256(nlls.encode()).hexdigest()[:16] == NLL_DIGEST


def test_default_train_split_contains_every_word(grammar):
    """Closed-vocabulary scoring matches the oracle only if train has every word of the grammar."""
    train = generate_split(grammar, split_seed(0, "train"), 200_000)
    seen = {word for row in train for word in row["text"].split()}
    vocabulary = grammar.vocabulary()
    assert 300 <= len(vocabulary) <= 600
    assert set(vocabulary) - {EOS} == seen


def _subject_and_main_verb(grammar, words):
    """Positions of a statement's subject noun and main verb, read off the machine state.

    The subject's class and number travel in a `Clause` symbol, pushed when the subject noun is
    emitted and consumed when the main verb is.
    """
    state, noun_at = grammar.initial_state(), None
    for i, token in enumerate(words):
        state = grammar.advance(state, token)
        has_k = any(isinstance(s, Clause) for s in state)
        if noun_at is None and has_k:
            noun_at = i
        elif noun_at is not None and not has_k:
            return noun_at, i
    raise AssertionError(f"no main verb in {words}")


def test_agreement_is_decided_far_back_and_the_words_between_say_nothing(grammar, sample):
    """The main verb agrees with a subject noun often more than 4 tokens back.

    For subjects followed by a prepositional phrase, swapping the subject's number (and the verb's
    form to match) leaves the probability of every token in between and of the verb unchanged:
    the window before the verb carries no information about the number, which only the far
    subject decides (the verb form of the other number has probability 0).
    """
    singular_verbs = {"is"} | {sg for sg, *_ in VERBS}
    plural_of = {sg: pl for forms in NOUNS.values() for sg, pl in forms}
    number_of = {**{sg: "sg" for sg in plural_of}, **{pl: "pl" for pl in plural_of.values()}}
    swap = {**plural_of, **{pl: sg for sg, pl in plural_of.items()}, "is": "are", "are": "is"}
    swap.update({sg: bare for sg, bare, *_ in VERBS} | {bare: sg for sg, bare, *_ in VERBS})
    statements = far = hidden = 0
    for row in sample:
        words = row["text"].split()
        if words[-1] != ".":
            continue
        statements += 1
        noun_at, verb_at = _subject_and_main_verb(grammar, words)
        noun, verb = words[noun_at], words[verb_at]
        assert (verb in singular_verbs) == (number_of[noun] == "sg"), words
        if verb_at - noun_at <= 4:
            continue
        far += 1
        if words[noun_at + 1] not in PREPOSITIONS or words[noun_at - 1] not in ("the", "my", "our"):
            continue
        hidden += 1
        other = list(words)
        other[noun_at], other[verb_at] = swap[noun], swap[verb]
        nll, other_nll = grammar.score(words), grammar.score(other)
        assert nll[noun_at + 1 : verb_at + 1] == pytest.approx(other_nll[noun_at + 1 : verb_at + 1])
        wrong = list(words)
        wrong[verb_at] = swap[verb]
        with pytest.raises(ValueError):
            grammar.score(wrong)
    assert far / statements > 0.3, far / statements
    assert hidden / statements > 0.03, hidden / statements


def test_the_first_word_decides_the_last(sample):
    """Questions (and only questions) end in "?", usually far from the word that made them one."""
    question_words = {"does", "do", "can", "will", "did", "what", "who"}
    far = 0
    for row in sample:
        words = row["text"].split()
        assert (words[-1] == "?") == (words[0] in question_words)
        far += len(words) > 5
    assert far / len(sample) > 0.6


def test_build_synthetic_splits_is_cached(tmp_path, monkeypatch):
    calls = []

    def counting_generate_split(grammar, seed, num_tokens):
        calls.append(seed)
        yield from generate_split(grammar, seed, num_tokens)

    monkeypatch.setattr(split_builder, "generate_split", counting_generate_split)
    sizes = {"train_tokens": 2_000, "valid_tokens": 500, "test_tokens": 500}
    splits = build_synthetic_splits(seed=3, cache_dir=str(tmp_path), **sizes)
    assert len(calls) == 3
    assert set(splits) == {"train", "validation", "test"}
    for name, n in zip(("train", "validation", "test"), sizes.values(), strict=True):
        split = splits[name]
        assert split.column_names == [
            "text", "oracle_nll", "distance", "tag", "question", "subject_number", "verb_class"
        ]  # fmt: skip
        assert split.features["oracle_nll"].feature.dtype == "float64"
        assert n <= sum(len(x) for x in split["oracle_nll"]) < n + 100
    direct = list(generate_split(default_grammar(), split_seed(3, "validation"), 500))
    assert splits["validation"]["text"] == [row["text"] for row in direct]
    assert splits["validation"]["oracle_nll"] == [row["oracle_nll"] for row in direct]

    again = build_synthetic_splits(seed=3, cache_dir=str(tmp_path), **sizes)
    assert len(calls) == 3  # nothing regenerated: every split came from the cache
    for name in splits:
        assert again[name].cache_files == splits[name].cache_files

    other_seed = build_synthetic_splits(seed=4, cache_dir=str(tmp_path), **sizes)
    assert len(calls) == 6
    assert other_seed["train"]["text"] != splits["train"]["text"]
    build_synthetic_splits(seed=3, cache_dir=str(tmp_path), **{**sizes, "test_tokens": 600})
    assert len(calls) == 7  # only the resized split is new
    nlls = [x for row in splits["test"]["oracle_nll"] for x in row]
    assert oracle_perplexity(splits["test"]) == pytest.approx(
        math.exp(math.fsum(nlls) / len(nlls)), rel=1e-12
    )

    # Editing the grammar changes its fingerprint, hence the cache key: no stale corpus is reused.
    rules = english_rules()
    rules[("S",)] = [(p, rhs) for p, rhs in reversed(rules[("S",)])]  # Sentence() == ("S",)
    edited = Grammar(rules, start=Sentence())
    assert edited.fingerprint() != default_grammar().fingerprint()
    monkeypatch.setattr(split_builder, "default_grammar", lambda: edited)
    build_synthetic_splits(seed=3, cache_dir=str(tmp_path), **sizes)
    assert len(calls) == 10
