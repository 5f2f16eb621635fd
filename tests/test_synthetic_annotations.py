"""What the embedded corpus knows about its tokens: decider distances, word classes, labels."""

import numpy as np
import pytest

from lm_experiments.data import LMDataModule
from lm_experiments.data.synthetic import (
    DISTANCE_BUCKETS,
    EOS,
    NOUNS,
    NUMBER_LABELS,
    QUESTION_LABELS,
    TAGS,
    VERB_CLASSES,
    VERBS,
    annotate,
    build_synthetic_splits,
    default_grammar,
    distance_bucket,
    generate_split,
    split_seed,
)
from lm_experiments.data.synthetic import splits as split_builder

# Sentence -> the distance of every token (words, then <eos>), worked out by hand: how many
# tokens back the farthest word is whose choice restricted this one; 0 when none did.
HAND_DISTANCES = {
    # "eats": its subject "cat" (class, number) and the first word (a statement: finite);
    # "apple": the verb's object class; ".": the first word; <eos>: the final mark.
    "the cat eats the apple .": [0, 0, 2, 0, 2, 5, 1],
    # "the": "does" allows only singular determiners; "cat": a singular agent, by "does";
    # "sleep": bare, by "does" (3 back)
    "does the cat sleep ?": [0, 1, 2, 3, 4, 1],
    # "what" leaves a gap only some subjects can fill (the noun, 4 back) and decides the verb
    # 8 tokens later, across "near the house"; "big" says nothing about the noun
    "what does the big cat near the house eat ?": [0, 0, 1, 0, 4, 1, 0, 2, 8, 9, 1],
    # "furry": "a" allows only consonant words; "cat": number by "a", class by "furry";
    # a relative clause's verb agrees with its noun; "is" and "sleepy" with the far subject
    "a furry cat that chases the dogs is sleepy .": [0, 1, 2, 1, 2, 0, 2, 7, 6, 9, 1],
    # "a" after "with": a thing (its a/an weights), "box": by "with" (class) and "a" (number)
    "the cats near the river with a box sleep .": [0, 0, 1, 0, 2, 1, 1, 2, 8, 9, 1],
    # the place after a "loc" verb is decided by the verb, the preposition is not
    "an old man lives on the mat .": [0, 1, 2, 3, 0, 0, 3, 7, 1],
}
HAND_TAGS = {
    "does the cat sleep ?": "aux det noun_sg verb_bare_animal punct eos",
    "the men cook a ripe pear .": "det noun_pl verb_pl_person det adj noun_sg punct eos",
    "who can the men help ?": "wh aux det noun_pl verb_bare_person punct eos",
    "a furry cat that chases the dogs is sleepy .": (
        "det adj cat_ rel verb_sg_animal det noun_pl copula_sg adj punct eos"
    ).replace("cat_", "noun_sg"),
    "my trucks with some coins are rusty .": "det noun_pl prep det noun_pl copula_pl adj punct eos",
}
# sentence -> (question, subject number, main verb class)
HAND_LABELS = {
    "does the cat sleep ?": ("question", "sg", "animal"),
    "the men cook a ripe pear .": ("statement", "pl", "person"),
    "who can the men help ?": ("question", "pl", "person"),
    "my trucks with some coins are rusty .": ("statement", "pl", "copula"),
    "a furry cat that chases the dogs is sleepy .": ("statement", "sg", "copula"),
    "the boy with the balls sings .": ("statement", "sg", "person"),
}


@pytest.fixture(scope="module")
def grammar():
    return default_grammar()


@pytest.fixture(scope="module")
def sample(grammar):
    return list(generate_split(grammar, seed=99, num_tokens=20_000))


@pytest.mark.parametrize("sentence", list(HAND_DISTANCES))
def test_distances_on_hand_built_sentences(grammar, sentence):
    assert annotate(grammar, sentence.split()).distance == HAND_DISTANCES[sentence]


def test_distance_buckets():
    assert DISTANCE_BUCKETS == ("none", "1-3", "4-6", "7-10", "11+")
    distances = np.array([0, 1, 3, 4, 6, 7, 10, 11, 40])
    assert distance_bucket(distances).tolist() == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert distance_bucket(5) == 2


@pytest.mark.parametrize("sentence", list(HAND_TAGS))
def test_tags_on_hand_built_sentences(grammar, sentence):
    tags = [TAGS[i] for i in annotate(grammar, sentence.split()).tag]
    assert tags == HAND_TAGS[sentence].split()


@pytest.mark.parametrize("sentence", list(HAND_LABELS))
def test_sentence_labels_on_hand_built_sentences(grammar, sentence):
    got = annotate(grammar, sentence.split())
    names = (QUESTION_LABELS[got.question], NUMBER_LABELS[got.subject_number])
    assert (*names, VERB_CLASSES[got.verb_class]) == HAND_LABELS[sentence]


