"""Real DDP (two CPU processes, gloo) through the command line, as a user runs it, for every
model family.

One process with batch 2b and two with batch b each must be the same training, step by step,
for the window layout (NNLM) and the column layout (RNNLM, stacked RNN, biRNN); the n-gram's two
ranks must merge their counts into one process's model; evaluating a checkpoint on two processes
must give one process's perplexity and token count; ``-m`` sweeps of DDP jobs must run each job
once, in its own directory (Lightning's launcher re-runs the command line); and a SIGTERM to
rank 0 must stop every rank with one checkpoint that resumes exactly.
"""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest

from lm_experiments.runtime.checkpoints import read_checkpoint
from lm_experiments.train import train
from tests.conftest import (
    FAST,
    LOG_EVERY_STEP,
    compose_config,
    interrupt_cli,
    run_cli,
    scored_tokens,
    toy_overrides,
)

STEPS = 6  # training steps compared
TRAIN = [
    "logger=csv",
    "trainer.log_every_n_steps=1",
    f"trainer.limit_train_batches={STEPS}",
    "trainer.max_epochs=1",
    "dataset.batch_size=8",  # global: 8 on one process, 4 on each of two
    "dataset.eval_batch_size=6",
    "model.hidden_dim=24",
    "model.dropout=0.0",  # dropout masks are drawn per rank: they cannot match one process's
]
DDP = ["trainer=ddp_cpu", "trainer.devices=2"]
# one -m sweep (they share the overrides)
MODELS = ["nnlm", "rnnlm", "stacked_rnn", "birnn", "transformer"]


