"""Sequence classification: the real CLI on local files, pooling that reads order, bad input,
and an LM's encoder carried into a classifier."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder
from lm_experiments.models.heads import SentenceClassifier
from lm_experiments.train import train
from tests.conftest import FAST, compose_config, run_cli
from tests.labelled_data import WORDS, file_overrides, write_labels

SMALL = ["model.embedding_dim=16", "model.hidden_dim=16", "trainer.max_epochs=4", "seed=0"]


def first_word_label(s: list[str]) -> str:
    return "pos" if s[0] in WORDS[::2] else "neg"


def test_the_cli_trains_a_classifier_selected_on_val_acc(tmp_path, cache_dir):
    files = write_labels(tmp_path, first_word_label)
    run = tmp_path / "run"
    args = ["task=classify", "model=lstm", *file_overrides("labels", files), *SMALL]
    args += [f"paths.output_dir={run}", f"paths.cache_dir={cache_dir}", "logger=csv"]
    args += ["trainer.enable_progress_bar=false", "print_config=false"]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test/acc", "test/f1", "test/majority_acc", "val/acc", "val/f1"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["test/acc"] > metrics["test/majority_acc"] + 0.2
    assert metrics["best_checkpoint"]  # chosen on val/acc (conf/task/classify.yaml: monitor)
    saved = torch.load(metrics["best_checkpoint"], map_location="cpu", weights_only=True)
    monitor = [v for k, v in saved["callbacks"].items() if "ModelCheckpoint" in k][0]
    assert monitor["monitor"] == "val/acc" and monitor["best_model_score"] == pytest.approx(
        max(metrics["val/acc"], float(monitor["best_model_score"]))
    )


@pytest.mark.parametrize(
    "model", ["model=rnnlm model.cell=rnn_tanh", "model=stacked_rnn model.cell=gru"]
)
@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
def test_every_recurrent_family_and_pooling_classifies(model, pooling, tmp_path, cache_dir):
    files = write_labels(tmp_path, first_word_label, sizes=(120, 30, 30))
    overrides = ["task=classify", *model.split(), *file_overrides("labels", files), *SMALL]
    cfg = compose_config([*overrides, f"task.pooling={pooling}", *FAST], tmp_path, cache_dir)
    metrics = train(cfg)
    assert metrics["test/acc"] >= metrics["test/majority_acc"]
    assert set(metrics) >= {"test/acc", "test/f1", "test/majority_acc", "val/acc"}


def test_a_label_line_with_no_tab_is_one_error_line(tmp_path, cache_dir):
    files = write_labels(tmp_path, first_word_label, sizes=(20, 5, 5))
    files["train"].write_text("pos\tthe cat\nneg the dog\n")
    args = ["task=classify", *file_overrides("labels", files), f"paths.output_dir={tmp_path}/r"]
    done = run_cli([*args, f"paths.cache_dir={cache_dir}"], tmp_path)
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train.tsv:2" in errors[0] and "label<TAB>text" in errors[0]
    assert "Traceback" not in done.stderr


def fit(model: nn.Module, label, steps: int = 250, length: int = 20) -> float:
    """Train on random long sentences of ids; the accuracy on new ones."""
    g = torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    lengths = torch.full((32,), length)
    for _ in range(steps):
        tokens = torch.randint(2, 12, (32, length), generator=g)
        loss = nn.functional.cross_entropy(model(tokens, lengths), label(tokens))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    tokens = torch.randint(2, 12, (256, length), generator=g)
    with torch.no_grad():
        return (
            (model(tokens, torch.full((256,), length)).argmax(-1) == label(tokens)).float().mean()
        )


def test_pooling_last_reads_the_first_word_of_a_long_sentence_and_bag_of_words_cannot_order():
    torch.manual_seed(0)

    def first(t):  # decided by the first of 20 words
        return t[:, 0] % 2

    encoder = RecurrentEncoder(12, 16, 32, cell="lstm", bidirectional=True)
    assert fit(SentenceClassifier(encoder, 2, "last"), first) > 0.95

    # a word order label: is the first half's sum larger than the second's? same bag, both ways
    def order(t):  # the same bag of words either way round
        return (t[:, :10].sum(1) > t[:, 10:].sum(1)).long()

    bag = SentenceClassifier(None, 2, "mean", embedding=nn.Embedding(12, 16))
    bag_acc = fit(bag, order)
    torch.manual_seed(0)
    rnn = SentenceClassifier(RecurrentEncoder(12, 16, 32, cell="lstm", bidirectional=True), 2)
    assert bag_acc < 0.65 < fit(rnn, order, steps=400), bag_acc


def test_two_ddp_processes_give_one_process_accuracy(tmp_path, cache_dir):
    """RankShare splits every batch of the shared order between the ranks, none repeated, and
    torchmetrics sums the counts: the same sentences, the same figures."""
    files = write_labels(tmp_path, first_word_label, sizes=(128, 30, 31))
    metrics = {}
    for name, trainer in (
        ("one", ["trainer.devices=1"]),
        ("two", ["trainer=ddp_cpu", "trainer.devices=2"]),
    ):
        run = tmp_path / name
        args = ["task=classify", "model=lstm", "model.dropout=0", *file_overrides("labels", files)]
        args += [*SMALL, *trainer, "trainer.accelerator=cpu", "logger=none", "callbacks=none"]
        args += [f"paths.output_dir={run}", f"paths.cache_dir={cache_dir}", "print_config=false"]
        done = run_cli([*args, "trainer.enable_progress_bar=false"], tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        metrics[name] = json.loads((run / "metrics.json").read_text())
    for key in ("test/acc", "test/majority_acc", "val/acc"):
        assert metrics["one"][key] == pytest.approx(metrics["two"][key], abs=1e-6), key
    from lm_experiments.compare.scores import read_scores, scores_path

    one, two = (read_scores(scores_path(tmp_path / name, "test")) for name in ("one", "two"))
    assert two["sentence"].tolist() == list(range(31))  # both ranks' sentences, once, in order
    assert {k: v.tolist() for k, v in one.items()} == {k: v.tolist() for k, v in two.items()}


SYNTHETIC = [
    "dataset=synthetic",
    "dataset.train_tokens=5000",
    "dataset.valid_tokens=1200",
    "dataset.test_tokens=1200",
]


@pytest.mark.parametrize("label", ["question", "subject_number", "verb_class"])
def test_the_synthetic_sentence_labels_need_memory_and_are_learnt(label, tmp_path, cache_dir):
    from lm_experiments.data.synthetic.lexicon import QUESTION_AUX
    from lm_experiments.train import build

    args = ["task=classify", "model=lstm", *SYNTHETIC, *SMALL, *FAST, f"task.label={label}"]
    cfg = compose_config(args, tmp_path, cache_dir)
    data, model = build(cfg)
    texts = data.corpus.corpus["test"]["text"]
    for (words, name), text in zip(data.examples["test"], texts, strict=True):
        assert words == text.split()[:-1]  # read without the final mark that gives it away
        if label == "question":
            question = text.endswith("?")
            assert (name == "question") == question
            assert question == (words[0] in (*QUESTION_AUX, "what", "who"))
    assert model.labels == data.labels and len(model.labels) >= 2
    metrics = train(cfg)
    assert metrics["test/acc"] > metrics["test/majority_acc"] + 0.1, metrics


def test_a_label_the_synthetic_corpus_lacks_is_one_error_line(tmp_path, cache_dir):
    args = ["task=classify", *SYNTHETIC, "task.label=colour", f"paths.output_dir={tmp_path}/r"]
    args.append(f"paths.cache_dir={cache_dir}")
    done = run_cli(args, tmp_path)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-1500:]
    assert "task.label" in errors[0] and "verb_class" in errors[0]
    assert "Traceback" not in done.stderr


def test_a_sweep_of_classifiers_is_ranked_by_accuracy_over_sentence_score_files(
    tmp_path, cache_dir
):
    """Each run writes scores/{val,test}.parquet (one row a sentence, its 0/1 ``correct``);
    the report ranks by test accuracy, highest first, with a bootstrap interval over them."""
    from lm_experiments.compare import write_report
    from lm_experiments.compare.scores import read_scores, scores_path
    from lm_experiments.train import objective

    files = write_labels(tmp_path, first_word_label, sizes=(120, 40, 41))
    sweep = tmp_path / "multirun"
    args = ["-m", "task=classify", "model=lstm", "task.pooling=last,mean", "logger=csv"]
    args += [*file_overrides("labels", files), *SMALL, "trainer.enable_progress_bar=false"]
    args += [f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache_dir}", "print_config=false"]
    done = run_cli(args, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = write_report(sweep, show=False, resamples=200)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    accuracy = [r["test_acc"] for r in rows]
    assert accuracy == sorted(accuracy, reverse=True)  # higher is better
    for row in rows:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        scores = read_scores(scores_path(row["run_dir"], "test"))
        assert scores["sentence"].tolist() == list(range(41))  # every test sentence, in order
        assert set(scores["correct"].tolist()) <= {0, 1} and "labels" not in scores
        assert scores["correct"].mean() == pytest.approx(metrics["test/acc"], abs=1e-6)
        assert row["test_acc"] == metrics["test/acc"]
        assert row["test_acc_lo"] <= row["test_acc"] <= row["test_acc_hi"]
        assert row["test_acc_hi"] - row["test_acc_lo"] > 0 or row["test_acc"] == 1.0
        assert metrics["val/acc_best"] >= metrics["val/acc"]  # the sweeps' objective:
        assert objective(metrics) == pytest.approx(1 - metrics["val/acc_best"])  # minimised
        assert read_scores(scores_path(row["run_dir"], "val"))["sentence"].size == 40


def test_an_lm_checkpoint_of_another_architecture_is_one_error_line(tmp_path, cache_dir):
    """An LSTM LM with hidden 64 into a classifier with hidden 32 (the CLI), or into a GRU one."""
    from lm_experiments.errors import UserError
    from lm_experiments.train import build

    files = write_labels(tmp_path, first_word_label, sizes=(40, 10, 10))
    text = {}
    for split, path in files.items():  # the labelled sentences as unlabelled text
        text[split] = tmp_path / f"{split}.txt"
        text[split].write_text(
            "\n".join(line.split("\t")[1] for line in path.read_text().splitlines())
        )
    lm = ["dataset=text", *[f"dataset.{s}_path={p}" for s, p in text.items()], "model=lstm"]
    lm += ["model.embedding_dim=16", "model.hidden_dim=64", "trainer.max_epochs=1", *FAST]
    ckpt = train(compose_config(lm, tmp_path / "lm", cache_dir))["best_checkpoint"]
    classify = ["task=classify", *file_overrides("labels", files), f"task.encoder_ckpt={ckpt}"]
    args = [*classify, "model=lstm", "model.embedding_dim=16", "model.hidden_dim=32"]
    done = run_cli(
        [*args, f"paths.output_dir={tmp_path}/r", f"paths.cache_dir={cache_dir}"], tmp_path
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode != 0 and len(errors) == 1, done.stderr[-2000:]
    assert (
        "task.encoder_ckpt" in errors[0] and "hidden 64" in errors[0] and "hidden 32" in errors[0]
    )
    assert "Traceback" not in done.stderr and not (tmp_path / "r" / "metrics.json").exists()
    gru = [*classify, "model=stacked_rnn", "model.cell=gru", "model.embedding_dim=16"]
    gru += ["model.hidden_dim=64", "model.num_layers=2", *FAST]
    with pytest.raises(UserError, match=r"\(lstm, 2 layer.*does not match.*\(gru, 2 layer"):
        build(compose_config(gru, tmp_path / "gru", cache_dir))


def test_sst2_s_unlabelled_test_split_is_never_scored_as_a_class(tmp_path, cache_dir):
    """SST-2's schema (idx, sentence, label) with its hub test split's label -1 everywhere:
    no class "-1"; the labelled validation split is tested, train gives up a validation split."""
    from lm_experiments.compare.scores import read_scores, scores_path
    from lm_experiments.train import build
    from tests.labelled_data import sentences

    files = {}
    for seed, (split, n) in enumerate((("train", 160), ("validation", 30), ("test", 25))):
        rows = [
            {
                "idx": i,
                "sentence": " ".join(s),
                "label": -1 if split == "test" else int(first_word_label(s) == "pos"),
            }
            for i, s in enumerate(sentences(n, seed))
        ]
        files[split] = tmp_path / f"{split}.json"
        files[split].write_text("\n".join(json.dumps(r) for r in rows))
    args = ["task=classify", "model=lstm", "dataset=sst2", *SMALL, *FAST]
    args += [f"+dataset.data_files.{k}={v}" for k, v in files.items()]
    cfg = compose_config(args, tmp_path / "run", cache_dir)
    data, model = build(cfg)
    assert data.labels == model.labels == ["0", "1"]  # never "-1"
    sizes = {split: len(examples) for split, examples in data.examples.items()}
    assert sizes == {"train": 130, "validation": 30, "test": 30}
    validation = [" ".join(words) for words, _ in data.examples["test"]]
    assert validation == [
        json.loads(line)["sentence"] for line in files["validation"].read_text().splitlines()
    ]
    metrics = train(cfg)
    assert metrics["test/acc"] > metrics["test/majority_acc"]
    assert len(read_scores(scores_path(tmp_path / "run", "test"))["correct"]) == 30


def test_a_diverging_classifier_stops_at_that_step_not_at_the_next_logged_one(tmp_path, cache_dir):
    """train/loss is logged only every log_every_n_steps (here never); the divergence guard
    (in every callbacks config) reads every step's loss from what training_step returns."""
    files = write_labels(tmp_path, first_word_label, sizes=(120, 30, 30))
    overrides = ["task=classify", *file_overrides("labels", files), *SMALL, *FAST]
    # an infinite step turns every weight with a zero gradient into NaN (inf x 0)
    overrides += ["model.optimizer.lr=inf", "trainer.log_every_n_steps=1000"]
    cfg = compose_config(overrides, tmp_path, cache_dir)
    with pytest.raises(UserError, match="training diverged") as stopped:
        train(cfg)
    step = int(re.search(r"at step (\d+)", str(stopped.value)).group(1))
    assert step <= 2  # the first step's update makes the second loss NaN


def test_a_classifier_diverging_on_two_ddp_processes_stops_both_with_one_error_line(
    tmp_path, cache_dir
):
    """Every rank's guard reads the ranks' mean loss: both stop at the same step and the
    command ends with the one error line, neither left waiting for the other."""
    files = write_labels(tmp_path, first_word_label, sizes=(120, 30, 30))
    args = ["task=classify", *file_overrides("labels", files), *SMALL, "model.optimizer.lr=inf"]
    args += ["trainer=ddp_cpu", "trainer.devices=2", "trainer.accelerator=cpu", "logger=none"]
    args += ["callbacks=none", f"paths.output_dir={tmp_path / 'run'}", "print_config=false"]
    args += [f"paths.cache_dir={cache_dir}", "trainer.enable_progress_bar=false"]
    done = run_cli(args, tmp_path, timeout=120)
    assert done.returncode != 0
    assert "error: training diverged" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