def test_annotations_agree_with_the_text(grammar, sample):
    """On generated sentences: the labels and tags say what the words show, and the distances
    obey what the grammar guarantees (the final mark looks back to the first word)."""
    number_of = {w: n for forms in NOUNS.values() for sg, pl in forms for w, n in ((sg, "sg"), (pl, "pl"))}  # fmt: skip
    verb_class = {w: v.subject for v in VERBS for w in (v.singular, v.bare)}
    far = 0
    for row in sample:
        words = row["text"].split()
        got = annotate(grammar, words)
        tags = [TAGS[i] for i in got.tag]
        assert len(got.distance) == len(tags) == len(words) + 1 == len(row["oracle_nll"])
        assert tags[-2:] == ["punct", "eos"] and got.distance[-2:] == [len(words) - 1, 1]
        assert got.distance[0] == 0 and all(0 <= d <= t for t, d in enumerate(got.distance))
        assert QUESTION_LABELS[got.question] == ("question" if words[-1] == "?" else "statement")
        for word, tag in zip(words, tags, strict=False):
            if tag.startswith("noun_"):
                assert tag == f"noun_{number_of[word]}"
            if tag.startswith("verb_"):
                assert tag.endswith(verb_class[word])
                assert (tag.split("_")[1] == "sg") == (word in {v.singular for v in VERBS})
        main = [t for t in tags if t.startswith(("verb_", "copula_"))]
        if words[-1] == "." and not any(t == "rel" for t in tags):  # the one verb is the main one
            (verb_tag,) = main
            assert verb_tag.split("_")[1] == NUMBER_LABELS[got.subject_number]
            assert VERB_CLASSES[got.verb_class] in verb_tag
        far += max(got.distance[:-2]) > 4
    assert far / len(sample) > 0.3  # long-range decisions are common, not only the final mark


def test_annotations_are_deterministic(grammar, sample):
    again = [annotate(default_grammar(), row["text"].split()) for row in sample[:200]]
    assert again == [annotate(grammar, row["text"].split()) for row in sample[:200]]


def test_annotations_are_generated_with_the_text_and_cached(tmp_path, monkeypatch):
    calls = []

    def counting_annotate(grammar, words):
        calls.append(len(words))
        return annotate(grammar, words)

    monkeypatch.setattr(split_builder, "annotate", counting_annotate)
    sizes = {"train_tokens": 1_500, "valid_tokens": 400, "test_tokens": 400}
    built = build_synthetic_splits(seed=5, cache_dir=str(tmp_path), **sizes)
    assert len(calls) == sum(len(built[s]) for s in built)
    assert built["train"].features["tag"].feature.names == list(TAGS)
    assert built["train"].features["verb_class"].names == list(VERB_CLASSES)
    grammar = default_grammar()
    rows = list(generate_split(grammar, split_seed(5, "test"), 400))
    for row, stored in zip(rows, built["test"], strict=True):
        assert stored["text"] == row["text"]
        assert annotate(grammar, row["text"].split())._asdict() == {
            k: stored[k] for k in ("distance", "tag", "question", "subject_number", "verb_class")
        }
    n = len(calls)
    again = build_synthetic_splits(seed=5, cache_dir=str(tmp_path), **sizes)
    assert len(calls) == n  # from the cache
    assert again["test"]["distance"] == built["test"]["distance"]


def test_data_module_exposes_annotations_aligned_with_the_streams(tmp_path, cache_dir):
    dm = LMDataModule(
        name="synthetic",
        source="synthetic",
        train_tokens=1_500,
        valid_tokens=400,
        test_tokens=400,
        cache_dir=str(cache_dir),
    )
    eos = dm.vocab.encode([EOS])[0]
    for split, stream in dm.streams.items():
        got = dm.annotations[split]
        assert set(got) == {"distance", "tag", "question", "subject_number", "verb_class"}
        assert len(got["distance"]) == len(got["tag"]) == len(stream)
        assert ((got["tag"] == TAGS.index("eos")) == (stream == eos)).all()
        assert len(got["question"]) == (stream == eos).sum() == len(dm.corpus[split])
        ends = np.flatnonzero(stream == eos)
        assert (got["distance"][ends] == 1).all()
        is_qmark = stream[ends - 1] == dm.vocab.encode(["?"])[0]
        assert (got["question"] == is_qmark).all()
    text = tmp_path / "t.txt"
    text.write_text("a b c\nb c a\n")
    plain = LMDataModule(
        name="t", source="text", train_path=str(text), valid_path=str(text), test_path=str(text)
    )
    assert plain.annotations == {}
