"""The embedded corpus as labelled data: ``dataset=synthetic task=tag|classify``.

The generator knows every sentence's derivation, so its labels are exact
(``data/synthetic/annotations.py``) and come with the text: the same seeded, cached
``datasets`` splits the language models read (``LMDataModule.corpus``), hence the same sentences
and, by default, the same vocabulary as an LM trained on them (pretraining needs no remapping).

* ``kind=tag``: each word's class from the grammar (``TAGS``: determiner, singular / plural
  noun, verb by number and subject class, preposition, wh-word, punctuation, ...). The closing
  ``<eos>`` is not a word and is not tagged.
* ``kind=classify``, ``label`` one of ``SENTENCE_LABELS``: ``question`` (question or
  statement), ``subject_number`` (the main clause's subject: sg / pl) or ``verb_class`` (which
  class of subject the main verb takes, or the copula). The sentence is read without its final
  "." or "?": that mark is decided by the first word and would give ``question`` away at the
  last position; without it, every label needs memory of a word well before the end.
"""

from __future__ import annotations

from functools import cached_property

from lm_experiments.data.labelled import LabelledDataModule
from lm_experiments.data.synthetic import (
    NUMBER_LABELS,
    QUESTION_LABELS,
    SENTENCE_LABELS,
    SPLITS,
    TAGS,
    VERB_CLASSES,
)
from lm_experiments.data.vocab import Vocabulary
from lm_experiments.errors import UserError

LABEL_NAMES = {
    "question": QUESTION_LABELS,
    "subject_number": NUMBER_LABELS,
    "verb_class": VERB_CLASSES,
}
FINAL_MARKS = (".", "?")


def sentence_examples(rows, kind: str, label: str) -> list:
    """(words, tags) or (words without the final mark, label name), one per row."""
    if kind == "tag":
        return [
            (words, [TAGS[t] for t in tags[: len(words)]])  # tags: the words', then <eos>'s
            for words, tags in ((r["text"].split(), r["tag"]) for r in rows)
        ]
    names = LABEL_NAMES[label]
    examples = []
    for row in rows:
        words = row["text"].split()
        if words and words[-1] in FINAL_MARKS:
            words = words[:-1]
        examples.append((words, names[row[label]]))
    return examples


class SyntheticLabelled(LabelledDataModule):
    """Sentence batches of an ``LMDataModule`` over the embedded corpus, with its exact labels."""

    def __init__(
        self,
        corpus,
        kind: str,
        label: str | None = None,
        limit_train: int | None = None,
        vocabulary_ckpt: str | None = None,
    ):
        label = "tag" if kind == "tag" else (label or "question")
        if kind == "classify" and label not in SENTENCE_LABELS:
            raise UserError(
                f"task.label must be one of {list(SENTENCE_LABELS)} for dataset=synthetic, "
                f"got '{label}'"
            )
        super().__init__(
            name=corpus.name,
            kind=kind,
            source="synthetic",
            batch_size=corpus.batch_size,
            eval_batch_size=corpus.eval_batch_size,
            limit_train=limit_train,
            num_workers=corpus.num_workers,
            cache_dir=corpus.cache_dir,
            seed=corpus.seed,
            vocabulary_ckpt=vocabulary_ckpt,
        )
        self.corpus, self.label = corpus, label

    @cached_property
    def examples(self) -> dict[str, list]:
        if not self.corpus.annotations:
            raise UserError(f"dataset '{self.name}' has no labels of its own")
        columns = ["text", "tag"] if self.kind == "tag" else ["text", self.label]
        examples = {
            split: sentence_examples(
                self.corpus.corpus[split].select_columns(columns), self.kind, self.label
            )
            for split in SPLITS
        }
        if self.limit_train is not None:  # the first n sentences: the labelled-data budget
            examples["train"] = examples["train"][: self.limit_train]
        return examples

    @cached_property
    def vocab(self) -> Vocabulary:
        """The LM's vocabulary of this corpus (all its train text, labelled or not), or a
        pretrained LM checkpoint's."""
        if self.vocabulary_ckpt:
            return super().vocab
        return self.corpus.vocab

    @cached_property
    def labels(self) -> list[str]:
        """Every class the grammar has, in its own order (a class absent from a small sample
        still gets an output)."""
        return list(TAGS[:-1]) if self.kind == "tag" else list(LABEL_NAMES[self.label])
