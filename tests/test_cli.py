"""The command line as a user meets it: a run, its files, its config, its errors."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import FAST, run_cli, scored_tokens, toy_overrides

REQUIRED_METRICS = {
    "model",
    "dataset",
    "params",
    "val/ppl",
    "val/ppl_best",
    "test/ppl",
    "test/tokens",
    "train/tokens_per_sec",
}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, toy_corpus):
    """One real CLI run of a tiny RNNLM, shared by the tests that read what it leaves."""
    run_dir = tmp_path_factory.mktemp("cli_run")
    result = run_cli(
        [
            "model=rnnlm",
            *toy_overrides(toy_corpus),
            *FAST,
            "trainer.max_epochs=2",
            f"hydra.run.dir={run_dir}",
            f"paths.cache_dir={run_dir}/cache",
        ],
        cwd=run_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, result


def test_run_writes_metrics_and_prints_test_perplexity(trained_run, toy_corpus):
    run_dir, result = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= REQUIRED_METRICS
    assert metrics["model"] == "rnnlm" and metrics["dataset"] == "text"
    assert metrics["test/tokens"] == scored_tokens(toy_corpus["test"])
    assert metrics["val/ppl_best"] <= metrics["val/ppl"]
    assert f"test perplexity: {metrics['test/ppl']:.3f}" in result.stdout
    assert (run_dir / "vocab.txt").read_text().split("\n")[:2] == ["<unk>", "<eos>"]


def test_checkpoint_carries_the_vocabulary(trained_run):
    run_dir, _ = trained_run
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["vocabulary"] == (run_dir / "vocab.txt").read_text().split()
    assert checkpoint["model_class"] == "lm_experiments.models.rnnlm.RNNLM"


def test_generate_samples_sentences_from_the_checkpoint(trained_run):
    run_dir, _ = trained_run
    vocab = set((run_dir / "vocab.txt").read_text().split())
    result = run_cli(
        [f"ckpt_path={run_dir}/checkpoints/last.ckpt", "num_samples=6", "max_length=4"],
        cwd=run_dir,
        module="lm_experiments.generate",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 6
    assert all(len(line.split()) <= 4 and set(line.split()) <= vocab for line in lines)


def test_checkpoint_with_another_vocabulary_is_refused(trained_run, tmp_path):
    run_dir, _ = trained_run
    for split in ("train", "valid", "test"):
        (tmp_path / f"{split}.txt").write_text("other words entirely\n")
    result = run_cli(
        [
            "dataset=text",
            *(f"dataset.{s}_path={tmp_path}/{s}.txt" for s in ("train", "valid", "test")),
            *FAST,
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            f"hydra.run.dir={tmp_path}/run",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "does not match this dataset's" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dataset.train_path=/no/such/file.txt"], "dataset.train_path: no such file"),
        (["dataset.bptt=0"], "dataset.bptt must be a positive integer"),
        (["ckpt_path=CORRUPT"], "is not a readable checkpoint"),
    ],
)
def test_bad_input_gives_one_readable_line(tmp_path, toy_corpus, args, message):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    args = [a.replace("CORRUPT", str(corrupt)) for a in args]
    result = run_cli(
        [*toy_overrides(toy_corpus), *FAST, *args, f"hydra.run.dir={tmp_path}/run"],
        cwd=tmp_path,
    )
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_unknown_model_names_the_choices(tmp_path):
    result = run_cli(["model=transformer_xl"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Could not find 'model/transformer_xl'" in result.stderr
    assert "rnnlm" in result.stderr  # the available options are listed
    assert "Traceback" not in result.stderr


def test_turning_the_progress_bar_off_drops_the_default_callbacks_bar(
    tmp_path, cache_dir, toy_corpus
):
    """callbacks=default has a RichProgressBar; trainer.enable_progress_bar=false must win (plain
    Lightning refuses the pair with a MisconfigurationException)."""
    from lm_experiments.train import train
    from tests.conftest import compose_config

    overrides = [
        *toy_overrides(toy_corpus),
        "callbacks=default",
        "logger=none",
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
    ]
    metrics = train(compose_config(overrides, tmp_path, cache_dir))
    assert metrics["test/tokens"] > 0 and (tmp_path / "checkpoints" / "last.ckpt").is_file()


def test_cfg_job_prints_the_composed_config(tmp_path):
    result = run_cli(["model=rnnlm", "dataset.bptt=17", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bptt: 17" in result.stdout
    assert "_target_: lm_experiments.models.rnnlm.RNNLM" in result.stdout
