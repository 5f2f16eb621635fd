"""Where the text comes from: every source returns a ``datasets.DatasetDict`` with the splits
``train``, ``validation`` and ``test`` and one string column ``text`` (one sentence a row).

A source may add per-token columns (the generated corpus adds ``oracle_nll``). Sources are
chosen by ``dataset.source`` and get their options from the rest of the ``dataset`` config node.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import datasets

from lm_experiments.errors import UserError

SPLITS = ("train", "validation", "test")


def _existing_file(option: str, path: str | None) -> str:
    if not path:
        raise UserError(f"dataset.{option} is not set: pass dataset.{option}=PATH to a text file")
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(
            f"dataset.{option}: no such file '{file}'; point it at a text file, one sentence a line"
        )
    if file.stat().st_size == 0:
        raise UserError(f"dataset.{option}: '{file}' is empty; it needs at least one sentence")
    return str(file.resolve())


def text_files(
    train_path: str, valid_path: str, test_path: str, cache_dir: str | None = None
) -> datasets.DatasetDict:
    """Three local text files, one sentence a line (the ``text`` builder, cached by datasets)."""
    files = {
        "train": _existing_file("train_path", train_path),
        "validation": _existing_file("valid_path", valid_path),
        "test": _existing_file("test_path", test_path),
    }
    return datasets.load_dataset("text", data_files=files, cache_dir=cache_dir)


def single_file(
    path: str,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """One text file cut into contiguous train / validation / test lines (tiny Shakespeare).

    Contiguous, not shuffled: held-out text should come from a part of the work the model never
    saw, as in the usual char-rnn setup.
    """
    text = datasets.load_dataset(
        "text", data_files={"train": _existing_file("path", path)}, cache_dir=cache_dir
    )["train"]
    n = len(text)
    n_test, n_valid = int(n * test_fraction), int(n * valid_fraction)
    n_train = n - n_valid - n_test
    if min(n_train, n_valid, n_test) <= 0:
        raise UserError(
            f"dataset.path '{path}' has {n} lines, too few to cut into train/validation/test; "
            "use a longer file or change dataset.valid_fraction/test_fraction"
        )
    return datasets.DatasetDict(
        train=text.select(range(n_train)),
        validation=text.select(range(n_train, n_train + n_valid)),
        test=text.select(range(n_train + n_valid, n)),
    )


def hub(
    hub_id: str,
    hub_name: str | None = None,
    revision: str | None = None,
    text_column: str = "text",
    split_names: dict | None = None,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """A dataset from the Hugging Face hub (or a local folder of the same layout).

    ``split_names`` maps our split names to the dataset's (PTB calls them
    train/validation/test, some corpora say ``valid``); ``text_column`` is renamed to ``text``.
    """
    split_names = dict(split_names or {s: s for s in SPLITS})
    try:
        loaded = datasets.load_dataset(hub_id, hub_name, revision=revision, cache_dir=cache_dir)
    except (FileNotFoundError, ConnectionError, ValueError) as err:
        raise UserError(
            f"could not load dataset '{hub_id}' ({hub_name}): {err}. Without a network, use "
            "dataset=text with local files or the embedded dataset=synthetic"
        ) from err
    out = {}
    for ours, theirs in split_names.items():
        if theirs not in loaded:
            raise UserError(f"dataset '{hub_id}' has no split '{theirs}' (has {list(loaded)})")
        split = loaded[theirs]
        if text_column not in split.column_names:
            raise UserError(
                f"dataset '{hub_id}' has no column '{text_column}' (has {split.column_names}); "
                "set dataset.text_column"
            )
        out[ours] = split.select_columns([text_column]).rename_column(text_column, "text")
    return datasets.DatasetDict(out)


def synthetic(
    corpus_seed: int = 0,
    train_tokens: int = 200_000,
    valid_tokens: int = 20_000,
    test_tokens: int = 20_000,
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """The embedded generated corpus, with the exact per-token NLL of its generator."""
    from lm_experiments.data.synthetic import build_synthetic_splits

    return build_synthetic_splits(
        seed=corpus_seed,
        train_tokens=train_tokens,
        valid_tokens=valid_tokens,
        test_tokens=test_tokens,
        cache_dir=cache_dir,
    )


SOURCES = {"text": text_files, "single_file": single_file, "hub": hub, "synthetic": synthetic}


def load_corpus(source: str, options: dict, cache_dir: str | None) -> datasets.DatasetDict:
    """Call the source named ``source`` with ``options``, turning a bad option into a UserError."""
    if source not in SOURCES:
        raise UserError(f"unknown dataset.source '{source}'; choose one of {sorted(SOURCES)}")
    loader = SOURCES[source]
    accepted = set(inspect.signature(loader).parameters) - {"cache_dir"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(
            f"dataset.source={source} does not take {unknown}; it takes {sorted(accepted)}"
        )
    return loader(**options, cache_dir=cache_dir)
