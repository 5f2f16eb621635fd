"""Real-world text files: encodings, line ends and odd whitespace; where the files come from
(three paths, a folder, validation carved from the training file); the mini corpora and the hub
schemas; and what a user sees when the files are missing or undecodable."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import open_dict

from lm_experiments.data import EOS_ID, UNK_ID, LMDataModule
from lm_experiments.errors import UserError
from lm_experiments.utils import instantiate
from tests.conftest import ROOT, compose_config, run_cli, scored_tokens, shared_path

LATIN1 = "ok then\nthe caf\xe9 is open\n".encode("latin-1")  # line 2: 0xe9 is not UTF-8


def files_module(tmp_path, cache_dir, train: bytes, valid=b"a b\n", test=b"a b\n", **options):
    tmp_path.mkdir(parents=True, exist_ok=True)
    for name, content in (("train", train), ("valid", valid), ("test", test)):
        (tmp_path / f"{name}.txt").write_bytes(content)
        options[f"{name}_path"] = str(tmp_path / f"{name}.txt")
    return LMDataModule(name="t", source="text", cache_dir=str(cache_dir), **options)


def words(dm, split="train") -> list[str]:
    return dm.vocab.decode(dm.streams[split].tolist())


# --- encodings ---------------------------------------------------------------------------------
def test_undecodable_bytes_name_the_file_the_line_and_the_fix(tmp_path, cache_dir):
    dm = files_module(tmp_path, cache_dir, LATIN1)
    with pytest.raises(UserError) as err:
        dm.vocab  # noqa: B018
    message = str(err.value)
    assert "dataset.train_path" in message and str(tmp_path / "train.txt") in message
    assert "line 2" in message and "e9" in message
    assert "dataset.encoding=" in message and "dataset.errors=replace" in message
    assert "\n" not in message


def test_the_encoding_is_chosen_or_bad_bytes_replaced(tmp_path, cache_dir):
    latin = files_module(tmp_path / "latin", cache_dir, LATIN1, encoding="latin-1")
    assert words(latin)[3:6] == ["the", "café", "is"]
    replaced = files_module(tmp_path / "replace", cache_dir, LATIN1, errors="replace")
    assert words(replaced)[3:6] == ["the", "caf\ufffd", "is"]
    text = "x café\n".encode("utf-16")
    utf16 = files_module(tmp_path / "utf16", cache_dir, text, text, text, encoding="utf-16")
    assert words(utf16) == ["x", "café", "<eos>"]  # its byte-order mark read by the codec


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"encoding": "klingon"}, "dataset.encoding: unknown encoding 'klingon'"),
        ({"errors": "sometimes"}, r"dataset.errors must be one of \['strict', 'replace'"),
    ],
)
def test_bad_reading_options_are_refused(tmp_path, cache_dir, options, message):
    with pytest.raises(UserError, match=message):
        files_module(tmp_path, cache_dir, b"a\n", **options).vocab  # noqa: B018


def test_a_utf8_byte_order_mark_is_dropped(tmp_path, cache_dir):
    plain = files_module(tmp_path / "plain", cache_dir, b"a b\nb\n")
    marked = files_module(
        tmp_path / "bom", cache_dir, b"\xef\xbb\xbfa b\nb\n", valid=b"\xef\xbb\xbfa\n"
    )
    assert marked.vocab == plain.vocab and "\ufeffa" not in marked.vocab.itos
    assert words(marked) == ["a", "b", "<eos>", "b", "<eos>"]
    assert words(marked, "validation") == ["a", "<eos>"]


@pytest.mark.parametrize("tokenizer", ["word", "char"])
def test_crlf_and_cr_line_ends_read_as_lf(tmp_path, cache_dir, tokenizer):
    lf = files_module(tmp_path / "lf", cache_dir, b"a b\n\nc d\n", tokenizer=tokenizer)
    for name, text in (("crlf", b"a b\r\n\r\nc d\r\n"), ("cr", b"a b\r\rc d\r")):
        other = files_module(tmp_path / name, cache_dir, text, tokenizer=tokenizer)
        assert other.vocab == lf.vocab and "\r" not in other.vocab.itos
        assert other.streams["train"].tolist() == lf.streams["train"].tolist()


def test_tabs_and_non_breaking_spaces_separate_words_and_are_characters(tmp_path, cache_dir):
    text = "a\tb\u00a0c \u202fd\u3000\t\n\u00a0\t\n".encode()  # the last line: whitespace only
    dm = files_module(tmp_path / "word", cache_dir, text)
    assert words(dm) == ["a", "b", "c", "d", "<eos>"]  # whitespace-only line: no sentence
    chars = files_module(tmp_path / "char", cache_dir, text, tokenizer="char")
    assert words(chars)[:5] == ["a", "\t", "b", "\u00a0", "c"]
    assert words(chars)[-4:] == ["<eos>", "\u00a0", "\t", "<eos>"]  # a line of its own


# --- where the files come from -----------------------------------------------------------------
def lines(n: int, tag: str) -> list[str]:
    return [f"{tag} w{i}" for i in range(n)]


def test_valid_fraction_carves_validation_from_the_end_of_the_training_file(tmp_path, cache_dir):
    train = tmp_path / "train.txt"
    train.write_text("\n".join(lines(40, "t")) + "\n")
    (tmp_path / "test.txt").write_text("x y\n")
    dm = LMDataModule(
        name="t",
        source="text",
        train_path=str(train),
        test_path=str(tmp_path / "test.txt"),
        valid_fraction=0.1,
        cache_dir=str(cache_dir),
    )
    assert dm.corpus["train"]["text"] == lines(40, "t")[:36]  # the first 90% of the lines
    assert dm.corpus["validation"]["text"] == lines(40, "t")[36:]  # the last 10%
    # the vocabulary comes from the first 36 lines only: w36..w39 are unknown in validation
    assert "w36" not in dm.vocab.itos
    assert dm.streams["validation"].tolist() == [dm.vocab.stoi["t"], UNK_ID, EOS_ID] * 4


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"valid_fraction": 1.5}, "dataset.valid_fraction must be a fraction between 0 and 1"),
        ({"valid_fraction": 0.1, "valid_path": "v.txt"}, "are both set"),
        ({"valid_fraction": 0.01}, "too few to cut into train/validation"),
        ({}, "dataset.valid_path is not set: .* or dataset.valid_fraction=0.1"),
    ],
)
def test_bad_validation_choices_are_refused(tmp_path, cache_dir, options, message):
    (tmp_path / "train.txt").write_text("a\nb\n")
    dm = LMDataModule(
        name="t",
        source="text",
        train_path=str(tmp_path / "train.txt"),
        test_path=str(tmp_path / "train.txt"),
        cache_dir=str(cache_dir),
        **options,
    )
    with pytest.raises(UserError, match=message):
        dm.vocab  # noqa: B018


@pytest.mark.parametrize(
    "names",
    [
        ("train.txt", "valid.txt", "test.txt"),
        ("wiki.train.tokens", "wiki.valid.tokens", "wiki.test.tokens"),
    ],
)
def test_data_dir_finds_the_three_files(tmp_path, cache_dir, names):
    for name, tag in zip(names, ("train", "valid", "test"), strict=True):
        (tmp_path / name).write_text(f"{tag} a\n")
    dm = LMDataModule(name="d", source="text", data_dir=str(tmp_path), cache_dir=str(cache_dir))
    assert [dm.corpus[s]["text"] for s in ("train", "validation", "test")] == [
        ["train a"],
        ["valid a"],
        ["test a"],
    ]


def test_data_dir_with_a_path_override_and_a_carved_validation(tmp_path, cache_dir):
    (tmp_path / "train.txt").write_text("\n".join(lines(10, "t")) + "\n")
    (tmp_path / "test.txt").write_text("dir test\n")
    (tmp_path / "other.txt").write_text("other test\n")
    dm = LMDataModule(
        name="d",
        source="text",
        data_dir=str(tmp_path),
        test_path=str(tmp_path / "other.txt"),  # an explicit path wins over data_dir's file
        valid_fraction=0.2,  # no valid.txt needed
        cache_dir=str(cache_dir),
    )
    assert dm.corpus["test"]["text"] == ["other test"]
    assert dm.corpus["validation"]["text"] == lines(10, "t")[8:]
    (tmp_path / "test.txt").unlink()
    dm = LMDataModule(name="d", source="text", data_dir=str(tmp_path), valid_fraction=0.2)
    with pytest.raises(UserError, match="has no test.txt or wiki.test.tokens"):
        dm.vocab  # noqa: B018
    dm = LMDataModule(name="d", source="text", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="dataset.data_dir: no such folder"):
        dm.vocab  # noqa: B018


# --- the mini corpora and the hub configs ------------------------------------------------------
@pytest.mark.parametrize(("config", "folder"), [("ptb_mini", "ptb"), ("wt2_mini", "wikitext-2")])
def test_mini_corpora_train_on_90_percent_of_valid_and_test_on_test(
    tmp_path, cache_dir, config, folder
):
    valid, test = shared_path("data", folder, "valid.txt"), shared_path("data", folder, "test.txt")
    cfg = compose_config([f"dataset={config}"], tmp_path, cache_dir)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)  # the config's paths are relative to the repository
    dm = instantiate(cfg.dataset)
    valid_lines = valid.read_text().split("\n")[:-1]
    n_train = len(valid_lines) - len(valid_lines) // 10
    assert dm.corpus["train"]["text"] == valid_lines[:n_train]
    assert dm.corpus["validation"]["text"] == valid_lines[n_train:]
    assert dm.num_tokens("test") == scored_tokens(test)  # words + one <eos> a non-empty line
    assert dm.num_tokens("test") == {"ptb": 82_430, "wikitext-2": 244_102}[folder]  # the README's


def write_hub_folder(folder, column: str, rows: dict[str, list[str]]) -> str:
    folder.mkdir()
    for split, text in rows.items():
        pq.write_table(pa.table({column: text}), folder / f"{split}.parquet")
    return str(folder)


@pytest.mark.parametrize("config", ["wikitext2", "wikitext103", "ptb"])
def test_hub_configs_read_their_schema(tmp_path, cache_dir, config):
    """Each hub config, composed by Hydra, on a local folder of its hub schema (no download):
    WikiText rows end in " \\n" and include empty rows and headings; PTB's column is sentence."""
    column = "sentence" if config == "ptb" else "text"
    rows = {
        "train": ["", " = Title = \n", " the cat @-@ like <unk> \n", ""],
        "validation": [" the cat \n"],
        "test": ["", " a cat sat \n"],
    }
    folder = write_hub_folder(tmp_path / config, column, rows)
    overrides = [f"dataset={config}", f"dataset.hub_id={folder}", "dataset.hub_name=null"]
    if config == "ptb":
        overrides.append("dataset.revision=null")
    dm = instantiate(compose_config(overrides, tmp_path, cache_dir).dataset)
    assert dm.vocab.itos[2:] == ["=", "Title", "the", "cat", "@-@", "like"]
    assert words(dm) == ["=", "Title", "=", "<eos>", "the", "cat", "@-@", "like", "<unk>", "<eos>"]
    assert words(dm, "test") == ["<unk>", "cat", "<unk>", "<eos>"]


