"""How a token stream becomes batches.

Recurrent models read the stream in ``B`` parallel columns and carry their hidden state from one
``[B, bptt]`` batch to the next (mini-batch truncated BPTT), as in pytorch/examples'
``batchify``. Two differences make the numbers honest:

* no token is dropped: columns are padded to equal length with targets ``IGNORE_INDEX``, so every
  token of the split is scored exactly once, whatever ``B`` is;
* columns are cut at sentence boundaries, so every column starts with the ``<eos>`` input that
  means "start of a sentence": a model whose state is reset there (any model, at a column start)
  sees exactly what it would see at the start of any sentence.

The NNLM has no state, so it trains on shuffled windows of the ``window`` previous tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX


def as_int64(ids: np.ndarray) -> torch.Tensor:
    """A gathered batch as the int64 tensor losses and ``gather`` take."""
    return torch.from_numpy(ids.astype(np.int64))


def _first_start_from(stream: np.ndarray, position: int) -> int | None:
    """The first input position >= ``position`` that opens a sentence, or None if none does.

    Input position p (in the split with a leading ``<eos>``) opens a sentence when p == 0 or
    ``stream[p - 1]`` is ``<eos>``, and p < len(stream). Scans forward in growing chunks, so
    cutting C columns reads about C sentences, not the whole stream.
    """
    if position <= 0:
        return 0
    i, chunk, last = position - 1, 4096, len(stream) - 1  # stream[i] is <eos> -> p = i + 1
    while i < last:
        hits = np.flatnonzero(np.asarray(stream[i : min(i + chunk, last)]) == EOS_ID)
        if len(hits):
            return i + int(hits[0]) + 1
        i, chunk = i + chunk, chunk * 2
    return None


def _last_start(stream: np.ndarray) -> int:
    """The last input position that opens a sentence (0 if only the first does)."""
    i, chunk = len(stream) - 1, 4096
    while i > 0:
        low = max(0, i - chunk)
        hits = np.flatnonzero(np.asarray(stream[low:i]) == EOS_ID)
        if len(hits):
            return low + int(hits[-1]) + 1
        i, chunk = low, chunk * 2
    return 0


def column_bounds(stream: np.ndarray, num_columns: int) -> np.ndarray:
    """[num_columns, 2]: each column's (start, end) input positions, cut at sentence starts.

    Positions count in the split with a leading ``<eos>`` (the start context), so column c reads
    inputs ``full[start:end]`` and targets ``full[start + 1 : end + 1]``. Column c starts at the
    sentence start nearest at or after its even share c * n / C; a very short split has fewer
    sentences than columns, and the columns left over are empty (start = end = n).
    """
    n = len(stream)
    starts = set()
    for c in range(num_columns):
        at = _first_start_from(stream, math.ceil(c * n / num_columns)) if n else 0
        starts.add(_last_start(stream) if at is None else at)
    cuts = sorted(starts)
    cuts += [n] * (num_columns - len(cuts))
    return np.stack([cuts, [*cuts[1:], n]], axis=1).astype(np.int64)


class ColumnBatches(Dataset):
    """Consecutive ``[B, bptt]`` slices of this rank's columns; item i continues item i - 1.

    Under DDP, the ``B * world_size`` columns of the whole split are dealt out in contiguous
    blocks, so each rank reads its own contiguous part of the stream and the union of all ranks
    scores every token once. Every rank gets the same number of batches (columns share one
    padded length, the longest column's), which DDP needs. Nothing is copied up front: each batch
    is gathered from the (memory-mapped) stream when asked for, as int64, the type losses and
    ``gather`` take; padding is ``<eos>`` inputs with ``IGNORE_INDEX`` targets.
    """

    def __init__(self, stream: np.ndarray, batch_size: int, bptt: int, rank=0, world_size=1):
        self.stream = np.asarray(stream)  # [n]; a view: a memory-mapped stream is not copied
        bounds = column_bounds(self.stream, batch_size * world_size)
        self.length = int((bounds[:, 1] - bounds[:, 0]).max())  # L, every column's padded length
        self.bounds = bounds[rank * batch_size : (rank + 1) * batch_size]  # [B, 2], this rank's
        self.bptt = bptt

    def __len__(self) -> int:
        return math.ceil(self.length / self.bptt)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        first = i * self.bptt
        width = min(self.bptt, self.length - first)
        positions = self.bounds[:, :1] + first + np.arange(width)  # [B, width] input positions
        real = positions < self.bounds[:, 1:]  # [B, width]; False: padding
        p = np.where(real, positions, 0)
        # full[p + 1] = stream[p]; full[p] = stream[p - 1], and full[0] is the <eos> start context
        targets = np.where(real, self.stream[p], IGNORE_INDEX)
        inputs = np.where(real & (p > 0), self.stream[np.maximum(p - 1, 0)], EOS_ID)
        return as_int64(inputs), as_int64(targets)


class WindowBatches(Dataset):
    """Item t: the ``window`` tokens before token t of the stream, and token t.

    The first tokens of a split see ``<eos>`` padding: the same start-of-sentence context every
    model gets at a column start. ``__getitems__`` lets the DataLoader fetch a whole batch with
    one indexing operation instead of ``batch_size`` Python calls.
    """

    def __init__(self, stream: np.ndarray, window: int):
        self.window = window
        self.stream = np.asarray(stream)  # [N]; a memory map stays one (nothing is copied)
        self.offsets = np.arange(-window, 0)  # the window before a token, oldest first

    def __len__(self) -> int:
        return len(self.stream)

    def __getitem__(self, t: int):
        return self.__getitems__([t])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        t = np.asarray(indices)
        positions = t[:, None] + self.offsets  # [n, window]; negative: before the split
        contexts = np.where(positions >= 0, self.stream[np.maximum(positions, 0)], EOS_ID)
        targets = self.stream[t][:, None]  # [n, 1]
        return as_int64(contexts), as_int64(targets)


def already_batched(batch):
    """collate_fn for datasets whose items are whole batches."""
    return batch
