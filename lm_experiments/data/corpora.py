"""Where the text comes from: every source returns a ``datasets.DatasetDict`` with the splits
``train``, ``validation`` and ``test`` and one string column ``text`` (one sentence a row).

A source may add per-token columns (the generated corpus adds ``oracle_nll``). Sources are
chosen by ``dataset.source`` and get their options from the rest of the ``dataset`` config node.

The local-text sources also say which files they read (:func:`source_files`) without reading
them: the stream cache is keyed by those files, so a warm start of local text never imports
``datasets`` (over half a second of a start). ``datasets`` is imported where a corpus is read.
"""

from __future__ import annotations

import codecs
import inspect
from pathlib import Path
from typing import TYPE_CHECKING

from lm_experiments.errors import UserError

if TYPE_CHECKING:
    import datasets

SPLITS = ("train", "validation", "test")


#: the file names ``dataset.data_dir`` looks for, per split: ours, then WikiText's
LAYOUT = {
    "train": ("train.txt", "wiki.train.tokens"),
    "validation": ("valid.txt", "wiki.valid.tokens"),
    "test": ("test.txt", "wiki.test.tokens"),
}
OPTION = {"train": "train_path", "validation": "valid_path", "test": "test_path"}
FRACTION = {"validation": "valid_fraction", "test": "test_fraction"}
DECODING_ERRORS = ("strict", "replace", "ignore")


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


def _codec(encoding: str, errors: str) -> str:
    """The codec to read with: a UTF-8 file's byte-order mark is dropped (``utf-8-sig``, which
    reads a file without one exactly as ``utf-8`` does)."""
    try:
        name = codecs.lookup(encoding).name
    except (LookupError, TypeError):
        raise UserError(
            f"dataset.encoding: unknown encoding {encoding!r}; use a Python codec name such as "
            "utf-8, latin-1 or cp1252"
        ) from None
    if errors not in DECODING_ERRORS:
        raise UserError(
            f"dataset.errors must be one of {list(DECODING_ERRORS)}, got {errors!r} "
            "(replace: undecodable bytes become U+FFFD)"
        )
    return "utf-8-sig" if name == "utf-8" else name


def _first_undecodable(path: str, codec: str) -> tuple[int, str] | None:
    """(line number, what is wrong: the bad bytes in hex) of the first undecodable bytes of ``path``, or None.
    Read only after a decoding failure, to name the line."""
    decoder = codecs.getincrementaldecoder(codec)()
    line = 1
    with open(path, "rb") as f:
        for raw in [*f, b""]:  # b"": the final call, for a sequence cut off at the end
            try:
                line += decoder.decode(raw, final=not raw).count("\n")
            except UnicodeError as err:  # UTF-16 without a byte-order mark is not a DecodeError
                if isinstance(err, UnicodeDecodeError):
                    return line, f"bytes {err.object[err.start : err.end].hex(' ')}"
                return line, str(err)
    return None


def _undecodable(option: str, path: str, encoding: str, found: tuple[int, str]) -> UserError:
    return UserError(
        f"dataset.{option}: '{path}' is not valid {encoding} at line {found[0]} ({found[1]}); "
        "pass dataset.encoding=ENCODING (latin-1 or cp1252 for many older corpora), or "
        "dataset.errors=replace to read those bytes as U+FFFD"
    )


def read_text(
    option: str, path: str | None, encoding: str = "utf-8", errors: str = "strict"
) -> list[str]:
    """The lines of the local file ``dataset.<option>`` names, for data read into memory (the
    labelled sets), checked and decoded exactly as :func:`read_lines` reads a corpus."""
    codec = _codec(encoding, errors)
    file = _existing_file(option, path)
    try:
        return Path(file).read_text(encoding=codec, errors=errors).splitlines()
    except UnicodeError:
        found = _first_undecodable(file, codec)
        if found is None:
            raise
        raise _undecodable(option, file, encoding, found) from None


