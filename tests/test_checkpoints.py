"""A checkpoint knows its model (evaluating or resuming it needs no ``model=``, and another
family or size is refused in one line), and a kill or a full disk during a save loses nothing
already saved (lm_experiments/runtime/checkpoints.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch

from lm_experiments.errors import UserError
from lm_experiments.runtime.checkpoints import read_checkpoint
from lm_experiments.train import train
from tests.conftest import FAST, cli_env, compose_config, run_cli, toy_overrides
from tests.test_fault_tolerance import errors_of

# --- checkpoints know their model -------------------------------------------------------------------
LSTM = ["model=lstm", "model.hidden_dim=16", "model.embedding_dim=8", "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def lstm_run(tmp_path_factory, toy_corpus, cache_dir):
    run_dir = tmp_path_factory.mktemp("lstm")
    metrics = train(compose_config([*toy_overrides(toy_corpus), *FAST, *LSTM], run_dir, cache_dir))
    return run_dir, metrics


def test_a_checkpoint_evaluates_and_resumes_as_what_it_is_without_model(
    tmp_path, toy_corpus, cache_dir, lstm_run
):
    run_dir, trained = lstm_run
    best = trained["best_checkpoint"]
    evaluate = [*toy_overrides(toy_corpus), *FAST, "train=false", f"ckpt_path={best}"]
    evaluated = train(compose_config(evaluate, tmp_path / "eval", cache_dir))  # no model=lstm
    assert evaluated["model"] == "lstm" and evaluated["params"] == trained["params"]
    assert evaluated["test/ppl"] == trained["test/ppl"]

    legacy = read_checkpoint(best)  # written before checkpoints held their model group
    del legacy["model_group"]
    torch.save(legacy, tmp_path / "legacy.ckpt")
    old = train(
        compose_config(
            [*evaluate[:-1], f"ckpt_path={tmp_path}/legacy.ckpt"], tmp_path / "old", cache_dir
        )
    )
    assert old["test/ppl"] == trained["test/ppl"]  # from model_class + hyper_parameters
    assert old["model"] == "stackedrnnlm"  # its class: the choice's name was not saved then

    last = run_dir / "checkpoints" / "last.ckpt"
    longer = [*toy_overrides(toy_corpus), *FAST, "trainer.max_epochs=2", f"ckpt_path={last}"]
    resumed = train(compose_config(longer, tmp_path / "resumed", cache_dir))
    assert resumed["model"] == "lstm" and resumed["epochs"] == 2


def test_a_checkpoint_of_another_family_or_size_is_refused_with_one_line(
    tmp_path, toy_corpus, cache_dir, lstm_run
):
    best = lstm_run[1]["best_checkpoint"]
    result = run_cli(
        [
            *toy_overrides(toy_corpus),
            *FAST,
            "model=rnnlm",
            "train=false",
            f"ckpt_path={best}",
            f"hydra.run.dir={tmp_path}/run",
            f"paths.cache_dir={cache_dir}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = errors_of(result)
    assert "the checkpoint holds StackedRNNLM(" in error and "asks for RNNLM(" in error
    assert "size mismatch" not in result.stderr
    smaller = [*toy_overrides(toy_corpus), *FAST, *LSTM[:-1], "model.hidden_dim=8"]
    with pytest.raises(UserError, match=r"holds StackedRNNLM\(.*hidden_dim=16.*hidden_dim=8"):
        train(compose_config([*smaller, "train=false", f"ckpt_path={best}"], tmp_path, cache_dir))


# --- checkpoint writes: a kill or a full disk loses nothing already saved ------------------------------
class Stall:
    """Pickled inside a checkpoint: marks that the write began, then blocks (a slow disk)."""

    def __init__(self, marker: str, error: int | None = None):
        self.marker, self.error = marker, error

    def __reduce__(self):
        Path(self.marker).touch()
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))  # the disk is full
        time.sleep(120)
        return (str, ())


class StallSavesAfterEpoch0(L.Callback):
    """Every checkpoint after the first epoch's stalls (or fails with ``error``) while written."""

    def __init__(self, marker: str, error: int | None = None):
        self.marker, self.error = marker, error

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        if checkpoint["epoch"] >= 1:
            checkpoint["stall"] = Stall(self.marker, self.error)


def stalling_run(tmp_path, toy_corpus, error: str | None = None) -> list[str]:
    stall = [
        "+callbacks.stall._target_=tests.test_checkpoints.StallSavesAfterEpoch0",
        f"+callbacks.stall.marker={tmp_path}/writing",
    ]
    return [
        *toy_overrides(toy_corpus),
        *FAST,
        *stall,
        *([f"+callbacks.stall.error={error}"] if error else []),
        "trainer.max_epochs=2",
        f"hydra.run.dir={tmp_path}/run",
        f"paths.cache_dir={tmp_path}/cache",
    ]


def assert_epoch_0_checkpoints_intact(checkpoints: Path) -> None:
    for file in checkpoints.glob("*.ckpt"):
        assert read_checkpoint(str(file))["epoch"] == 0, file  # readable, and the old one
    assert read_checkpoint(str(checkpoints / "last.ckpt"))["epoch"] == 0


def test_a_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path, toy_corpus):
    proc = subprocess.Popen(
        [sys.executable, "-m", "lm_experiments", *stalling_run(tmp_path, toy_corpus)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=cli_env(),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while not (tmp_path / "writing").exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never began its second epoch's save"
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # in the middle of writing a checkpoint
        proc.wait(timeout=30)
    checkpoints = tmp_path / "run" / "checkpoints"
    assert [p.name for p in checkpoints.glob(".*.tmp")]  # the write it interrupted
    assert_epoch_0_checkpoints_intact(checkpoints)


def test_a_full_disk_during_a_save_gives_one_line_and_loses_nothing(tmp_path, toy_corpus):
    result = run_cli(stalling_run(tmp_path, toy_corpus, error="28"), cwd=tmp_path)  # ENOSPC
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    (error,) = errors_of(result)
    assert "no space left on the device" in error and "intact" in error
    checkpoints = tmp_path / "run" / "checkpoints"
    assert_epoch_0_checkpoints_intact(checkpoints)
    assert not [p for p in checkpoints.iterdir() if p.suffix != ".ckpt"]  # no partial file
    assert not (tmp_path / "run" / "metrics.json").exists()
