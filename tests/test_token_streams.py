"""The vectorized text -> ids path and its cache: the same vocabulary and streams as the plain
Python definition (``str.split``, ``Counter``, a dict lookup per token), computed once per
corpus and memory-mapped after, never stale."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import warnings

import datasets
import numpy as np
import pytest
import torch

from lm_experiments.data import LMDataModule, Vocabulary
from lm_experiments.data.corpora import SPLITS
from lm_experiments.data.tokens import count, ids, tokenize

ALPHABET = ["a", "b", "é", "水", "<unk>", "<eos>", " ", "  ", "\t", "\u00a0", "\u3000", "\x0c"]


def random_lines(n: int, seed: int) -> list[str]:
    """Words, literal specials, every kind of whitespace, empty and whitespace-only lines."""
    rng = random.Random(seed)
    return ["".join(rng.choices(ALPHABET, k=rng.randint(0, 12))) for _ in range(n)]


def python_reference(train: list[str], held_out: list[str], tokenizer: str, **vocab_options):
    """The definition: one sentence a line that has a token, then <eos>."""
    split = str.split if tokenizer == "word" else lambda line: list(line.rstrip("\n"))
    sentences = [split(line) for line in train]
    vocab = Vocabulary.build(sentences, **vocab_options)
    streams = [
        [i for tokens in map(split, lines) if tokens for i in vocab.encode(tokens)]
        for lines in (train, held_out)
    ]
    return vocab, streams


@pytest.mark.parametrize("tokenizer", ["word", "char"])
@pytest.mark.parametrize("vocab_options", [{}, {"min_freq": 3}, {"max_size": 6}])
def test_vectorized_tokenization_is_the_python_definition(tokenizer, vocab_options):
    train, held_out = random_lines(300, seed=0), random_lines(80, seed=1)
    vocab, (train_ids, held_out_ids) = python_reference(train, held_out, tokenizer, **vocab_options)
    # chunks of 7 rows: counts and first occurrences (the order of ties) cross chunk borders
    chunks = tokenize(datasets.Dataset.from_dict({"text": train}), tokenizer, rows_per_chunk=7)
    ours = Vocabulary.from_counts(*count(chunks), **vocab_options)
    assert ours.itos == vocab.itos
    assert ids(chunks, ours).tolist() == train_ids
    held_out_chunks = tokenize(datasets.Dataset.from_dict({"text": held_out}), tokenizer, 5)
    assert ids(held_out_chunks, ours).tolist() == held_out_ids


def test_a_selection_is_tokenized_as_selected():
    text = datasets.Dataset.from_dict({"text": [f"w{i}" for i in range(30)]})
    chunks = tokenize(text.select(range(20, 30)), "word", rows_per_chunk=4)
    assert count(chunks)[0] == [f"w{i}" for i in range(20, 30)]


def write_corpus(folder, train: str):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("train.txt", train), ("valid.txt", "a b\n"), ("test.txt", "b a c\n")):
        (folder / name).write_text(text)
    return folder


def module(folder, cache_dir, **options) -> LMDataModule:
    return LMDataModule(
        name="c", source="text", data_dir=str(folder), cache_dir=str(cache_dir), **options
    )


def test_streams_are_int32_memory_mapped_from_the_cache(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "corpus", "a b b\nc\n")
    first = module(folder, cache_dir)
    streams = first.streams
    cached = {split: stream.filename for split, stream in streams.items()}
    assert all(isinstance(s, np.memmap) and s.dtype == np.int32 for s in streams.values())
    assert not streams["train"].flags.writeable  # shared pages, never modified
    again = module(folder, cache_dir)  # a second run on the same files
    assert {split: s.filename for split, s in again.streams.items()} == cached
    assert again.vocab == first.vocab
    assert again.streams["train"].tolist() == [3, 2, 2, 1, 4, 1] == first.streams["train"].tolist()


def test_the_cache_never_serves_a_stale_stream(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "corpus", "a b b\n")
    before = module(folder, cache_dir).streams["train"]
    write_corpus(folder, "b a a a\n")  # the same path, new content
    after = module(folder, cache_dir)
    assert after.vocab.itos[2:] == ["a", "b"]
    assert after.streams["train"].tolist() == [3, 2, 2, 2, 1]
    assert after.streams["train"].filename != before.filename
    chars = module(folder, cache_dir, tokenizer="char")  # other options: another entry
    assert chars.vocab.itos[2:] == [" ", "a", "b"]  # ties: first seen first
    capped = module(folder, cache_dir, max_size=3)
    assert capped.vocab.itos == ["<unk>", "<eos>", "a"]


def test_a_warm_start_of_local_text_reads_neither_the_text_nor_datasets(tmp_path, cache_dir):
    folder = write_corpus(tmp_path / "corpus", "a b b\nc\n")
    cold = module(folder, cache_dir).streams["train"].tolist()
    warm = module(folder, cache_dir)
    assert warm.streams["train"].tolist() == cold
    assert "corpus" not in warm.__dict__  # the key came from the files' stats, not their text
    code = (
        "import json, sys; from lm_experiments.data import LMDataModule; "
        f"dm = LMDataModule(name='c', source='text', data_dir={str(folder)!r}, "
        f"cache_dir={str(cache_dir)!r}); "
        "print(json.dumps([dm.streams['train'].tolist(), 'datasets' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [cold, False]  # the same streams; datasets not imported


def test_an_in_memory_corpus_needs_no_cache(cache_dir):
    dm = LMDataModule(name="c", source="hub", hub_id="in-memory", cache_dir=str(cache_dir))
    dm.corpus = datasets.DatasetDict(  # what a source built in memory would return
        {split: datasets.Dataset.from_dict({"text": ["x y x"]}) for split in SPLITS}
    )
    assert dm.vocab.itos[2:] == ["x", "y"]
    assert dm.streams["test"].tolist() == [2, 3, 2, 1]


def test_batches_from_read_only_streams_are_int64_and_warn_nothing(tmp_path, cache_dir):
    dm = module(write_corpus(tmp_path / "corpus", "a b b\nc a\n" * 30), cache_dir, bptt=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's "The given NumPy array is not writable"
        inputs, targets = next(iter(dm.train_dataloader()))
        dm.train_window = 3
        contexts, next_tokens = next(iter(dm.train_dataloader()))
    assert {t.dtype for t in (inputs, targets, contexts, next_tokens)} == {torch.int64}
