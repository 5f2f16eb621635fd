"""The data pipeline: vocabulary, tokenization, and batches that score every token exactly once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from lm_experiments.data import EOS_ID, IGNORE_INDEX, UNK_ID, LMDataModule, Vocabulary
from lm_experiments.data.batching import ColumnBatches, WindowBatches, column_bounds
from lm_experiments.errors import UserError


def write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def text_module(tmp_path, cache_dir, train, valid, test, **kwargs):
    return LMDataModule(
        name="t",
        source="text",
        train_path=str(write(tmp_path / "train.txt", train)),
        valid_path=str(write(tmp_path / "valid.txt", valid)),
        test_path=str(write(tmp_path / "test.txt", test)),
        cache_dir=str(cache_dir),
        **kwargs,
    )


# --- vocabulary --------------------------------------------------------------------------------
def test_vocabulary_from_train_only_sorted_by_frequency(tmp_path, cache_dir):
    dm = text_module(tmp_path, cache_dir, ["b a a", "", "c a b"], ["zzz a"], ["a <unk> q"])
    vocab = dm.vocab
    assert vocab.itos == ["<unk>", "<eos>", "a", "b", "c"]  # zzz and q are not in train
    # the empty train line is skipped; one <eos> per non-empty line
    assert dm.streams["train"].tolist() == [3, 2, 2, EOS_ID, 4, 2, 3, EOS_ID]
    assert dm.streams["validation"].tolist() == [UNK_ID, 2, EOS_ID]
    # a literal <unk> is the vocabulary's <unk>, not a word of its own
    assert dm.streams["test"].tolist() == [2, UNK_ID, UNK_ID, EOS_ID]
    assert dm.num_tokens("test") == 3 + 1  # every word + one end of sentence


def test_vocabulary_min_freq_and_max_size():
    sentences = [["a", "a", "a", "b", "b", "c"]]
    assert Vocabulary.build(sentences, min_freq=2).itos[2:] == ["a", "b"]
    assert Vocabulary.build(sentences, max_size=3).itos == ["<unk>", "<eos>", "a"]
    with pytest.raises(ValueError):
        Vocabulary(["a", "<eos>"])


def test_char_tokenizer_keeps_spaces(tmp_path, cache_dir):
    dm = text_module(tmp_path, cache_dir, ["ab a"], ["b"], ["a b"], tokenizer="char")
    assert set(dm.vocab.itos[2:]) == {"a", "b", " "}
    assert dm.vocab.decode(dm.streams["test"].tolist()) == ["a", " ", "b", "<eos>"]


# --- batches -----------------------------------------------------------------------------------
def random_stream(n_sentences: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate(
        [np.append(rng.integers(2, 50, rng.integers(1, 12)), EOS_ID) for _ in range(n_sentences)]
    )


@pytest.mark.parametrize("columns", [1, 3, 7, 64])
def test_columns_score_every_token_exactly_once(columns):
    stream = random_stream(40)
    inputs, targets = ColumnBatches(stream, columns, bptt=len(stream))[0]  # [C, L]: all of it
    scored = targets[targets != IGNORE_INDEX]
    assert scored.numel() == len(stream)  # nothing dropped, nothing scored twice
    # row-major reading of the scored targets is the stream itself
    assert scored.tolist() == stream.tolist()
    # every column opens a sentence: its first input is <eos> (the start-of-sentence context)
    assert (inputs[:, 0] == EOS_ID).all()
    # a target is the next input of the same column
    valid = targets[:, :-1] != IGNORE_INDEX
    assert torch.equal(targets[:, :-1][valid], inputs[:, 1:][valid])


@pytest.mark.parametrize("columns", [1, 2, 5, 9])
def test_columns_start_at_the_sentence_start_at_or_after_their_share(columns):
    """Sentences far longer than the scan's first chunk (4096 tokens): the cut is still the
    first sentence start at or after c * n / C (or the last one, when none is), as a full scan
    of the stream finds it."""
    rng = np.random.default_rng(columns)
    lengths = [3, 9000, 2, 5000, 17000, 4, 6000]
    stream = np.concatenate([np.append(rng.integers(2, 50, k), EOS_ID) for k in lengths])
    n = len(stream)
    starts = np.flatnonzero(np.concatenate([[EOS_ID], stream[:-1]]) == EOS_ID)  # full scan
    expected = set()
    for c in range(columns):
        later = starts[starts >= c * n / columns]
        expected.add(int(later[0]) if len(later) else int(starts[-1]))
    bounds = column_bounds(stream, columns)
    assert bounds[: len(expected), 0].tolist() == sorted(expected)
    assert bounds[:, 1].tolist() == [*bounds[1:, 0].tolist(), n]  # contiguous, to the end


def test_batches_read_the_stream_in_place(tmp_path):
    """A memory-mapped stream is read batch by batch, never copied whole (a 100M-token split
    would need 1.2 GB of copies before the first batch)."""
    np.save(tmp_path / "train.npy", random_stream(200).astype(np.int32))
    stream = np.load(tmp_path / "train.npy", mmap_mode="r")
    columns, windows = ColumnBatches(stream, 4, bptt=5), WindowBatches(stream, window=3)
    assert np.shares_memory(columns.stream, stream) and np.shares_memory(windows.stream, stream)
    inputs, targets = columns[0]
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == (4, 5)


def test_columns_are_shared_out_contiguously_across_ranks():
    stream = random_stream(50, seed=1)
    single = ColumnBatches(stream, batch_size=4, bptt=5)
    ranks = [ColumnBatches(stream, 2, 5, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)  # DDP needs equal batch counts
    for i in range(len(single)):  # the 2x2 columns of two ranks are the 4 columns of one
        both = torch.cat([ranks[0][i][1], ranks[1][i][1]])
        assert torch.equal(both, single[i][1])


def test_windows_hold_the_previous_tokens_with_start_padding():
    stream = np.array([5, 6, EOS_ID, 7])
    contexts, targets = WindowBatches(stream, window=3).__getitems__([0, 1, 3])
    assert contexts.tolist() == [[EOS_ID] * 3, [EOS_ID, EOS_ID, 5], [5, 6, EOS_ID]]
    assert targets.squeeze(1).tolist() == [5, 6, 7]


def test_dataloaders_cover_each_split(tmp_path, cache_dir):
    dm = text_module(tmp_path, cache_dir, ["a b c"] * 30, ["a b", "c"] * 7, ["b c a a"] * 5, bptt=4)
    for loader, split in ((dm.val_dataloader(), "validation"), (dm.test_dataloader(), "test")):
        counted = sum(int((y != IGNORE_INDEX).sum()) for _, y in loader)
        assert counted == dm.num_tokens(split)
        assert all(x.shape == y.shape and x.shape[1] <= 4 for x, y in loader)
    dm.train_window = 3
    contexts, targets = next(iter(dm.train_dataloader()))
    assert contexts.shape == (20, 3) and targets.shape == (20, 1)


# --- sources -----------------------------------------------------------------------------------
def test_hub_source_reads_the_ptb_schema_from_local_parquet(tmp_path, cache_dir):
    """The PTB hub config's code path (column ``sentence``), on local files of that schema."""
    folder = tmp_path / "ptb_text_only"
    folder.mkdir()
    for split, lines in (("train", ["a b", "b c"]), ("validation", ["a"]), ("test", ["c c"])):
        pq.write_table(pa.table({"sentence": lines}), folder / f"{split}.parquet")
    dm = LMDataModule(
        name="ptb",
        source="hub",
        hub_id=str(folder),
        text_column="sentence",
        cache_dir=str(cache_dir),
    )
    assert dm.vocab.itos[2:] == ["b", "a", "c"]
    assert dm.num_tokens("test") == 3


