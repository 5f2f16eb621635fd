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


def sentence_columns(stream: np.ndarray, num_columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Arrange a split into ``num_columns`` padded columns of (inputs, targets).

    ``stream`` holds the split's ids, one ``<eos>`` after every sentence. Returns two tensors
    ``[num_columns, L]`` of the stream's integer type (int32 from the data module: half the
    memory of int64 for a 100M-token split); ``targets[c, t]`` is the token after ``inputs[c, t]``.
    """
    stream = np.asarray(stream)
    dtype = np.int32 if stream.dtype == np.int32 else np.int64
    # a writable copy, with a leading <eos>: the start context
    full = np.concatenate([np.array([EOS_ID], dtype), np.asarray(stream, dtype)])
    n = len(stream)
    sentence_starts = np.flatnonzero(full[:-1] == EOS_ID)  # input positions that open a sentence
    # cut at the sentence start nearest at or after each even share c * n / C
    ideal = np.arange(num_columns) * n / num_columns
    at = np.minimum(np.searchsorted(sentence_starts, ideal), len(sentence_starts) - 1)
    cuts = np.unique(sentence_starts[at])  # fewer cuts than columns only for very short splits
    bounds = np.append(cuts, n)
    length = int(np.diff(bounds).max()) if n else 0
    # filled in NumPy: torch's copies can spin OpenMP threads on a busy machine (100x slower)
    inputs = np.full((num_columns, length), EOS_ID, dtype=dtype)
    targets = np.full((num_columns, length), IGNORE_INDEX, dtype=dtype)
    for c, (start, end) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        inputs[c, : end - start] = full[start:end]
        targets[c, : end - start] = full[start + 1 : end + 1]
    return torch.from_numpy(inputs), torch.from_numpy(targets)


class ColumnBatches(Dataset):
    """Consecutive ``[B, bptt]`` slices of this rank's columns; item i continues item i - 1.

    Under DDP, the ``B * world_size`` columns of the whole split are dealt out in contiguous
    blocks, so each rank reads its own contiguous part of the stream and the union of all ranks
    scores every token once. Every rank gets the same number of batches (columns share one
    padded length), which DDP needs. Columns are stored in the stream's integer type; each batch
    is handed out as int64, the type losses and ``gather`` take.
    """

    def __init__(self, stream: np.ndarray, batch_size: int, bptt: int, rank=0, world_size=1):
        inputs, targets = sentence_columns(stream, batch_size * world_size)
        mine = slice(rank * batch_size, (rank + 1) * batch_size)
        self.inputs, self.targets = inputs[mine], targets[mine]  # [B, L]
        self.bptt = bptt

    def __len__(self) -> int:
        return math.ceil(self.inputs.size(1) / self.bptt)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        span = slice(i * self.bptt, (i + 1) * self.bptt)
        # [B, bptt] each (the last may be shorter)
        return self.inputs[:, span].long(), self.targets[:, span].long()


class WindowBatches(Dataset):
    """Item t: the ``window`` tokens before token t of the stream, and token t.

    The first tokens of a split see ``<eos>`` padding: the same start-of-sentence context every
    model gets at a column start. ``__getitems__`` lets the DataLoader fetch a whole batch with
    one indexing operation instead of ``batch_size`` Python calls.
    """

    def __init__(self, stream: np.ndarray, window: int):
        self.window = window
        stream = np.asarray(stream)  # read-only when memory-mapped: copied into a padded array
        padded = np.full(window + len(stream), EOS_ID, dtype=np.result_type(stream, np.int32))
        padded[window:] = stream
        self.padded = torch.from_numpy(padded)  # [window + N], the stream's integer type
        self.offsets = torch.arange(window)

    def __len__(self) -> int:
        return len(self.padded) - self.window

    def __getitem__(self, t: int):
        return self.__getitems__([t])

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        t = torch.as_tensor(indices)
        contexts = self.padded[t[:, None] + self.offsets]  # [n, window]
        targets = self.padded[t + self.window][:, None]  # [n, 1]
        return contexts.long(), targets.long()


def already_batched(batch):
    """collate_fn for datasets whose items are whole batches."""
    return batch
