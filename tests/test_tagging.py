"""Sequence labeling: the CLI on CoNLL-style files and on the CoNLL-2003 hub schema (local json),
right context for a bidirectional tagger only, bad input, and an LM's encoder as pretraining."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder
from lm_experiments.models.heads import SequenceTagger
from lm_experiments.tasks.tagging import entities
from lm_experiments.train import build, train
from tests.conftest import FAST, compose_config, run_cli
from tests.labelled_data import NOUNS, file_overrides, sentences, write_tags

SMALL = [
    "model.embedding_dim=16",
    "model.hidden_dim=16",
    "trainer.max_epochs=6",
    "model.optimizer.lr=0.02",
    "dataset.batch_size=16",
    "seed=0",
]


def noun_phrase(s: list[str], i: int) -> str:
    """IOB: a determiner before a noun opens an entity the noun continues."""
    if s[i] in ("the", "a") and i + 1 < len(s) and s[i + 1] in NOUNS:
        return "B-NP"
    if s[i] in NOUNS:
        return "I-NP" if i > 0 and s[i - 1] in ("the", "a") else "B-NP"
    return "O"


def test_the_cli_tags_with_token_accuracy_per_tag_and_entity_f1(tmp_path, cache_dir):
    files = write_tags(tmp_path, noun_phrase)
    run = tmp_path / "run"
    args = ["task=tag", "model=lstm", *file_overrides("tags", files), *SMALL, "logger=csv"]
    args += [f"paths.output_dir={run}", f"paths.cache_dir={cache_dir}", "print_config=false"]
    done = run_cli([*args, "trainer.enable_progress_bar=false"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > metrics["test/majority_acc"] + 0.2  # a clear margin
    for key in ("test/f1", "test/entity_f1", "test/tag_f1/B-NP", "test/tag_f1/I-NP", "val/acc"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/entity_f1"] > 0.8


def test_entities_are_iob_spans_of_one_type():
    assert entities(["B-PER", "I-PER", "O", "I-LOC", "B-LOC", "I-PER"]) == {
        (0, 2, "PER"),
        (3, 4, "LOC"),
        (4, 5, "LOC"),
        (5, 6, "PER"),
    }


def hub_rows(n: int, seed: int, mismatch: bool = False) -> list[dict]:
    rows = []
    for s in sentences(n, seed):
        tags = [int(w in NOUNS) for w in s]
        rows.append({"tokens": s, "pos_tags": tags, "ner_tags": tags[:-1] if mismatch else tags})
    return rows


def write_hub(root, mismatch=False) -> list[str]:
    files = {}
    for seed, split in enumerate(("train", "validation", "test")):
        path = root / f"{split}.json"
        rows = hub_rows(150, seed, mismatch and split == "validation")
        path.write_text("\n".join(json.dumps(r) for r in rows))
        files[split] = path
    return [f"+dataset.data_files.{k}={v}" for k, v in files.items()]


def test_conll2003_schema_through_datasets_and_a_tag_count_mismatch(tmp_path, cache_dir):
    args = ["task=tag", "model=lstm", "dataset=conll2003", *write_hub(tmp_path), *SMALL, *FAST]
    metrics = train(compose_config(args, tmp_path / "ok", cache_dir))
    assert metrics["test/acc"] > metrics["test/majority_acc"]
    bad = tmp_path / "bad"
    bad.mkdir()
    args = ["task=tag", "dataset=conll2003", *write_hub(bad, mismatch=True)]
    done = run_cli([*args, f"paths.output_dir={bad}/r", f"paths.cache_dir={cache_dir}"], bad)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-1500:]
    assert "tokens but" in errors[0] and "Traceback" not in done.stderr


def fit(tagger: nn.Module, steps: int = 200) -> float:
    """The tag of each token is decided by the *next* token."""

    def tags(t):
        return torch.cat([t[:, 1:], torch.zeros_like(t[:, :1])], dim=1) % 3

    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(tagger.parameters(), lr=0.02)
    lengths = torch.full((16,), 10)
    for _ in range(steps):
        t = torch.randint(0, 12, (16, 10), generator=g)
        loss = nn.functional.cross_entropy(tagger(t, lengths).flatten(0, 1), tags(t).flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    t = torch.randint(0, 12, (128, 10), generator=g)
    with torch.no_grad():
        return (tagger(t, torch.full((128,), 10)).argmax(-1) == tags(t)).float().mean().item()


def test_a_bidirectional_tagger_uses_right_context_and_a_forward_one_cannot():
    torch.manual_seed(0)
    forward = fit(SequenceTagger(RecurrentEncoder(12, 8, 16, cell="gru"), 3))
    torch.manual_seed(0)
    both = fit(SequenceTagger(RecurrentEncoder(12, 8, 16, cell="gru", bidirectional=True), 3))
    assert both > 0.9 > forward + 0.3, (both, forward)


def lm_checkpoint(tmp_path, cache_dir, files) -> str:
    text = {}
    for split in ("train", "valid", "test"):  # the labelled sentences as unlabelled text
        blocks = files[split].read_text().strip().split("\n\n")
        text[split] = tmp_path / f"{split}.txt"
        text[split].write_text(
            "\n".join(" ".join(line.split("\t")[0] for line in b.splitlines()) for b in blocks)
        )
    args = [
        "dataset=text",
        *[
            f"dataset.{k}_path={v}"
            for k, v in (("train", text["train"]), ("valid", text["valid"]), ("test", text["test"]))
        ],
    ]
    cfg = compose_config([*args, "model=lstm", *SMALL, *FAST], tmp_path / "lm", cache_dir)
    return train(cfg)["best_checkpoint"]


def test_an_lm_encoder_loads_into_a_tagger_and_a_frozen_one_stays_fixed(tmp_path, cache_dir):
    files = write_tags(tmp_path, noun_phrase, sizes=(60, 20, 20))
    ckpt = lm_checkpoint(tmp_path, cache_dir, files)
    tag = ["task=tag", "model=lstm", *file_overrides("tags", files), *SMALL, *FAST]
    tag += [f"task.encoder_ckpt={ckpt}", "task.bidirectional=false"]
    _, tagger = build(compose_config(tag, tmp_path / "tag", cache_dir))
    lm_cfg = compose_config(["model=lstm", *SMALL, *FAST], tmp_path / "x", cache_dir)
    from lm_experiments.train import build_net

    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert tagger.vocab.itos == saved["vocabulary"]  # the vocabulary came from the LM
    net = build_net(lm_cfg.model, len(saved["vocabulary"]))
    net.load_state_dict({k[4:]: v for k, v in saved["state_dict"].items() if k[:4] == "net."})
    tokens = torch.randint(2, len(tagger.vocab), (3, 7))
    net.eval(), tagger.eval()
    with torch.no_grad():
        h_lm, _ = net.encoder(tokens)
        h_tag, _ = tagger.encoder(tokens)
    assert torch.allclose(h_lm, h_tag)
    frozen = compose_config([*tag, "task.freeze_encoder=true"], tmp_path / "frozen", cache_dir)
    _, model = build(frozen)
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head = model.model.head.weight.clone()
    from lm_experiments.train import train as run

    run(frozen)
    # train() builds its own model; check the frozen one in the saved best checkpoint instead
    best = torch.load(
        next((tmp_path / "frozen" / "checkpoints").glob("epoch_*.ckpt")),
        map_location="cpu",
        weights_only=True,
    )["state_dict"]
    for k, v in before.items():
        assert torch.equal(best[f"model.encoder.{k}"], v), k
    assert not torch.equal(best["model.head.weight"], head)  # ... while the head trained


SYNTHETIC = [
    "dataset=synthetic",
    "dataset.train_tokens=5000",
    "dataset.valid_tokens=1200",
    "dataset.test_tokens=1200",
]


def test_a_tagger_beats_the_majority_class_on_the_grammars_word_classes(tmp_path, cache_dir):
    args = ["task=tag", "model=lstm", *SYNTHETIC, *SMALL, "trainer.max_epochs=3", *FAST]
    metrics = train(compose_config(args, tmp_path, cache_dir))
    assert metrics["test/majority_acc"] < 0.35  # many classes, none dominant
    assert metrics["test/acc"] > metrics["test/majority_acc"] + 0.4, metrics
    assert metrics["test/tag_f1/det"] > 0.9 and "test/tag_f1/eos" not in metrics
    from lm_experiments.compare.scores import read_scores, scores_path

    scores = read_scores(scores_path(tmp_path, "test"))  # one row a sentence: its right tags
    assert (scores["labels"] == scores["tokens"]).all() and (
        scores["correct"] <= scores["labels"]
    ).all()
    assert scores["correct"].sum() / scores["labels"].sum() == pytest.approx(metrics["test/acc"])


def test_the_synthetic_tags_are_the_grammars_and_repeat(tmp_path, cache_dir):
    from lm_experiments.data.synthetic import TAGS, annotate, default_grammar

    cfg = compose_config(["task=tag", "model=lstm", *SYNTHETIC, *FAST], tmp_path, cache_dir)
    data, tagger = build(cfg)
    again, _ = build(compose_config(["task=tag", *SYNTHETIC, *FAST], tmp_path / "b", cache_dir))
    assert data.examples == again.examples and tagger.labels == list(TAGS[:-1])
    grammar = default_grammar()
    for words, tags in data.examples["test"][:50]:
        assert [TAGS[t] for t in annotate(grammar, words).tag[:-1]] == tags  # no <eos> tag
        assert tags[-1] == "punct" and (words[0] != "the" or tags[0] == "det")
    assert data.vocab.itos == data.corpus.vocab.itos  # the LM's: a pretrained encoder fits


def window_tagger(right: int) -> SequenceTagger:
    from lm_experiments.models.encoders import WindowProjection
    from lm_experiments.models.window_encoder import WindowEncoder

    encoder = WindowEncoder(WindowProjection(12, 3, 8), nn.Linear(24, 32), 0.0, right)
    return SequenceTagger(encoder, 3)


def test_a_window_tagger_sees_the_next_word_only_with_a_window_around_the_token():
    torch.manual_seed(0)
    around = fit(window_tagger(right=1))
    torch.manual_seed(0)
    causal = fit(window_tagger(right=0))  # the LM's own window: ends at the token
    assert around > 0.9 > causal + 0.3, (around, causal)
    tokens, lengths = torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([3, 2])
    windows = window_tagger(right=1).encoder.windows(tokens, lengths)
    assert windows[0].tolist() == [[1, 5, 6], [5, 6, 7], [6, 7, 1]]  # <eos> past either end
    assert windows[1].tolist()[1] == [8, 9, 1]  # ... never the padding


def test_the_nnlm_window_tagger_takes_the_lms_layers_and_beats_the_majority(tmp_path, cache_dir):
    nnlm = ["model=nnlm", "model.window=3", "model.embedding_dim=16", "model.hidden_dim=32"]
    nnlm += ["model.optimizer.lr=0.01", "dataset.batch_size=16", "seed=0", *SYNTHETIC, *FAST]
    lm = train(compose_config([*nnlm, "trainer.max_epochs=1"], tmp_path / "lm", cache_dir))
    tag = ["task=tag", *nnlm, "trainer.max_epochs=3", f"task.encoder_ckpt={lm['best_checkpoint']}"]
    _, causal = build(compose_config([*tag, "task.bidirectional=false"], tmp_path / "c", cache_dir))
    saved = torch.load(lm["best_checkpoint"], map_location="cpu", weights_only=True)
    from lm_experiments.train import build_net

    net = build_net(compose_config(nnlm, tmp_path / "x", cache_dir).model, len(causal.vocab))
    net.load_state_dict({k[4:]: v for k, v in saved["state_dict"].items() if k[:4] == "net."})
    tokens = torch.randint(2, len(causal.vocab), (3, 7))
    net.eval(), causal.eval()
    with torch.no_grad():  # the LM's hidden layer on the same windows (<eos> before the start)
        _, h_lm, _ = net._projection_and_hidden(tokens, net.init_state(3))
        h_tag = causal.encoder(tokens, torch.full((3,), 7))
    assert torch.allclose(h_lm, h_tag)
    metrics = train(compose_config(tag, tmp_path / "tag", cache_dir))  # a window around each
    assert metrics["test/acc"] > metrics["test/majority_acc"] + 0.4, metrics
    args = ["task=classify", *nnlm, f"paths.output_dir={tmp_path}/r"]
    with pytest.raises(UserError, match="tags"):
        build(compose_config(args, tmp_path / "cls", cache_dir))
