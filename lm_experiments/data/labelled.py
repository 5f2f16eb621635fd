"""Sentence-batched labelled data for classification and tagging.

Unlike the LM's id stream, each example is one whole sentence (a bidirectional encoder may read
all of it), with one label (``kind=classify``) or one tag per token (``kind=tag``).

Sources: local files (tagging: CoNLL-style ``token<TAB>tag`` lines, a blank line between
sentences; classification: ``label<TAB>text`` lines) or a ``datasets`` hub set (CoNLL-2003,
SST-2, IMDB: ``conf/dataset/``), whose ``data_files`` may point at local files of the schema.
"""

from __future__ import annotations

import logging
from collections import Counter
from functools import cached_property

import lightning as L
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from lm_experiments.data.corpora import OPTION, read_text
from lm_experiments.data.vocab import IGNORE_INDEX, UNK_ID, Vocabulary
from lm_experiments.errors import UserError

log = logging.getLogger(__name__)
SPLITS = ("train", "validation", "test")
STAGE_SPLIT = {"fit": "train", "train": "train", "val": "validation", "test": "test"}
PAD_ID = UNK_ID  # padded positions are masked out: never pooled, never scored


def read_tagged(path: str, option: str = "train_path") -> list[tuple[list[str], list[str]]]:
    """CoNLL-style ``token<TAB>tag`` lines of ``dataset.<option>``; a blank line ends a
    sentence."""
    sentences, tokens, tags = [], [], []
    for number, line in enumerate(read_text(option, path), start=1):
        if not line.strip():
            if tokens:
                sentences.append((tokens, tags))
            tokens, tags = [], []
            continue
        if "\t" not in line:
            raise UserError(f"{path}:{number}: expected 'token<TAB>tag', got {line.strip()!r}")
        token, tag = line.rstrip("\n").split("\t")[:2]
        tokens.append(token)
        tags.append(tag.strip())
    if tokens:
        sentences.append((tokens, tags))
    return sentences


def read_labelled(path: str, option: str = "train_path") -> list[tuple[list[str], str]]:
    """``label<TAB>text`` lines of ``dataset.<option>``, one sentence each (words split on
    whitespace)."""
    sentences = []
    for number, line in enumerate(read_text(option, path), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            raise UserError(f"{path}:{number}: expected 'label<TAB>text', got {line.strip()!r}")
        label, text = line.rstrip("\n").split("\t", 1)
        sentences.append((text.split(), label.strip()))
    return sentences


UNLABELLED = -1  # a hub set's "no label" (SST-2's test split: its labels are withheld)


def hub_examples(split, token_column: str, label_column: str, kind: str) -> list:
    """(tokens, label or tags) from a ``datasets`` split; class ids read as their names. A row
    without a label (``-1`` or none) is left out: it is no example of any class."""
    feature = split.features[label_column]
    names = getattr(getattr(feature, "feature", feature), "names", None)

    def name(value) -> str:
        return names[value] if names else str(value)

    examples = []
    for row in split:
        tokens = row[token_column]
        tokens = tokens.split() if isinstance(tokens, str) else list(tokens)
        target = row[label_column]
        if kind == "classify" and target in (None, UNLABELLED):
            continue
        examples.append((tokens, [name(t) for t in target] if kind == "tag" else name(target)))
    return examples


def check_tags(examples: list, split: str) -> None:
    for number, (tokens, tags) in enumerate(examples, start=1):
        if len(tokens) != len(tags):
            raise UserError(f"{split} sentence {number}: {len(tokens)} tokens but {len(tags)} tags")


class RankShare(DistributedSampler):
    """Every ``world``-th sentence from this rank's offset, none repeated: the ranks' metric
    states then sum to one process's (Lightning keeps a DistributedSampler as it is)."""

    def __iter__(self):
        order = list(range(len(self.dataset)))
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(order), generator=g).tolist()
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