def step_losses(run_dir: Path) -> list[float]:
    """train/loss of every step, from the CSV logger (rank 0's log)."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


def one_and_two_processes(run: list[str], one: list[str], two: list[str], run_dir: Path, cache):
    """``run`` in this process (with trainer overrides ``one``) and from the command line on two
    processes (``two``): (one's metrics, two's metrics, the command's result). Their run
    directories: ``run_dir/one`` and ``run_dir/two``."""
    single = train(compose_config([*run, *one], run_dir / "one", cache))  # makes run_dir
    result = run_cli(
        [*run, *two, f"hydra.run.dir={run_dir}/two", f"paths.cache_dir={cache}"], cwd=run_dir
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return single, json.loads((run_dir / "two" / "metrics.json").read_text()), result


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory, toy_corpus):
    """One ``-m`` sweep of DDP training jobs, one per neural family, each on two processes."""
    root = tmp_path_factory.mktemp("ddp_sweep")
    result = run_cli(
        [
            "-m",
            f"model={','.join(MODELS)}",
            *toy_overrides(toy_corpus),
            *FAST,
            *TRAIN,
            *DDP,
            f"hydra.sweep.dir={root}/sweep",
            f"paths.cache_dir={root}/cache",
        ],
        cwd=root,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return root, result


def test_sweep_of_ddp_jobs_runs_each_job_once_in_its_own_directory(ddp_sweep):
    root, _ = ddp_sweep
    jobs = sorted(p for p in (root / "sweep").iterdir() if p.is_dir())
    assert sorted(p.name for p in jobs) == sorted(map(str, range(len(MODELS))))  # no re-runs
    for job, model in zip(jobs, MODELS, strict=True):
        metrics = json.loads((job / "metrics.json").read_text())
        assert metrics["model"] == model
        assert (job / ".hydra" / "overrides.yaml").is_file()  # written by rank 0 only
        assert len(step_losses(job)) == STEPS
    assert not (root / "logs").exists()  # no child wrote into a default run directory


@pytest.mark.parametrize("model", MODELS)
def test_two_processes_of_batch_b_train_as_one_of_batch_2b(
    ddp_sweep, model, tmp_path, cache_dir, toy_corpus
):
    root, _ = ddp_sweep
    job = root / "sweep" / str(MODELS.index(model))
    cfg = compose_config(
        [f"model={model}", *toy_overrides(toy_corpus), *FAST, *TRAIN], tmp_path, cache_dir
    )
    one = train(cfg)
    expected, got = step_losses(tmp_path), step_losses(job)
    assert len(expected) == len(got) == STEPS
    assert got == pytest.approx(expected, rel=1e-5)
    assert expected[-1] < expected[0] - 0.05  # the steps changed the weights (so did the same)
    two = json.loads((job / "metrics.json").read_text())
    assert two["train/tokens"] == one["train/tokens"]  # every step scored the same tokens
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=1e-5)


def test_adaptive_softmax_trains_on_two_processes_as_on_one(tmp_path, cache_dir, toy_corpus):
    """A rank whose batch has no target in some tail cluster must still run that tail (on no
    rows): DDP needs every parameter in every rank's backward pass."""
    run = [
        "model=nnlm",
        "model.softmax=adaptive",
        *toy_overrides(toy_corpus),
        *FAST,
        *TRAIN,
        "model.train_batch_size=4",  # 2 windows a rank: most steps leave a tail without targets
    ]
    one, two, _ = one_and_two_processes(run, [], DDP, tmp_path, cache_dir)
    assert step_losses(tmp_path / "two") == pytest.approx(step_losses(tmp_path / "one"), rel=1e-5)
    assert two["val/ppl"] == pytest.approx(one["val/ppl"], rel=1e-5)


def test_ngram_ranks_merge_their_counts_into_the_one_process_model(tmp_path, cache_dir, toy_corpus):
    """Each rank counts its own columns and the ranks gather them before estimating, so two
    processes estimate exactly one process's model: same size, same perplexity on every split
    (the training split included, which each rank scores on its own columns)."""
    run = [
        "model=ngram",
        "model.order=4",
        *toy_overrides(toy_corpus),
        *FAST,
        "dataset.batch_size=8",
        "dataset.eval_batch_size=6",
    ]
    one, two, _ = one_and_two_processes(run, [], DDP, tmp_path, cache_dir)
    for key in ("params", "train/tokens", "train/ppl", "val/ppl", "val/tokens", "test/ppl"):
        assert two[key] == pytest.approx(one[key], rel=1e-9), key  # one rank's half differs
    assert two["train/tokens"] == scored_tokens(
        toy_corpus["train"]
    )  # the ranks' columns cover the split exactly once


def assert_two_processes_evaluate_as_one(
    model: str,
    ckpt: str | Path,
    overrides: list[str],
    one: list[str],
    two: list[str],
    run_dir: Path,
    cache: Path,
    toy_corpus: dict[str, Path],
) -> None:
    """Evaluate ``ckpt`` in one process (trainer overrides ``one``) and, from the command line,
    in two (``two``): the same tokens, the same perplexities (each biRNN direction's too), the
    test split covered exactly once, and one report. Also run on GPUs by tests/test_gpu.py."""
    evaluate = [
        f"model={model}",
        *toy_overrides(toy_corpus),
        *overrides,
        "train=false",
        f"ckpt_path={ckpt}",
        "dataset.eval_batch_size=6",  # 3 columns on each of the two processes
    ]
    single, double, result = one_and_two_processes(evaluate, one, two, run_dir, cache)
    for stage in ("val", "test"):
        assert double[f"{stage}/tokens"] == single[f"{stage}/tokens"]
        ppl = [key for key in single if key.startswith(f"{stage}/ppl")]  # biRNN: each direction
        assert len(ppl) >= (3 if model == "birnn" else 1)
        for key in ppl:
            assert double[key] == pytest.approx(single[key], rel=1e-6), key
    assert double["test/tokens"] == scored_tokens(
        toy_corpus["test"]
    )  # the ranks' columns cover the split exactly once
    assert result.stdout.count("test perplexity:") == 1  # rank 0 reports, rank 1 is silent


@pytest.mark.parametrize("model", ["rnnlm", "birnn", "transformer"])  # biRNN: its epoch-end pass
def test_evaluating_a_checkpoint_on_two_processes_equals_one(
    ddp_sweep, model, tmp_path, cache_dir, toy_corpus
):
    root, _ = ddp_sweep
    ckpt = root / "sweep" / str(MODELS.index(model)) / "checkpoints" / "last.ckpt"
    overrides = [*FAST, "model.hidden_dim=24"]
    assert_two_processes_evaluate_as_one(
        model, ckpt, overrides, [], DDP, tmp_path, cache_dir, toy_corpus
    )


def test_sigterm_to_rank_zero_stops_every_rank_with_a_checkpoint_that_resumes_exactly(
    tmp_path, cache_dir, toy_corpus
):
    """A ``kill`` of the launching process (rank 0) mid-epoch: every rank stops after the same
    batch (the signal is all-reduced), rank 0 writes one resumable checkpoint, and resuming it on
    two processes ends exactly where an uninterrupted two-process run ends."""
    run = [
        "model=rnnlm",
        *toy_overrides(toy_corpus),
        *FAST,
        *DDP,
        *LOG_EVERY_STEP,
        "trainer.max_epochs=3",
        "dataset.batch_size=8",  # 4 columns a rank
        "dataset.bptt=10",  # about 60 training steps an epoch
        "model.hidden_dim=24",
        "model.dropout=0.0",
        f"paths.cache_dir={cache_dir}",
    ]
    whole = run_cli([*run, f"hydra.run.dir={tmp_path}/whole"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-4000:]
    uninterrupted = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    killed = tmp_path / "killed"
    returncode, err = interrupt_cli(run, tmp_path, killed, after_steps=70)  # in epoch 2
    assert returncode == 128 + signal.SIGTERM, err[-3000:]
    assert err.count("interrupted: stopped by SIGTERM after batch") == 1, err[-3000:]
    assert not (killed / "metrics.json").exists()
    checkpoint = read_checkpoint(str(killed / "checkpoints" / "last.ckpt"))
    position = checkpoint["LMDataModule"]["train_position"]
    per_epoch = read_checkpoint(str(tmp_path / "whole" / "checkpoints" / "last.ckpt"))
    per_epoch = per_epoch["global_step"] // 3
    assert checkpoint["global_step"] == per_epoch * position["epoch"] + position["batches"]
    assert 0 < checkpoint["global_step"] < 3 * per_epoch

    resumed = run_cli(
        [*run, f"hydra.run.dir={tmp_path}/resumed", f"ckpt_path={killed}/checkpoints/last.ckpt"],
        cwd=tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    for key in ("val/ppl", "val/ppl_best", "train/ppl", "train/tokens", "test/ppl", "test/tokens"):
        assert metrics[key] == pytest.approx(uninterrupted[key], rel=1e-6), key