def read_lines(
    files: dict[str, tuple[str, str]], encoding: str, errors: str, cache_dir: str | None
) -> datasets.DatasetDict:
    """``{split: (option, path)}`` as one row a line (the ``text`` builder, cached by datasets).

    Universal newlines: CRLF and CR line ends read as LF. A UTF-8 byte-order mark is dropped.
    Undecodable bytes are one UserError naming the file, the line and the fix, unless
    ``errors`` is ``replace`` (U+FFFD) or ``ignore``.
    """
    import datasets
    from datasets.exceptions import DatasetGenerationError

    codec = _codec(encoding, errors)
    paths = {split: _existing_file(option, path) for split, (option, path) in files.items()}
    try:
        return datasets.load_dataset(
            "text", data_files=paths, cache_dir=cache_dir, encoding=codec, encoding_errors=errors
        )
    except (DatasetGenerationError, UnicodeError) as err:
        cause = err if isinstance(err, UnicodeError) else err.__cause__
        if not isinstance(cause, UnicodeError):
            raise
        for split, path in paths.items():
            if found := _first_undecodable(path, codec):
                raise _undecodable(files[split][0], path, encoding, found) from None
        raise


def _fraction(option: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise UserError(f"dataset.{option} must be a fraction between 0 and 1, got {value!r}")
    return float(value)


def _cut(text: datasets.Dataset, fractions: dict[str, float], what: str) -> dict:
    """Contiguous parts of ``text``: the last ``fractions[split]`` of its lines go to each split
    in turn, from the end; ``train`` keeps the first lines. Not shuffled: held-out text should
    come from a part the model never saw."""
    n = len(text)
    sizes = {split: int(round(n * f, 9)) for split, f in fractions.items()}
    n_train = n - sum(sizes.values())
    if min(n_train, *sizes.values()) <= 0:
        raise UserError(
            f"{what} has {n} lines, too few to cut into train/{'/'.join(sizes)}; use a longer "
            f"file or change dataset.{'/'.join(FRACTION[split] for split in sizes)}"
        )
    parts, start = {"train": text.select(range(n_train))}, n_train
    for split, size in sizes.items():
        parts[split] = text.select(range(start, start + size))
        start += size
    return parts


def _layout_file(data_dir: str | None, split: str) -> str | None:
    """The split's file in ``data_dir`` (``train.txt`` or ``wiki.train.tokens``, ...)."""
    if not data_dir:
        return None
    folder = Path(data_dir).expanduser()
    if not folder.is_dir():
        raise UserError(
            f"dataset.data_dir: no such folder '{folder}'; point it at a folder holding "
            "train.txt, valid.txt and test.txt (or WikiText's wiki.train.tokens, ...)"
        )
    found = [folder / name for name in LAYOUT[split] if (folder / name).is_file()]
    if not found:
        raise UserError(
            f"dataset.data_dir: '{folder}' has no {' or '.join(LAYOUT[split])}; add it, or "
            f"pass dataset.{OPTION[split]}=PATH"
        )
    return str(found[0])


def text_paths(
    train_path: str | None = None,
    valid_path: str | None = None,
    test_path: str | None = None,
    data_dir: str | None = None,
    valid_fraction: float | None = None,
    **reading,
) -> dict[str, tuple[str, str]]:
    """``{split: (option, path)}``: the files :func:`text_files` reads (no validation file when
    ``valid_fraction`` carves it from the training file). ``reading``: the options of how they
    are read, not of which."""
    if not (train_path or data_dir):
        raise UserError(
            "dataset=text needs its files: pass dataset.data_dir=DIR (holding train.txt, "
            "valid.txt, test.txt), or dataset.train_path, dataset.valid_path and dataset.test_path"
        )
    if valid_fraction is not None:
        _fraction(FRACTION["validation"], valid_fraction)
        if valid_path:
            raise UserError(
                "dataset.valid_path and dataset.valid_fraction are both set: validate on a file "
                "or on the end of the training file, not both (set the other to null)"
            )
    given = {"train": train_path, "validation": valid_path, "test": test_path}
    carve = valid_fraction is not None  # validation: the end of the training file
    files = {
        split: (OPTION[split], given[split] or _layout_file(data_dir, split))
        for split in SPLITS
        if not (carve and split == "validation")
    }
    if not carve and not files["validation"][1]:
        raise UserError(
            "dataset.valid_path is not set: pass dataset.valid_path=PATH, or "
            "dataset.valid_fraction=0.1 to validate on the last tenth of the training file"
        )
    return files


def text_files(
    train_path: str | None = None,
    valid_path: str | None = None,
    test_path: str | None = None,
    data_dir: str | None = None,
    valid_fraction: float | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """Local text files, one sentence a line: three paths, or a ``data_dir`` holding
    ``train.txt``/``valid.txt``/``test.txt`` (or WikiText's ``wiki.{train,valid,test}.tokens``);
    a path given explicitly wins over ``data_dir``'s file. With ``valid_fraction`` the
    validation split is the last lines of the training file instead of a file of its own."""
    import datasets

    files = text_paths(train_path, valid_path, test_path, data_dir, valid_fraction)
    loaded = read_lines(files, encoding, errors, cache_dir)
    if valid_fraction is None:
        return loaded
    parts = _cut(
        loaded["train"],
        {"validation": _fraction(FRACTION["validation"], valid_fraction)},
        f"dataset.train_path '{files['train'][1]}'",
    )
    return datasets.DatasetDict(
        train=parts["train"], validation=parts["validation"], test=loaded["test"]
    )


def single_file_paths(path: str | None = None, **cutting) -> dict[str, tuple[str, str]]:
    """``{"train": ("path", path)}``: the one file :func:`single_file` reads and cuts."""
    if not path:
        raise UserError(
            "dataset.path is not set: pass dataset.path=PATH to the text file to cut into "
            "train/validation/test (dataset=shakespeare: tiny Shakespeare's input.txt)"
        )
    return {"train": ("path", path)}


def single_file(
    path: str | None = None,
    valid_fraction: float = 0.05,
    test_fraction: float = 0.05,
    encoding: str = "utf-8",
    errors: str = "strict",
    cache_dir: str | None = None,
) -> datasets.DatasetDict:
    """One text file cut into contiguous train / validation / test lines (tiny Shakespeare),
    as in the usual char-rnn setup."""
    import datasets

    files = single_file_paths(path)
    given = {"validation": valid_fraction, "test": test_fraction}
    fractions = {split: _fraction(FRACTION[split], f) for split, f in given.items()}
    text = read_lines(files, encoding, errors, cache_dir)["train"]
    return datasets.DatasetDict(_cut(text, fractions, f"dataset.path '{path}'"))


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
    import datasets

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
        split = split.select_columns([text_column])
        out[ours] = split if text_column == "text" else split.rename_column(text_column, "text")
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
#: the local-text sources: the files each reads, from the same options, without reading them
SOURCE_FILES = {"text": text_paths, "single_file": single_file_paths}
#: the sources whose rows carry per-token columns (oracle NLL, annotations) beside ``text``
ANNOTATED_SOURCES = ("synthetic",)


def _checked(source: str, options: dict):
    """The source named ``source``, once ``options`` are known to be its options."""
    if source not in SOURCES:
        raise UserError(f"unknown dataset.source '{source}'; choose one of {sorted(SOURCES)}")
    loader = SOURCES[source]
    accepted = set(inspect.signature(loader).parameters) - {"cache_dir"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise UserError(
            f"dataset.source={source} does not take {unknown}; it takes {sorted(accepted)}"
        )
    return loader


def load_corpus(source: str, options: dict, cache_dir: str | None) -> datasets.DatasetDict:
    """Call the source named ``source`` with ``options``, turning a bad option into a UserError."""
    return _checked(source, options)(**options, cache_dir=cache_dir)


def source_files(source: str, options: dict) -> dict[str, str] | None:
    """``{split: resolved path}`` of the files a local-text source reads (checked to exist);
    None for a source that is not local text (the hub, the generated corpus)."""
    _checked(source, options)
    if source not in SOURCE_FILES:
        return None
    files = SOURCE_FILES[source](**options)
    return {split: _existing_file(option, path) for split, (option, path) in files.items()}
