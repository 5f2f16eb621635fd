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
    lines = [line.split("\t")[1] for line in result.stdout.splitlines()]  # <log p>\t<text>
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


# --- issue 18: help, console, generation, evaluation, debug, where runs go ------------------------
def error_lines(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def test_help_says_what_the_tool_does_and_generate_lists_no_training_groups(tmp_path):
    result = run_cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0
    assert "train and compare language models" in result.stdout
    assert "powered by Hydra" not in result.stdout and "debug: " in result.stdout
    generate = run_cli(["--help"], cwd=tmp_path, module="lm_experiments.generate")
    assert generate.returncode == 0 and "sample text from a trained checkpoint" in generate.stdout
    assert "dataset:" not in generate.stdout and "model:" not in generate.stdout


def test_console_is_quiet_and_the_log_file_holds_the_run(trained_run):
    run_dir, result = trained_run
    console = result.stdout + result.stderr
    for noise in ("litlogger", "LeafSpec", "[ERROR]"):
        assert noise not in console
    log = (run_dir / "train.log").read_text()
    assert "GPU available" in log and "test perplexity" in log  # Lightning's lines and ours


def test_wandb_logger_passes_no_deprecated_anonymous_setting(tmp_path):
    from lm_experiments.loggers import QuietWandbLogger

    logger = QuietWandbLogger(save_dir=str(tmp_path), offline=True, project="p")
    assert "anonymous" not in logger._wandb_init


def test_generate_scores_the_prompt_then_continues_it(trained_run, tmp_path):
    from lm_experiments.generate import load_model

    run_dir, _ = trained_run
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["tokenizer"] == "word"
    out = tmp_path / "samples.txt"
    result = run_cli(
        [f"ckpt_path={ckpt}", "prompt=the cat", "num_samples=3", "temperature=0", f"out={out}"],
        cwd=tmp_path,
        module="lm_experiments.generate",
    )
    assert result.returncode == 0, result.stderr
    header, *samples = out.read_text().splitlines()
    model, _ = load_model(str(ckpt))
    ids = torch.tensor([[1, model.vocab.stoi["the"], model.vocab.stoi["cat"]]])  # <eos> the cat
    logits, _ = model(ids, model.init_state(1))
    expected = torch.log_softmax(logits[0, :-1], -1).gather(1, ids[0, 1:, None]).sum().item()
    assert (
        header.startswith("# prompt log-probability")
        and abs(float(header.split()[3].rstrip(":")) - expected) < 1e-3
    )
    assert len(samples) == 3 and len(set(samples)) == 1  # greedy: three equal samples
    score, text = samples[0].split("\t")
    assert text.startswith("the cat") and float(score) <= 0
    assert len(text.split()) <= 2 + 50


def test_character_checkpoints_join_without_spaces():
    from lm_experiments import generation

    assert generation.checkpoint_tokenizer({"tokenizer": "char"}) == "char"
    old = {"vocabulary": ["<unk>", "<eos>", "a", " ", "b"]}  # saved before the tokenizer was
    assert generation.checkpoint_tokenizer(old) == "char"
    assert generation.join(["a", " ", "b"], "char") == "a b"
    assert generation.checkpoint_tokenizer({"vocabulary": ["<unk>", "<eos>", "ab"]}) == "word"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["temperature=-1"], "temperature must be a number >= 0"),
        (["top_k=-3"], "top_k must be a number >= 0"),
        (["num_samples=0"], "num_samples must be a positive integer"),
        (["ckpt_path=???"], "ckpt_path: required"),
        (["tmperature=1"], "tmperature: no such key"),
    ],
)
def test_generate_checks_its_arguments(trained_run, tmp_path, args, message):
    run_dir, _ = trained_run
    result = run_cli(
        [f"ckpt_path={run_dir}/checkpoints/last.ckpt", *args],
        cwd=tmp_path,
        module="lm_experiments.generate",
    )
    assert result.returncode == 2 and result.stdout == ""
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0], result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model.dropout=1.5"], "model.dropout must be a probability in [0, 1) (got 1.5)"),
        (["model.hidden_dim=0"], "model.hidden_dim must be a positive integer (got 0)"),
        (["model.optimizer.lr=-0.1"], "model.optimizer.lr must be a positive number"),
        (["threads=0"], "threads must be auto, null or a positive integer"),
        (["model.hiden_dim=8"], "model.hiden_dim: no such key in this config"),
        (["dataset.train_path=???"], "dataset.train_path: required but not given"),
        (["model=rnnlm", "model=transformer_xl"], "Could not find 'model/transformer_xl'"),
    ],
)
def test_configuration_mistakes_are_one_line_naming_the_key(tmp_path, toy_corpus, args, message):
    result = run_cli([*toy_overrides(toy_corpus), *FAST, *args], cwd=tmp_path)
    assert result.returncode == 2
    assert len(error_lines(result)) == 1 and message in error_lines(result)[0], result.stderr
    assert "Traceback" not in result.stderr and "[ERROR]" not in result.stdout + result.stderr
    assert not list(tmp_path.glob("logs/**/metrics.json"))  # refused before anything ran