def test_single_file_is_cut_into_contiguous_splits(tmp_path, cache_dir):
    path = write(tmp_path / "play.txt", [f"line {i}" for i in range(40)])
    dm = LMDataModule(
        name="s",
        source="single_file",
        path=str(path),
        valid_fraction=0.1,
        test_fraction=0.1,
        cache_dir=str(cache_dir),
    )
    assert [len(dm.corpus[s]) for s in ("train", "validation", "test")] == [32, 4, 4]
    assert dm.corpus["test"]["text"][0] == "line 36"
    # the id stream follows the selected rows (select() keeps an indices mapping over the file):
    # "36" never occurs in the train lines 0-31, so it is <unk>; row 0 ("line 0") would not be
    assert dm.vocab.decode(dm.streams["test"][:3].tolist()) == ["line", "<unk>", "<eos>"]


# --- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bptt": 0}, "dataset.bptt must be a positive integer"),
        ({"batch_size": -1}, "dataset.batch_size must be a positive integer"),
        ({"tokenizer": "bpe"}, "dataset.tokenizer must be one of"),
    ],
)
def test_bad_batching_options_are_refused(tmp_path, cache_dir, kwargs, message):
    with pytest.raises(UserError, match=message):
        text_module(tmp_path, cache_dir, ["a"], ["a"], ["a"], **kwargs)


def test_missing_and_empty_files_are_refused(tmp_path, cache_dir):
    dm = text_module(tmp_path, cache_dir, ["a"], ["a"], ["a"])
    dm.source_options["valid_path"] = str(tmp_path / "nope.txt")
    with pytest.raises(UserError, match="dataset.valid_path: no such file"):
        dm.vocab  # noqa: B018
    (tmp_path / "empty.txt").write_text("")
    dm = text_module(tmp_path, cache_dir, ["a"], ["a"], ["a"])
    dm.source_options["test_path"] = str(tmp_path / "empty.txt")
    with pytest.raises(UserError, match="is empty"):
        dm.vocab  # noqa: B018
    dm = text_module(tmp_path, cache_dir, ["a"], ["   ", ""], ["a"])
    with pytest.raises(UserError, match="validation split has no tokens"):
        dm.vocab  # noqa: B018


def test_unknown_source_option_is_refused(tmp_path, cache_dir):
    dm = text_module(tmp_path, cache_dir, ["a"], ["a"], ["a"], colour="red")
    with pytest.raises(UserError, match=r"does not take \['colour'\]"):
        dm.vocab  # noqa: B018
