"""One LightningDataModule for every corpus.

text (hub | local files | generated) -> DatasetDict (``corpora.py``, cached by datasets)
-> tokens, Vocabulary (train split only) and one id stream per split (``tokens.py``,
vectorized) -> saved once, memory-mapped after (``stream_cache.py``) -> batches (``batching.py``).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import TYPE_CHECKING

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from lm_experiments.data import stream_cache
from lm_experiments.data.batching import ColumnBatches, WindowBatches, already_batched
from lm_experiments.data.corpora import ANNOTATED_SOURCES, SPLITS, load_corpus, source_files
from lm_experiments.data.sampler import ResumableSampler, training_position
from lm_experiments.data.tokens import TOKENIZERS, count, ids, tokenize
from lm_experiments.data.vocab import Vocabulary
from lm_experiments.errors import UserError

if TYPE_CHECKING:
    import datasets

STAGE_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def flat_column(split, column: str, dtype) -> np.ndarray:
    """All values of a list column, concatenated, straight from the Arrow buffers (no Python
    loop over rows: WikiText-103 has 1.8M of them)."""
    values = split.with_format("arrow")[column].combine_chunks().flatten()
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)


class LMDataModule(L.LightningDataModule):
    """Tokenizes a corpus, builds the vocabulary and serves batches for every model family.

    ``batch_size`` and ``eval_batch_size`` are global: under DDP each of the ``world_size``
    ranks gets ``batch_size // world_size`` columns (or windows), so one process with batch 2b
    and two with batch b see the same data per step.
    """

    def __init__(
        self,
        name: str,
        source: str,
        tokenizer: str = "word",
        min_freq: int = 1,
        max_size: int | None = None,
        batch_size: int = 20,
        eval_batch_size: int = 10,
        bptt: int = 35,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        **source_options,
    ):
        super().__init__()
        for option, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if not isinstance(value, int) or value <= 0:
                raise UserError(f"dataset.{option} must be a positive integer, got {value!r}")
        if not isinstance(bptt, int) or bptt <= 0:
            raise UserError(f"dataset.bptt must be a positive integer, got {bptt!r}")
        if tokenizer not in TOKENIZERS:
            raise UserError(
                f"dataset.tokenizer must be one of {sorted(TOKENIZERS)}, got '{tokenizer}'"
            )
        self.name, self.source, self.source_options = name, source, source_options
        self.tokenizer = tokenizer
        self.min_freq, self.max_size = min_freq, max_size
        self.batch_size, self.eval_batch_size, self.bptt = batch_size, eval_batch_size, bptt
        self.num_workers, self.cache_dir, self.seed = num_workers, cache_dir, seed
        self.train_window: int | None = None  # set for window-trained models (the NNLM)
        # windows a training step for those (model.train_batch_size); None: batch_size
        self.train_batch_size: int | None = None
        self._resume_at: dict[str, int] | None = None  # from a checkpoint saved inside an epoch

    # --- text -> ids ------------------------------------------------------------------------
    @cached_property
    def corpus(self) -> datasets.DatasetDict:
        """The source's splits as read: one row a line (empty lines too), column ``text``, and
        per-token columns where the source has them."""
        return load_corpus(self.source, self.source_options, self.cache_dir)

    @cached_property
    def _encoded(self) -> tuple[Vocabulary, dict[str, np.ndarray]]:
        """(vocabulary, streams), from the stream cache when this corpus was seen before."""
        settings = {
            "source": self.source,
            "options": self.source_options,
            "tokenizer": self.tokenizer,
            "min_freq": self.min_freq,
            "max_size": self.max_size,
        }
        files = source_files(self.source, self.source_options)
        if files:  # local text: the key is known before the text is read
            key = stream_cache.of_files(files, settings)
        else:
            key = stream_cache.of_corpus(self.corpus, settings)
        where = stream_cache.folder(self.cache_dir, key) if key else None
        cached = stream_cache.load(where, SPLITS) if where else None
        if cached:
            return cached
        vocab, streams = self._encode()
        return stream_cache.save(where, vocab, streams) if where else (vocab, streams)

    def _encode(self) -> tuple[Vocabulary, dict[str, np.ndarray]]:
        train = tokenize(self.corpus["train"], self.tokenizer)
        vocab = Vocabulary.from_counts(*count(train), self.min_freq, self.max_size)
        streams = {"train": ids(train, vocab)}
        del train  # the held-out splits are tokenized one at a time
        for split in SPLITS[1:]:
            streams[split] = ids(tokenize(self.corpus[split], self.tokenizer), vocab)
        for split in SPLITS:
            if len(streams[split]) == 0:
                raise UserError(
                    f"dataset '{self.name}': the {split} split has no tokens; "
                    "give it at least one non-empty line"
                )
        return vocab, streams

    @property
    def vocab(self) -> Vocabulary:
        return self._encoded[0]

    @property
    def streams(self) -> dict[str, np.ndarray]:
        """Per split, all ids in order (int32, read-only, memory-mapped from the cache): each
        non-empty line's tokens then ``<eos>``."""
        return self._encoded[1]

    @cached_property
    def oracle_ppl(self) -> dict[str, float]:
        """Exact perplexity of the corpus's generator per stage, when the corpus knows it."""
        if self.source not in ANNOTATED_SOURCES or (
            "oracle_nll" not in self.corpus["train"].column_names
        ):
            return {}
        out = {}
        for stage, split in STAGE_SPLIT.items():
            nll = flat_column(self.corpus[split], "oracle_nll", np.float64)
            if len(nll) != len(self.streams[split]):
                raise RuntimeError(
                    f"oracle scores {len(nll)} tokens, models {len(self.streams[split])}"
                )
            out[stage] = float(math.exp(nll.sum() / len(nll)))
        return out

    @cached_property
    def annotations(self) -> dict[str, dict[str, np.ndarray]]:
        """Per split, what the generated corpus knows (synthetic/annotations.py): per-token arrays
        aligned with ``streams`` and per-sentence labels. Empty for every other corpus."""
        if self.source not in ANNOTATED_SOURCES or (
            "distance" not in self.corpus["train"].column_names
        ):
            return {}
        from lm_experiments.data.synthetic import SENTENCE_LABELS, TOKEN_ANNOTATIONS

        return {
            split: {c: flat_column(self.corpus[split], c, np.int64) for c in TOKEN_ANNOTATIONS}
            | {c: np.asarray(self.corpus[split][c], np.int64) for c in SENTENCE_LABELS}
            for split in SPLITS
        }

    def num_tokens(self, split: str) -> int:
        return len(self.streams[split])

    # --- Lightning hooks ------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self.streams  # noqa: B018  build (and cache) everything once, before the ranks start

    def _rank(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _per_rank(self, option: str, size: int) -> int:
        rank, world = self._rank()
        if size % world:
            raise UserError(
                f"{option}={size} is global and must divide among {world} processes; "
                f"use a multiple of {world}"
            )
        return size // world

    def _loader(self, dataset, sampler, batch_size: int | None = None, **kwargs) -> DataLoader:
        # its own generator: creating an iterator must not draw from the global RNG, so that a
        # resumed run's dropout masks are an uninterrupted run's
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )

    def _columns(self, split: str, option: str, size: int) -> DataLoader:
        rank, world = self._rank()
        batches = ColumnBatches(
            self.streams[split], self._per_rank(f"dataset.{option}", size), self.bptt, rank, world
        )
        sampler = SequentialSampler(batches)  # item i continues item i - 1
        if split == "train":
            sampler = self._resumable(sampler, 1)
        return self._loader(batches, sampler)

    def _resumable(self, sampler, batch_size: int) -> ResumableSampler:
        sampler = ResumableSampler(sampler, batch_size)
        if self._resume_at is not None:  # continue the epoch the checkpoint was saved in
            sampler.resume(**self._resume_at)
            self._resume_at = None
        return sampler

    def train_dataloader(self) -> DataLoader:
        if self.train_window is None:
            return self._columns("train", "batch_size", self.batch_size)
        rank, world = self._rank()
        windows = WindowBatches(self.streams["train"], self.train_window)
        sampler = DistributedSampler(
            windows, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        option, size = "model.train_batch_size", self.train_batch_size
        if size is None:
            option, size = "dataset.batch_size", self.batch_size
        batch_size = self._per_rank(option, size)
        return self._loader(
            windows,
            self._resumable(sampler, batch_size),
            batch_size=batch_size,
            collate_fn=already_batched,
        )

    # where the training stream stands, in every checkpoint (data/sampler.py)
    def state_dict(self) -> dict:
        position = training_position(self.trainer)
        return {"train_position": position} if position else {}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = state.get("train_position")

    def val_dataloader(self) -> DataLoader:
        return self._columns("validation", "eval_batch_size", self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._columns("test", "eval_batch_size", self.eval_batch_size)
