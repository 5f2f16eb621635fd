"""The vocabulary and id streams of a tokenized corpus, written once, memory-mapped after.

A warm run must reach its first batch in seconds even for 100M tokens, so it neither
tokenizes nor copies: each split's ids are a ``.npy`` file opened with
``np.load(mmap_mode="r")`` (pages are read as batches touch them, and shared by every process
on the machine), the vocabulary an Arrow file. They live beside the ``datasets`` cache, in a
folder named by a fingerprint of everything they are computed from:

* the input: for local text, the text files themselves (path, size, modification time: what
  ``datasets`` keys its own cache by), so a warm start reads neither the text nor ``datasets``;
  for the other sources, each split's row count and its ``datasets`` cache files;
* the settings: the source and its options, the tokenizer, ``min_freq``, ``max_size``;
* :data:`VERSION`, bumped whenever tokenization or the layout changes.

A corpus held only in memory (no cache files) has no fingerprint: it is tokenized every time.
Writes go to a temporary folder renamed into place, so a crash or a concurrent run (every DDP
rank builds the data) never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from lm_experiments.data.vocab import Vocabulary

if TYPE_CHECKING:
    import datasets

VERSION = 1
VOCAB_FILE = "vocab.arrow"


def _stats(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path), stat.st_size, stat.st_mtime_ns


def _key(inputs: dict, settings: dict) -> str:
    text = json.dumps({"version": VERSION, "settings": settings, "inputs": inputs}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def of_files(paths: dict[str, str], settings: dict) -> str:
    """The cache key of the text files ``{split: path}`` tokenized with ``settings`` (and read
    by this version of ``datasets``: its line reader decides what a row is)."""
    files = {split: _stats(Path(path)) for split, path in paths.items()}
    return _key({"files": files, "reader": metadata.version("datasets")}, settings)


def of_corpus(corpus: datasets.DatasetDict, settings: dict) -> str | None:
    """The cache key of ``corpus`` tokenized with ``settings``; None when it is not on disk."""
    splits = {}
    for name, split in corpus.items():
        files = [Path(f["filename"]) for f in split.cache_files]
        if not files:
            return None
        splits[name] = {"rows": split.num_rows, "files": [_stats(f) for f in files]}
    return _key(splits, settings)


def folder(cache_dir: str | None, key: str) -> Path:
    if cache_dir:
        return Path(cache_dir) / "lm_experiments_streams" / key
    import datasets  # where it keeps its own cache

    return Path(datasets.config.HF_DATASETS_CACHE) / "lm_experiments_streams" / key


def load(where: Path, splits: tuple[str, ...]) -> tuple[Vocabulary, dict[str, np.ndarray]] | None:
    """The cached vocabulary and read-only, memory-mapped streams, or None if not cached."""
    if not (where / VOCAB_FILE).is_file():
        return None
    with pa.memory_map(str(where / VOCAB_FILE)) as source:
        itos = pa.ipc.open_file(source).read_all().column("token").to_pylist()
    streams = {split: np.load(where / f"{split}.npy", mmap_mode="r") for split in splits}
    return Vocabulary(itos), streams


def save(
    where: Path, vocab: Vocabulary, streams: dict[str, np.ndarray]
) -> tuple[Vocabulary, dict[str, np.ndarray]]:
    """Write the entry (unless a concurrent run just did) and return it memory-mapped."""
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=where.parent, prefix=f".{where.name}."))
    try:
        for split, stream in streams.items():
            np.save(tmp / f"{split}.npy", stream)
        table = pa.table({"token": pa.array(vocab.itos, type=pa.large_string())})
        with (
            pa.OSFile(str(tmp / VOCAB_FILE), "wb") as sink,
            pa.ipc.new_file(sink, table.schema) as writer,
        ):
            writer.write_table(table)
        try:
            os.rename(tmp, where)
        except OSError:  # another run wrote the same entry first: keep theirs
            if not (where / VOCAB_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load(where, tuple(streams))
