"""Small labelled files for the classification and tagging tests (written per test)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = ["the", "a", "cat", "dog", "runs", "sees", "big", "red", "on", "at"]
NOUNS = {"cat", "dog"}


def sentences(n: int, seed: int, low: int = 3, high: int = 8) -> list[list[str]]:
    r = random.Random(seed)
    return [[r.choice(WORDS) for _ in range(r.randint(low, high))] for _ in range(n)]


def write_labels(root: Path, label_of, sizes=(200, 60, 60), **lengths) -> dict[str, Path]:
    """``label<TAB>text`` files, the label a function of the sentence."""
    files = {}
    for seed, (split, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        path = root / f"{split}.tsv"
        lines = [f"{label_of(s)}\t{' '.join(s)}" for s in sentences(n, seed, **lengths)]
        path.write_text("\n".join(lines) + "\n")
        files[split] = path
    return files


def write_tags(root: Path, tag_of, sizes=(200, 60, 60)) -> dict[str, Path]:
    """CoNLL-style ``token<TAB>tag`` files; ``tag_of(sentence, i)``."""
    files = {}
    for seed, (split, n) in enumerate(zip(("train", "valid", "test"), sizes, strict=True)):
        path = root / f"{split}.conll"
        blocks = [
            "\n".join(f"{w}\t{tag_of(s, i)}" for i, w in enumerate(s)) for s in sentences(n, seed)
        ]
        path.write_text("\n\n".join(blocks) + "\n")
        files[split] = path
    return files


def file_overrides(dataset: str, files: dict[str, Path]) -> list[str]:
    return [
        f"dataset={dataset}",
        f"dataset.train_path={files['train']}",
        f"dataset.valid_path={files['valid']}",
        f"dataset.test_path={files['test']}",
    ]
