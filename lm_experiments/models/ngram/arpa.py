"""ARPA files, the n-gram exchange format of KenLM and SRILM: write a model (``export_arpa``),
read one over this project's vocabulary (``load_arpa``), exactly in both directions."""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from lm_experiments.data.vocab import EOS_ID, UNK_ID
from lm_experiments.errors import UserError
from lm_experiments.models.ngram.counting import group_keys
from lm_experiments.models.ngram.tables import NONE, NGramModel, log10

log = logging.getLogger(__name__)

ARPA_ZERO = -99.0  # how ARPA files write log10(0); read back as -inf


def _itos(vocab) -> list[str]:
    return list(vocab.itos if hasattr(vocab, "itos") else vocab)


def _arpa_numbers(values: np.ndarray) -> pa.Array:
    """Shortest strings that read back as the same float (float64, or float32 as stored; log10 0
    as -99), formatted by Arrow in C++ rather than one ``repr`` per value."""
    return pc.cast(pa.array(np.where(np.isneginf(values), ARPA_ZERO, values)), pa.string())


def _rows_tokens(model: NGramModel, n: int, rows: np.ndarray) -> list[np.ndarray]:
    """The n token ids of each n-gram ``rows`` of order n (first word first), from the keys:
    only this chunk's rows, never the [size, n] matrix of the whole order."""
    columns = []
    for m in range(n, 1, -1):
        below = model.size(m - 1)
        key = model.keys[m][rows]
        columns.append(key // below)
        rows = key % below  # the suffix: its index in order m - 1
    return [*columns, rows]


def export_arpa(model, path, vocab=None, chunk: int = 1 << 20) -> Path:
    """Write ``model`` (an :class:`NGramModel` or a task wrapping an ``NGramNet``) as an ARPA file (gzipped
    when ``path`` ends in ``.gz``) that KenLM, SRILM and :func:`load_arpa` read.

    ``<eos>`` is written ``</s>``, the context id ``<s>`` (log10 p = 0, as lmplz writes it);
    a probability 0 (``mle``) is -99. Streamed: ``chunk`` n-grams at a time, each chunk's lines
    built and written by Arrow (tab-separated, as KenLM writes them).
    """
    if not isinstance(model, NGramModel):  # the task: its vocabulary and its net's tables
        vocab = vocab if vocab is not None else model.vocab
        model = model.net.model()
    if vocab is None:
        raise UserError("export_arpa needs the vocabulary (the model's ids have no words)")
    itos = [*_itos(vocab), "<s>"]
    if len(itos) != model.vocab_size + 1:
        raise UserError(f"vocabulary of {len(itos) - 1} words for a model of {model.vocab_size}")
    itos[EOS_ID], itos[UNK_ID] = "</s>", "<unk>"
    names = pa.array(itos, pa.string())
    N, path = model.order, Path(path)
    options = pacsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    sink = pa.CompressedOutputStream(str(path), "gzip") if path.suffix == ".gz" else None
    with sink or pa.OSFile(str(path), "wb") as f:
        counts = "".join(f"ngram {n}={model.size(n)}\n" for n in range(1, N + 1))
        f.write(f"\\data\\\n{counts}".encode())
        for n in range(1, N + 1):
            f.write(f"\n\\{n}-grams:\n".encode())
            for start in range(0, model.size(n), chunk):
                rows = np.arange(start, min(start + chunk, model.size(n)))
                words = [pc.take(names, column) for column in _rows_tokens(model, n, rows)]
                columns = {"p": _arpa_numbers(model.logprob[n][rows])}
                columns["w"] = words[0] if n == 1 else pc.binary_join_element_wise(*words, " ")
                if n < N:
                    columns["b"] = _arpa_numbers(model.backoff[n][rows])
                pacsv.write_csv(pa.table(columns), f, options)
        f.write(b"\n\\end\\\n")
    return path


def _sections(path) -> dict[int, bytes]:
    """The text of each ``\\n-grams:`` section of an ARPA file (plain or gzipped)."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    data = data.split(b"\n\\end\\", 1)[0]
    heads = list(re.finditer(rb"^\\(\d+)-grams:[ \t\r]*$", data, re.M))
    ends = [h.start() for h in heads[1:]] + [len(data)]
    return {int(h.group(1)): data[h.end() + 1 : end] for h, end in zip(heads, ends, strict=True)}


def _parse_fast(n: int, text: bytes) -> tuple[np.ndarray, pa.Array, np.ndarray] | None:
    """Arrow's CSV engine on a section of tab-separated lines, every line with a backoff or none
    (what KenLM writes); None when the section is not that regular."""
    first = text.lstrip(b"\r\n").split(b"\n", 1)[0]
    names = ["p", "w", "b"][: first.count(b"\t") + 1]
    if len(names) < 2:
        return None
    try:
        table = pacsv.read_csv(
            pa.py_buffer(text),
            read_options=pacsv.ReadOptions(column_names=names),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={"p": pa.float64(), "w": pa.string(), "b": pa.float64()}
            ),
        )
    except (pa.ArrowInvalid, ValueError):
        return None
    words = pc.split_pattern(pc.utf8_trim_whitespace(table["w"].combine_chunks()), " ")
    if (
        pc.min(pc.list_value_length(words)).as_py() != n
        or pc.max(pc.list_value_length(words)).as_py() != n
    ):
        return None
    prob = table["p"].to_numpy()
    backoff = table["b"].to_numpy() if "b" in names else np.zeros(len(prob))
    return prob, pc.list_flatten(words), backoff


def _parse_lines(n: int, text: bytes, path) -> tuple[np.ndarray, pa.Array, np.ndarray]:
    """Any whitespace, some lines with a backoff and some without (SRILM omits zeros)."""
    split = [line.split() for line in text.decode("utf-8").splitlines() if line.strip()]
    if any(len(r) not in (n + 1, n + 2) for r in split):
        bad = next(r for r in split if len(r) not in (n + 1, n + 2))
        raise UserError(f"'{path}': malformed {n}-gram line: {' '.join(bad)}")
    prob = np.array([r[0] for r in split], dtype=np.float64)
    words = pa.array([w for r in split for w in r[1 : n + 1]], pa.string())
    backoff = np.array([r[n + 1] if len(r) > n + 1 else "0" for r in split], dtype=np.float64)
    return prob, words, backoff


def _read_arpa(path) -> dict[int, tuple[np.ndarray, pa.Array, np.ndarray]]:
    """Per order n: log10 probabilities [M], the M * n words, backoffs [M] (0 where absent)."""
    sections = _sections(path)
    if 1 not in sections:
        raise UserError(f"'{path}' is not an ARPA file (no \\1-grams: section)")
    return {n: _parse_fast(n, s) or _parse_lines(n, s, path) for n, s in sections.items()}


def _ids(words: pa.Array, ids: dict[str, int]) -> np.ndarray:
    """The id of each word (NONE where ``ids`` lacks it), by one hash lookup in C++."""
    at = pc.index_in(words, value_set=pa.array(list(ids), pa.string()))
    at = at.fill_null(-1).to_numpy(zero_copy_only=False)
    return np.where(at >= 0, np.array(list(ids.values()), dtype=np.int64)[at], NONE)


def _row_codes(rows: np.ndarray) -> np.ndarray:
    """Equal codes for equal rows of a non-negative int matrix [M, n] (hierarchical grouping)."""
    code = rows[:, -1].copy()
    for j in range(rows.shape[1] - 2, -1, -1):
        code = group_keys(rows[:, j] * (code.max() + 1) + code)[2]
    return code


def _from_ngrams(grams: list, vocab_size: int, unknown_logprob: float) -> NGramModel:
    """Tables from explicit n-grams: ``grams[n] = (tokens [M, n], logprob [M], backoff [M])``
    (ids ``0..vocab_size-1``, ``<s>`` = vocab_size). An n-gram whose suffix the list lacks
    (pruned files) gets that suffix inserted with the probability the back-off gives it, as
    KenLM does, so that every suffix of an n-gram is in the model."""
    N, V, bos = len(grams) - 1, vocab_size, vocab_size
    tokens = [None]
    for n in range(1, N + 1):
        tokens.append(np.asarray(grams[n][0], dtype=np.int64).reshape(-1, n))
    lp = [None] + [np.asarray(g[1], dtype=np.float64) for g in grams[1:]]
    bo = [None] + [np.asarray(g[2], dtype=np.float64) for g in grams[1:]]
    # top-down: every n-gram's suffix must be an (n-1)-gram; find its row (or add one)
    suffix_row: list = [None] * (N + 1)
    for n in range(N, 1, -1):
        suffixes = tokens[n][:, 1:]
        if n == 2:
            suffix_row[n] = suffixes[:, 0]  # order 1 is dense: the row is the id
            continue
        lower = tokens[n - 1]
        codes = _row_codes(np.concatenate([lower, suffixes]))
        lower_codes, suffix_codes = codes[: len(lower)], codes[len(lower) :]
        rows = np.full(len(suffixes), NONE, dtype=np.int64)
        present = np.zeros(len(suffixes), dtype=bool)
        if len(lower):
            order = np.argsort(lower_codes, kind="stable")
            at = np.minimum(np.searchsorted(lower_codes[order], suffix_codes), len(lower) - 1)
            present = lower_codes[order][at] == suffix_codes
            rows[present] = order[at][present]
        if not present.all():
            _, first_at, back, _ = group_keys(suffix_codes[~present])
            added = suffixes[~present][first_at]
            rows[~present] = len(lower) + back
            tokens[n - 1] = np.concatenate([lower, added])
            lp[n - 1] = np.concatenate([lp[n - 1], np.full(len(added), np.nan)])
            bo[n - 1] = np.concatenate([bo[n - 1], np.zeros(len(added))])
        suffix_row[n] = rows
    # bottom-up: keys
    logprob1 = np.full(V + 1, unknown_logprob)
    backoff1 = np.zeros(V + 1)
    logprob1[tokens[1][:, 0]], backoff1[tokens[1][:, 0]] = lp[1], bo[1]
    logprob1[bos] = 0.0  # never predicted
    keys, logprob, backoff = [None, None], [None, logprob1], [None, backoff1]
    entry = np.arange(V + 1)  # row -> index in the table below
    size = V + 1
    for n in range(2, N + 1):
        key = tokens[n][:, 0] * size + entry[suffix_row[n]]
        order = np.argsort(key, kind="stable")
        key = key[order]
        unique = np.ones(len(key), dtype=bool)
        unique[1:] = key[1:] != key[:-1]
        if not unique.all():
            log.warning("ARPA: %d duplicate %d-grams ignored", int((~unique).sum()), n)
        entry = np.empty(len(order), dtype=np.int64)
        entry[order] = np.cumsum(unique) - 1
        keys.append(key[unique])
        logprob.append(lp[n][order][unique])
        backoff.append(bo[n][order][unique])
        size = len(keys[n])
    backoff[N] = None
    model = NGramModel(N, V, keys, logprob, backoff, "arpa")
    # inserted n-grams: p(w | h) = backoff(h) * p(w | h'), in log10
    for n in range(2, N + 1):
        missing = np.flatnonzero(np.isnan(model.logprob[n]))
        if len(missing):
            h = model.prefix(n)[missing]
            weight = np.where(h >= 0, model.backoff[n - 1][np.maximum(h, 0)], 0.0)
            model.logprob[n][missing] = model.logprob[n - 1][model.suffix(n)[missing]] + weight
    return model


def load_arpa(path, vocab, order: int | None = None) -> NGramModel:
    """Read an ARPA file (plain or gzipped; from KenLM, SRILM, or :func:`export_arpa`) into a
    model over ``vocab``'s ids.

    ``</s>`` is ``<eos>``, ``<s>`` the start context. Words of the file outside ``vocab`` are
    what ``<unk>`` stands for in this project, so their probability goes to ``<unk>``, exactly, in
    every context: p(<unk> | h) = the file's sum over those words (and its own ``<unk>``); n-grams
    with such a word in their context are dropped (the project's text can never match them).
    Words of ``vocab`` that the file lacks are scored as KenLM scores them: with the file's
    ``<unk>`` probability (the distribution then sums to slightly more than 1; a warning says so).
    ``order`` keeps only the orders up to it.
    """
    itos = _itos(vocab)
    V = len(itos)
    stoi = {w: i for i, w in enumerate(itos)}
    stoi.pop(itos[EOS_ID], None)  # the vocabulary's <eos> is "</s>" in ARPA
    stoi.update({"</s>": EOS_ID, "<unk>": UNK_ID})
    sections = _read_arpa(path)
    N = max(sections) if order is None else min(order, max(sections))
    # ids: the vocabulary's, then the file's other words, then <s>
    extra: dict[str, int] = {}
    for word in sections[1][1].to_pylist():  # one per word type
        if word not in stoi and word != "<s>" and word not in extra:
            extra[word] = V + len(extra)
    E = V + len(extra)  # <s> of the extended vocabulary
    ids = {**stoi, **extra, "<s>": E}
    grams: list = [None]
    dropped = 0
    for n in range(1, N + 1):
        prob, words, bow = sections.get(n, (np.zeros(0), pa.array([], pa.string()), np.zeros(0)))
        tok = _ids(words, ids).reshape(-1, n)  # a word missing from the 1-grams: dropped below
        # well-formed: known words, <s> only first, </s> only last
        ok = (tok >= 0).all(1)
        if n > 1:
            ok &= (tok[:, 1:] != E).all(1) & (tok[:, :-1] != EOS_ID).all(1)
        dropped += int((~ok).sum())
        prob = np.where(prob <= ARPA_ZERO, -np.inf, prob)
        grams.append((tok[ok], prob[ok], bow[ok]))
    if dropped:
        log.warning("ARPA: %d malformed n-grams ignored", dropped)
    unknown = grams[1][1][grams[1][0][:, 0] == UNK_ID]
    unknown_logprob = float(unknown[0]) if len(unknown) else -np.inf
    listed = np.zeros(E + 1, dtype=bool)
    listed[grams[1][0][:, 0]] = True
    absent = int(V - listed[:V].sum())
    if absent:
        log.warning(
            "ARPA: %d words of the vocabulary are not in %s; they get its <unk> probability",
            absent,
            path,
        )
    model = _from_ngrams(grams, E, unknown_logprob)
    if extra:
        model = _fold_into_unknown(model, V)
    model.info.update({"arpa": str(path), "arpa_words_outside_vocab": len(extra)})
    model.smoothing = "arpa"
    return model


def _fold_into_unknown(model: NGramModel, V: int) -> NGramModel:
    """The same model over ids ``0..V-1`` only: every word with an id >= V (outside the
    vocabulary) merged into ``<unk>``, exactly.

    Let U(h) = sum of p(w | h) over the merged words (those and <unk> itself). With E(h), L(h)
    the sums of p(w | h) and p(w | h') over the merged words that h lists explicitly,
    U(h) = E(h) + backoff(h) * (U(h') - L(h)); U of the empty context is the unigram sum.
    Contexts that list a merged word get an explicit (h, <unk>) n-gram with log10 U(h); all
    others back off to U(h') as before.
    """
    N, E = model.order, model.vocab_size
    merged = np.zeros(E + 1, dtype=bool)
    merged[V:E] = True
    merged[UNK_ID] = True
    U = [None, np.array(float(np.sum(10.0 ** model.logprob[1][merged])))]  # U[n]: contexts of n
    explicit_unknown = [None]  # per order: contexts h (in order n - 1) that list a merged word
    for n in range(2, N + 1):
        last = model.last(n)
        lists = np.flatnonzero(merged[last])
        h = model.prefix(n)[lists]
        sizes = model.size(n - 1)
        E_h = np.bincount(h, weights=10.0 ** model.logprob[n][lists], minlength=sizes)
        L_h = np.bincount(
            h, weights=10.0 ** model.logprob[n - 1][model.suffix(n)[lists]], minlength=sizes
        )
        lower = U[n - 1] if n == 2 else U[n - 1][model.suffix(n - 1)]  # U(h') per h
        if n == 2:
            lower = np.full(sizes, U[1])
        U.append(E_h + 10.0 ** model.backoff[n - 1] * np.maximum(lower - L_h, 0.0))
        explicit_unknown.append(np.unique(h))
    # the reduced n-gram lists: nothing with a merged word other than <unk> itself
    bos_old = E
    grams: list = [None]
    for n in range(1, N + 1):
        tok = model.tokens(n)
        keep = ~((tok >= V) & (tok < E)).any(1)
        lp = model.logprob[n][keep].copy()
        bo = model.backoff[n][keep] if n < N else np.zeros(int(keep.sum()))
        tok = tok[keep]
        if n == 1:
            lp[tok[:, 0] == UNK_ID] = log10(U[1])
        else:
            h = explicit_unknown[n - 1]
            context = model.tokens(n - 1)[h]
            ok = ~((context >= V) & (context < E)).any(1)
            h, context = h[ok], context[ok]
            # (h, <unk>): where the file lists it, a new probability (its backoff stays); add it
            # where it does not
            prefix = model.prefix(n)[keep]
            listed = np.flatnonzero(tok[:, -1] == UNK_ID)
            listed = listed[np.isin(prefix[listed], h)]
            lp[listed] = log10(U[n][prefix[listed]])
            h, context = h[~np.isin(h, prefix[listed])], context[~np.isin(h, prefix[listed])]
            new = np.concatenate([context, np.full((len(h), 1), UNK_ID)], 1)
            tok = np.concatenate([tok, new])
            lp = np.concatenate([lp, log10(U[n][h])])
            bo = np.concatenate([bo, np.zeros(len(h))])
        tok = np.where(tok == bos_old, V, tok)
        grams.append((tok, lp, bo))
    unknown_logprob = float(grams[1][1][grams[1][0][:, 0] == UNK_ID][0])
    return _from_ngrams(grams, V, unknown_logprob)
