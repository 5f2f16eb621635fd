"""Text rows -> token ids, vectorized: Arrow compute and NumPy, no Python loop over tokens.

A WikiText-103-size corpus has 100M tokens; a Python ``str.split`` and a dict lookup per token
take minutes there. Here each batch of rows is tokenized by Arrow kernels into a
:class:`Chunk`: the chunk's distinct tokens (its *types*, in first-occurrence order) and,
per token, an index into them. Counting and encoding then work on types, whose number is the
vocabulary's order of magnitude, and one NumPy gather maps every token.

Tokenizers:

* ``word``: tokens are the runs of non-whitespace, whitespace being exactly Python's
  ``str.isspace`` set (Arrow's ``utf8_split_whitespace`` uses the same one): spaces, tabs,
  non-breaking spaces (U+00A0, U+202F), the other Unicode spaces. A row with no token (empty,
  or only whitespace) is skipped.
* ``char``: every character of the row is a token, whitespace included (a tab or a
  non-breaking space is a character of its own); trailing newlines are dropped, as by
  ``line.rstrip("\\n")``. An empty row is skipped.

Every kept row ends with one ``<eos>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lm_experiments.data.vocab import EOS_ID, UNK_ID, Vocabulary

ROWS_PER_CHUNK = 100_000  # ~5-20 MB of text: Arrow's 2 GB string limit is never near


@dataclass
class Chunk:
    """One batch of rows, tokenized."""

    types: pa.Array  # the chunk's distinct tokens (strings), in first-occurrence order
    indices: np.ndarray  # [tokens] int32: each token's position in ``types``
    lengths: np.ndarray  # [rows] int64: tokens per row


def _as_text(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    text = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return pc.fill_null(text.cast(pa.large_string()), "")  # int64 offsets; a null row is empty


def word_chunk(column) -> Chunk:
    trimmed = pc.utf8_trim_whitespace(_as_text(column))  # else "  a b " splits into "", a, b, ""
    words = pc.utf8_split_whitespace(trimmed)
    nonempty = pc.greater(pc.binary_length(trimmed), 0).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(words).to_numpy(zero_copy_only=False) * nonempty
    tokens = pc.list_flatten(words)
    if len(tokens) != lengths.sum():  # the [""] of empty rows
        tokens = tokens.filter(pc.greater(pc.binary_length(tokens), 0))
    encoded = pc.dictionary_encode(tokens)
    return Chunk(encoded.dictionary, encoded.indices.to_numpy().astype(np.int32), lengths)


def char_chunk(column) -> Chunk:
    text = pc.utf8_rtrim(_as_text(column), characters="\n")
    lengths = pc.utf8_length(text).to_numpy(zero_copy_only=False).astype(np.int64)
    offsets = np.frombuffer(text.buffers()[1], dtype=np.int64)[
        text.offset : text.offset + len(text) + 1
    ]
    utf8 = text.buffers()[2]
    chars = "" if utf8 is None else str(memoryview(utf8)[offsets[0] : offsets[-1]], "utf-8")
    codepoints = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
    distinct, first, inverse = np.unique(codepoints, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")  # first-occurrence order, as word_chunk's types
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    types = pa.array([chr(c) for c in distinct[order]], type=pa.large_string())  # per type
    return Chunk(types, rank[inverse].astype(np.int32), lengths)


TOKENIZERS = {"word": word_chunk, "char": char_chunk}


def tokenize(split, tokenizer: str, rows_per_chunk: int = ROWS_PER_CHUNK) -> list[Chunk]:
    """The ``text`` column of a ``datasets.Dataset`` (selections included), chunk by chunk."""
    chunk = TOKENIZERS[tokenizer]
    batches = split.select_columns(["text"]).with_format("arrow").iter(batch_size=rows_per_chunk)
    return [chunk(batch.column("text")) for batch in batches]


def count(chunks: list[Chunk]) -> tuple[list[str], np.ndarray]:
    """Every distinct token of the chunks and its count, in first-occurrence order."""
    if not chunks:
        return [], np.zeros(0, dtype=np.int64)
    encoded = pc.dictionary_encode(pa.concat_arrays([c.types for c in chunks]))
    per_type = np.concatenate([np.bincount(c.indices, minlength=len(c.types)) for c in chunks])
    counts = np.zeros(len(encoded.dictionary), dtype=np.int64)
    np.add.at(counts, encoded.indices.to_numpy(), per_type)
    return encoded.dictionary.to_pylist(), counts


def ids(chunks: list[Chunk], vocab: Vocabulary) -> np.ndarray:
    """The split's id stream: each kept row's token ids, then ``<eos>`` (int32 while the
    vocabulary fits, else int64); a token outside the vocabulary is ``<unk>``."""
    dtype = np.int32 if len(vocab) < 2**31 else np.int64
    if not chunks:
        return np.zeros(0, dtype)
    itos = pa.array(vocab.itos, type=pa.large_string())
    types = pa.concat_arrays([chunk.types for chunk in chunks])  # one hash lookup for all
    type_ids = pc.fill_null(pc.index_in(types, value_set=itos), UNK_ID)
    type_ids = type_ids.to_numpy(zero_copy_only=False).astype(dtype)
    starts = np.cumsum([0] + [len(chunk.types) for chunk in chunks])
    parts = [
        _with_eos(type_ids[start:][chunk.indices], chunk.lengths)  # a loop over chunks
        for chunk, start in zip(chunks, starts, strict=False)
    ]
    return np.concatenate(parts)


def _with_eos(tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """``tokens`` with ``<eos>`` after the last token of every row that has one."""
    kept = lengths[lengths > 0]
    eos_at = np.cumsum(kept) + np.arange(len(kept))  # each row's end, shifted by earlier <eos>
    out = np.full(len(tokens) + len(kept), EOS_ID, dtype=tokens.dtype)
    is_token = np.ones(len(out), dtype=bool)
    is_token[eos_at] = False
    out[is_token] = tokens
    return out