# --- what the user sees ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["dataset=text"], "dataset=text needs its files: pass dataset.data_dir=DIR"),
        (["dataset=shakespeare"], "dataset.path is not set"),
        (["dataset=text", "dataset.data_dir=latin1"], "is not valid utf-8 at line 2"),
    ],
)
def test_the_cli_says_one_line_for_missing_and_undecodable_files(tmp_path, args, expected):
    (tmp_path / "latin1").mkdir()
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / "latin1" / name).write_bytes(LATIN1)
    result = run_cli([*args, "logger=none", "callbacks=none", "print_config=false"], tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(errors) == 1 and expected in errors[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert "MissingMandatoryValue" not in result.stderr + result.stdout


def test_labelled_files_are_checked_and_decoded_by_the_corpora_reader(tmp_path):
    """Classification and tagging files go through the LM corpora's one reader: a missing or
    undecodable file is one line naming the option (and the line), a byte-order mark is dropped."""
    from lm_experiments.data.labelled import read_labelled, read_tagged

    with pytest.raises(UserError, match="dataset.test_path: no such file"):
        read_tagged(str(tmp_path / "missing.conll"), "test_path")
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"pos\tgood film\n" + "neg\tle caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match=r"dataset.valid_path: .* not valid utf-8 at line 2"):
        read_labelled(str(bad), "valid_path")
    marked = tmp_path / "bom.tsv"
    marked.write_bytes("\ufeffpos\tgood film\r\nneg\tbad\r\n".encode())
    assert read_labelled(str(marked)) == [(["good", "film"], "pos"), (["bad"], "neg")]