def test_a_configuration_mistake_is_refused_before_torch_is_imported(tmp_path, toy_corpus):
    """The config checks run before the frameworks' import (seconds), so a typo answers at once."""
    result = run_cli(["model.hidden_dim=0"], cwd=tmp_path, python=["-X", "importtime"])
    assert result.returncode == 2 and "model.hidden_dim must be" in result.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()}
    assert "lm_experiments.validation" in imported
    assert not {"torch", "lightning", "datasets"} & imported


def test_eval_takes_the_family_from_the_checkpoint(trained_run, tmp_path, toy_corpus):
    run_dir, _ = trained_run
    trained = json.loads((run_dir / "metrics.json").read_text())
    result = run_cli(
        [
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            "model=lstm",  # not a group of eval: the family is the checkpoint's
            *toy_overrides(toy_corpus),
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={run_dir}/cache",
        ],
        cwd=tmp_path,
        module="lm_experiments.eval",
    )
    assert result.returncode == 2 and "model: not a config group" in result.stderr
    result = run_cli(
        [
            f"ckpt_path={run_dir}/checkpoints/last.ckpt",
            *toy_overrides(toy_corpus),
            "trainer.accelerator=cpu",
            "trainer.enable_progress_bar=false",
            f"paths.cache_dir={run_dir}/cache",
        ],
        cwd=tmp_path,
        module="lm_experiments.eval",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (metrics_file,) = (tmp_path / "logs" / "eval" / "runs").glob("*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["model_class"] == "lm_experiments.models.rnnlm.RNNLM"
    assert metrics["test/tokens"] == trained["test/tokens"]
    assert metrics["test/ppl"] == pytest.approx(trained["test/ppl"], rel=1e-9)
    assert f"test perplexity: {trained['test/ppl']:.3f}" in result.stdout


def test_debug_fdr_runs_under_lm_experiments_home_not_the_cwd(tmp_path, toy_corpus):
    import os

    home, cwd = tmp_path / "home", tmp_path / "elsewhere"
    cwd.mkdir()
    os.environ["LM_EXPERIMENTS_HOME"] = str(home)
    try:
        result = run_cli([*toy_overrides(toy_corpus), "debug=fdr", "print_config=false"], cwd=cwd)
    finally:
        del os.environ["LM_EXPERIMENTS_HOME"]
    assert result.returncode == 0, result.stderr[-2000:]
    (run,) = (home / "logs" / "debug" / "runs").iterdir()
    assert (run / "metrics.json").is_file() and (run / "debug.log").is_file()
    assert list(cwd.iterdir()) == []  # nothing in the directory the command ran from
    assert (home / ".cache" / "datasets").is_dir()