class LabelledDataModule(L.LightningDataModule):
    """Sentences with labels or tags -> padded batches {tokens, lengths, targets}."""

    def __init__(
        self,
        name: str,
        kind: str,
        source: str = "files",
        train_path: str | None = None,
        valid_path: str | None = None,
        test_path: str | None = None,
        hub_name: str | None = None,
        hub_config: str | None = None,
        data_files: dict | None = None,
        token_column: str = "tokens",
        label_column: str = "label",
        min_freq: int = 1,
        max_size: int | None = None,
        batch_size: int = 32,
        eval_batch_size: int = 64,
        limit_train: int | None = None,
        num_workers: int = 0,
        cache_dir: str | None = None,
        seed: int = 0,
        vocabulary_ckpt: str | None = None,
    ):
        super().__init__()
        if kind not in ("classify", "tag"):
            raise UserError(f"dataset.kind must be 'classify' or 'tag', got '{kind}'")
        self.name, self.kind, self.source = name, kind, source
        self.paths = {"train": train_path, "validation": valid_path, "test": test_path}
        self.hub = (hub_name, hub_config, dict(data_files) if data_files else None)
        self.token_column, self.label_column = token_column, label_column
        self.min_freq, self.max_size, self.limit_train = min_freq, max_size, limit_train
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.cache_dir, self.seed = num_workers, cache_dir, seed
        self.vocabulary_ckpt = vocabulary_ckpt
        self.oracle_ppl: dict[str, float] = {}
        self.train_window = None  # whole sentences: set by train.build for every task

    @cached_property
    def examples(self) -> dict[str, list]:
        if self.source == "files":
            read = read_tagged if self.kind == "tag" else read_labelled
            examples = {split: read(path, OPTION[split]) for split, path in self.paths.items()}
        elif self.source == "hub":
            examples = self._hub_examples()
        else:
            raise UserError(f"dataset.source must be 'files' or 'hub', got '{self.source}'")
        for split in SPLITS:
            if not examples[split]:
                raise UserError(f"dataset '{self.name}': the {split} split has no sentences")
            if self.kind == "tag":
                check_tags(examples[split], split)
        if self.limit_train is not None:  # the first n sentences: the labelled-data budget
            examples["train"] = examples["train"][: self.limit_train]
        return examples

    def _hub_examples(self) -> dict[str, list]:
        import datasets

        name, config, data_files = self.hub
        if data_files:  # local files of the hub set's schema (tests; offline mirrors)
            raw = datasets.load_dataset("json", data_files=data_files, cache_dir=self.cache_dir)
        else:
            raw = datasets.load_dataset(name, config, cache_dir=self.cache_dir)
        if "validation" not in raw:
            raise UserError(f"dataset '{self.name}' has no validation split")
        examples = {
            split: hub_examples(raw[split], self.token_column, self.label_column, self.kind)
            for split in SPLITS
        }
        if raw["test"].num_rows and not examples["test"]:
            return self._test_from_validation(examples)
        return examples

    def _test_from_validation(self, examples: dict[str, list]) -> dict[str, list]:
        """A test split with no labels at all (SST-2's) cannot be scored: the labelled
        validation split becomes the test split, and the last as many train sentences the
        validation split, so that what selects the model is never what reports it."""
        held_out = len(examples["validation"])
        if len(examples["train"]) <= held_out:
            raise UserError(
                f"dataset '{self.name}': its test split is unlabelled and its train "
                "split too small to hold out a validation split"
            )
        log.warning(
            "dataset '%s': the test split is unlabelled; testing on the validation split and "
            "validating on the last %d train sentences",
            self.name,
            held_out,
        )
        return {
            "train": examples["train"][:-held_out],
            "validation": examples["train"][-held_out:],
            "test": examples["validation"],
        }

    @cached_property
    def vocab(self) -> Vocabulary:
        """From the train sentences only, as for language modeling; or a pretrained LM's."""
        if self.vocabulary_ckpt:
            from lm_experiments.tasks.pretrained import checkpoint_vocabulary

            return checkpoint_vocabulary(self.vocabulary_ckpt)
        return Vocabulary.build(
            (tokens for tokens, _ in self.examples["train"]), self.min_freq, self.max_size
        )

    @cached_property
    def labels(self) -> list[str]:
        """The label (tag) set: every split's, sorted; a label is a name, not a statistic."""
        seen = set()
        for split in SPLITS:
            for _, target in self.examples[split]:
                seen.update(target if self.kind == "tag" else [target])
        return sorted(seen)

    @cached_property
    def majority(self) -> int:
        """The most frequent train label (tag): the baseline a model must beat."""
        counts = Counter()
        for _, target in self.examples["train"]:
            counts.update(target if self.kind == "tag" else [target])
        return self.labels.index(counts.most_common(1)[0][0])

    def encoded(self, split: str) -> list[tuple[list[int], object]]:
        index = {label: i for i, label in enumerate(self.labels)}
        stoi = self.vocab.stoi
        out = []
        for tokens, target in self.examples[split]:
            ids = [stoi.get(t, UNK_ID) for t in tokens] or [UNK_ID]
            labels = (
                ([index[t] for t in target] or [IGNORE_INDEX])
                if self.kind == "tag"
                else index[target]
            )
            out.append((ids, labels))
        return out

    def collate(self, rows: list) -> dict[str, torch.Tensor]:
        """Pad to the longest sentence: tokens [B, T], lengths [B], targets [B] or [B, T], and
        each row's index in the split, ``sentence`` [B] (for the per-sentence score files)."""
        sentence = torch.tensor([index for index, _ in rows])
        rows = [row for _, row in rows]
        lengths = torch.tensor([len(ids) for ids, _ in rows])
        tokens = torch.full((len(rows), int(lengths.max())), PAD_ID, dtype=torch.long)
        for i, (ids, _) in enumerate(rows):
            tokens[i, : len(ids)] = torch.tensor(ids)
        if self.kind == "tag":
            targets = torch.full(tokens.shape, IGNORE_INDEX, dtype=torch.long)
            for i, (_, tags) in enumerate(rows):
                targets[i, : len(tags)] = torch.tensor(tags)
        else:
            targets = torch.tensor([label for _, label in rows])
        return {"tokens": tokens, "lengths": lengths, "targets": targets, "sentence": sentence}

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        data = list(enumerate(self.encoded(split)))  # (index in the split, (ids, labels))
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # one order for any world size: one process and several see the same batches
        sampler = RankShare(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=self.seed)
        return DataLoader(
            data,
            batch_size=max(1, batch_size // world),
            sampler=sampler,
            collate_fn=self.collate,
            num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)
