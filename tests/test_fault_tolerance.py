"""A run stopped by SIGTERM or Ctrl-C leaves a resumable checkpoint, and resuming it reaches
exactly the metrics of an uninterrupted run; a diverging run stops with one readable line and
keeps its last good checkpoint; a finished run is never overwritten; metrics.json is strict JSON;
Lightning's and Hydra's internals are touched in one version-checked module."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

from lm_experiments.errors import UserError
from lm_experiments.runtime.checkpoints import read_checkpoint
from lm_experiments.runtime.compat import check_versions
from lm_experiments.runtime.signals import RunInterrupted
from lm_experiments.train import train
from tests.conftest import (
    FAST,
    LOG_EVERY_STEP,
    compose_config,
    interrupt_cli,
    run_cli,
    toy_overrides,
)

EPOCHS = 3
#: a model that carries a tuple state (LSTM), draws dropout masks, and whose plateau scheduler
#: halves the learning rate after every epoch (threshold 0.5): everything a resume must restore
RUN = [
    "dataset.batch_size=4",
    "dataset.bptt=10",  # 116 training batches per epoch of the toy corpus
    "model.cell=lstm",
    "model.hidden_dim=32",
    "model.dropout=0.3",
    "model.scheduler.threshold=0.5",
    f"trainer.max_epochs={EPOCHS}",
]
COMPARED = ("val/ppl", "val/ppl_best", "train/ppl", "train/tokens", "test/ppl", "test/tokens")


class SignalAt(L.Callback):
    """Sends this process ``signum`` at the end of the training steps listed (a user's Ctrl-C)."""

    def __init__(self, steps: list[int], signum: str = "SIGINT"):
        self.steps, self.signum = list(steps), signal.Signals[signum]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in self.steps:
            os.kill(os.getpid(), self.signum)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, toy_corpus, cache_dir):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    metrics = train(compose_config([*toy_overrides(toy_corpus), *FAST, *RUN], run_dir, cache_dir))
    lr = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["optimizer_states"]
    assert lr[0]["param_groups"][0]["lr"] < 1.0  # the scheduler did act during the run
    return metrics


def run_overrides(toy_corpus) -> list[str]:  # the uninterrupted run's overrides
    return [*toy_overrides(toy_corpus), *FAST, *RUN]


def resume(overrides: list[str], ckpt_path, folder, cache_dir) -> dict:
    """The same run, continued from ``ckpt_path`` in ``folder``."""
    return train(compose_config([*overrides, f"ckpt_path={ckpt_path}"], folder, cache_dir))


def assert_same_run(resumed: dict, uninterrupted: dict) -> None:
    assert resumed["epochs"] == uninterrupted["epochs"] == EPOCHS
    for key in COMPARED:
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-6), key


def test_sigterm_mid_epoch_saves_a_checkpoint_that_resumes_exactly(
    tmp_path, toy_corpus, cache_dir, uninterrupted
):
    run_dir = tmp_path / "killed"
    args = [
        *toy_overrides(toy_corpus),
        *FAST,
        *RUN,
        *LOG_EVERY_STEP,
        f"paths.cache_dir={cache_dir}",
    ]
    returncode, err = interrupt_cli(args, tmp_path, run_dir, after_steps=130)  # in epoch 2
    assert returncode == 128 + signal.SIGTERM, err[-3000:]
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert "interrupted: stopped by SIGTERM after batch" in err
    assert f"resumable checkpoint: {ckpt}" in err
    assert not (run_dir / "metrics.json").exists()

    checkpoint = read_checkpoint(str(ckpt))
    position = checkpoint["LMDataModule"]["train_position"]
    assert 0 < position["batches"] < 116  # inside an epoch: the hard case
    assert checkpoint["global_step"] == 116 * position["epoch"] + position["batches"]
    resumed = resume(run_overrides(toy_corpus), ckpt, tmp_path / "resumed", cache_dir)
    assert_same_run(resumed, uninterrupted)


def test_ctrl_c_in_an_epochs_last_batch_stops_after_the_next_and_resumes_exactly(
    tmp_path, toy_corpus, cache_dir, uninterrupted
):
    interrupt = [
        "+callbacks.interrupt._target_=tests.test_fault_tolerance.SignalAt",
        "+callbacks.interrupt.steps=[115]",  # during epoch 0's last batch (the 116th)
    ]
    first = compose_config(
        [*toy_overrides(toy_corpus), *FAST, *RUN, *interrupt], tmp_path / "a", cache_dir
    )
    with pytest.raises(RunInterrupted) as stopped:
        train(first)
    assert stopped.value.exit_code == 130
    checkpoint = read_checkpoint(stopped.value.ckpt_path)
    # epoch 0 finished (validation, LR step) and the run stopped after epoch 1's first batch
    assert checkpoint["LMDataModule"]["train_position"] == {"epoch": 1, "batches": 1}
    resumed = resume(run_overrides(toy_corpus), stopped.value.ckpt_path, tmp_path / "b", cache_dir)
    assert_same_run(resumed, uninterrupted)


def test_shuffled_windows_resume_mid_epoch_exactly(tmp_path, toy_corpus, cache_dir):
    """The NNLM's training windows come from a per-epoch shuffle (DistributedSampler): the resumed
    epoch must continue that epoch's order at the saved batch."""
    nnlm = [
        "model=nnlm",
        *toy_overrides(toy_corpus),
        *FAST,
        "model.train_batch_size=64",  # 72 batches of windows per epoch
        "model.hidden_dim=32",
        "model.dropout=0.3",
        "model.scheduler.threshold=0.5",
        f"trainer.max_epochs={EPOCHS}",
    ]
    reference = train(compose_config(nnlm, tmp_path / "uninterrupted", cache_dir))
    stop = [
        "+callbacks.interrupt._target_=tests.test_fault_tolerance.SignalAt",
        "+callbacks.interrupt.steps=[100]",
        "+callbacks.interrupt.signum=SIGTERM",
    ]
    with pytest.raises(RunInterrupted) as stopped:
        train(compose_config([*nnlm, *stop], tmp_path / "a", cache_dir))
    checkpoint = read_checkpoint(stopped.value.ckpt_path)
    assert checkpoint["LMDataModule"]["train_position"] == {"epoch": 1, "batches": 29}
    resumed = resume(nnlm, stopped.value.ckpt_path, tmp_path / "b", cache_dir)
    assert_same_run(resumed, reference)


def test_a_mid_epoch_checkpoint_resumes_in_another_precision(tmp_path, toy_corpus, cache_dir):
    """The hidden state carried into the next batch is saved as autocast left it (bf16 under
    bf16-mixed); resumed in 32-true (or on another device) it must still feed the LSTM, and the
    run end as well as the bf16 run would have."""
    bf16 = [*run_overrides(toy_corpus), "trainer.max_epochs=1", "trainer.precision=bf16-mixed"]
    stop = ["+callbacks.interrupt._target_=tests.test_fault_tolerance.SignalAt"]
    with pytest.raises(RunInterrupted) as stopped:
        train(
            compose_config([*bf16, *stop, "+callbacks.interrupt.steps=[50]"], tmp_path, cache_dir)
        )
    saved = read_checkpoint(stopped.value.ckpt_path)["carried"]["ranks"][0]["state"]
    assert {x.dtype for x in saved} == {torch.bfloat16}  # (h, c) as the LSTM returned them
    fp32 = [*bf16[:-1], "trainer.precision=32-true"]
    resumed = resume(fp32, stopped.value.ckpt_path, tmp_path / "fp32", cache_dir)
    whole = train(compose_config(bf16, tmp_path / "whole", cache_dir))
    assert resumed["train/tokens"] == whole["train/tokens"]
    for key in ("val/ppl", "test/ppl"):  # the last 66 steps in fp32 instead of bf16
        assert resumed[key] == pytest.approx(whole[key], rel=0.03), key


def test_resuming_an_end_of_epoch_last_ckpt_continues_exactly(
    tmp_path, toy_corpus, cache_dir, uninterrupted
):
    """A run that ended (or crashed) after epoch 1, continued from ModelCheckpoint's last.ckpt,
    written when validation ended and so before that epoch's ReduceLROnPlateau step."""
    shorter = [*toy_overrides(toy_corpus), *FAST, *RUN, "trainer.max_epochs=1"]
    train(compose_config(shorter, tmp_path / "a", cache_dir))
    last = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(str(last))["LMDataModule"]["train_position"] == {
        "epoch": 1,
        "batches": 0,
    }
    resumed = resume(run_overrides(toy_corpus), last, tmp_path / "b", cache_dir)
    assert_same_run(resumed, uninterrupted)


def test_second_ctrl_c_aborts_without_a_checkpoint(tmp_path, toy_corpus, cache_dir):
    twice = [
        "+callbacks.interrupt._target_=tests.test_fault_tolerance.SignalAt",
        "+callbacks.interrupt.steps=[5,6]",
    ]
    cfg = compose_config([*toy_overrides(toy_corpus), *FAST, *RUN, *twice], tmp_path, cache_dir)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs as a background job
    with pytest.raises(SystemExit):  # Lightning's KeyboardInterrupt handling exits
        train(cfg)
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    assert not list((tmp_path / "checkpoints").glob("*.ckpt"))


def test_divergence_exits_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, toy_corpus):
    explode_after_epoch_1 = [  # the learning rate becomes 1e38 when epoch 1 ends
        "model.scheduler._target_=torch.optim.lr_scheduler.StepLR",
        "~model.scheduler.mode",
        "~model.scheduler.factor",
        "~model.scheduler.patience",
        "~model.scheduler.threshold",
        "+model.scheduler.step_size=1",
        "+model.scheduler.gamma=1e38",
    ]
    result = run_cli(
        [
            *toy_overrides(toy_corpus),
            *FAST,
            *explode_after_epoch_1,
            "trainer.max_epochs=3",
            f"hydra.run.dir={tmp_path}/run",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "training diverged" in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["epoch_000.ckpt", "last.ckpt"]
    last = read_checkpoint(str(checkpoints / "last.ckpt"))
    assert last["epoch"] == 0  # written at the end of epoch 1, before the divergence
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_truncated_checkpoint_is_refused_with_one_line(
    tmp_path, toy_corpus, cache_dir, uninterrupted
):
    good = Path(uninterrupted["best_checkpoint"]).read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 2])  # what a kill during a plain write leaves
    cfg = compose_config(
        [*toy_overrides(toy_corpus), *FAST, *RUN, f"ckpt_path={truncated}"], tmp_path, cache_dir
    )
    with pytest.raises(UserError, match="is not a readable checkpoint"):
        train(cfg)


# --- framework internals in one module ------------------------------------------------------------
def test_an_unsupported_lightning_or_hydra_is_refused_with_the_range():
    check_versions()  # what the tests run on is inside the range
    with pytest.raises(
        UserError, match=r"lightning 2\.7\.0 is not supported.*lightning>=2\.6,<2\.7"
    ):
        check_versions({"lightning": "2.7.0"})
    with pytest.raises(UserError, match=r"hydra-core>=1\.3,<1\.4"):
        check_versions({"lightning": "2.6.6", "hydra-core": "1.4.0.dev1"})


def test_private_internals_are_touched_only_in_compat_and_models_import_no_fault_tolerance():
    source = Path(__file__).resolve().parents[1] / "lm_experiments"
    private = re.compile(
        r"\._signal_connector|\.batch_progress\b|\.restarting\s*=|\._return_value|\._hydra_"
        r"|_wandb_init"
    )
    for file in source.rglob("*.py"):
        code = "\n".join(
            line for line in file.read_text().splitlines() if not line.lstrip().startswith("#")
        )
        if file.name != "compat.py":
            assert not private.search(code.replace("``_hydra_subprocess_cmd``", "")), file
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, lm_experiments.tasks.language_modeling, lm_experiments.models.ngram, "
            "lm_experiments.data.datamodule; "
            "print(sorted(m for m in sys.modules if m.startswith('lm_experiments.runtime.')))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert loaded.strip() == "['lm_experiments.runtime.compat']", loaded


# --- divergence, finished runs, metrics.json ---------------------------------------------------------
def errors_of(result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file the run left, by content (what must not change)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and p.suffix in (".ckpt", ".json")
    }


def test_a_diverging_run_never_replaces_a_finished_run(tmp_path, toy_corpus):
    """model.optimizer.lr=1e12 used to run to the end and report inf, over a good run's files."""
    run = [
        *toy_overrides(toy_corpus),
        *FAST,
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path}/run",
        f"paths.cache_dir={tmp_path}/cache",
    ]
    good = run_cli(run, cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-3000:]
    finished = snapshot(tmp_path / "run")
    assert "metrics.json" in finished and "checkpoints/last.ckpt" in finished

    again = run_cli([*run, "model.optimizer.lr=1e12"], cwd=tmp_path)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert len(errors_of(again)) == 1 and "already holds a finished run" in errors_of(again)[0]
    assert "overwrite=true" in errors_of(again)[0]

    diverged = run_cli([*run, "model.optimizer.lr=1e12", "overwrite=true"], cwd=tmp_path)
    assert diverged.returncode == 2, diverged.stderr[-3000:]
    errors = errors_of(diverged)
    assert len(errors) == 1 and "training diverged" in errors[0], diverged.stderr[-3000:]
    assert "3 x log V" in errors[0] and "Traceback" not in diverged.stderr
    assert "test perplexity" not in diverged.stdout
    assert snapshot(tmp_path / "run") == finished  # nothing saved or reported after it diverged


def test_a_diverging_ddp_run_stops_every_rank_with_one_line(tmp_path, toy_corpus):
    result = run_cli(
        [
            *toy_overrides(toy_corpus),
            *FAST,
            "trainer=ddp_cpu",
            "trainer.devices=2",
            "trainer.accelerator=cpu",
            "model.optimizer.lr=1e12",
            f"hydra.run.dir={tmp_path}/run",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        cwd=tmp_path,
        timeout=180,  # a rank left waiting in a collective would hang until then
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = errors_of(result)
    assert len(errors) == 1 and "training diverged" in errors[0], result.stderr[-3000:]
    assert not list((tmp_path / "run").rglob("*.ckpt"))
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_divergence_bound_is_three_times_log_v_and_spares_honest_zero_probabilities(toy_corpus):
    from lm_experiments.runtime.divergence import DivergenceGuard

    guard = DivergenceGuard()

    class Module:
        vocab_size = 100

    class Trainer:
        global_step, sanity_checking = 7, False
        callback_metrics: dict = {}

    assert guard.bound(Module()) == pytest.approx(3 * math.log(100))
    trainer = Trainer()
    for loss in (0.5, 3 * math.log(100) - 1e-6):
        trainer.callback_metrics = {"train/loss": torch.tensor(loss)}
        guard.on_train_batch_end(trainer, Module(), None, None, 0)  # fine
    for loss in (3 * math.log(100) + 1e-3, math.inf, math.nan):
        trainer.callback_metrics = {"train/loss": torch.tensor(loss)}
        with pytest.raises(UserError, match="training diverged"):
            guard.on_train_batch_end(trainer, Module(), None, None, 0)
    trainer.callback_metrics = {"val/ppl": torch.tensor(math.inf), "val/zero_prob": torch.tensor(3)}
    guard.on_validation_end(trainer, Module())  # an unsmoothed model's honest inf
    trainer.callback_metrics = {"val/ppl": torch.tensor(math.inf)}
    with pytest.raises(UserError, match="validation perplexity"):
        guard.on_validation_end(trainer, Module())


def test_divergence_guard_checks_every_step_from_the_returned_global_loss():
    """The task logs train/loss only every log_every_n_steps steps (self.log costs ~1.5 ms on
    a CPU); the guard reads the loss each step returns, so a divergence between log steps
    still stops the run at its step."""
    from lm_experiments.runtime.divergence import DivergenceGuard
    from lm_experiments.tasks.step_log import logs_this_step

    class Module:
        vocab_size = 100

    class Trainer:
        global_step, sanity_checking, log_every_n_steps, should_stop = 7, False, 20, False
        callback_metrics = {"train/loss": torch.tensor(0.5)}  # a fine value, logged earlier

    guard, trainer = DivergenceGuard(), Trainer()
    guard.on_train_batch_end(trainer, Module(), {"global_loss": torch.tensor(0.7)}, None, 0)
    with pytest.raises(UserError, match="training diverged"):
        guard.on_train_batch_end(
            trainer, Module(), {"global_loss": torch.tensor(math.nan)}, None, 0
        )
    assert not logs_this_step(trainer)  # step 8 of 20
    trainer.global_step = 19
    assert logs_this_step(trainer)  # step 20 is written
    trainer.global_step, trainer.should_stop = 7, True
    assert logs_this_step(trainer)  # the last step of a stopping run is written


def reject_constant(name: str):
    raise ValueError(f"metrics.json holds {name}, which is not JSON")


def test_metrics_json_is_strict_json_with_null_for_an_infinite_perplexity(tmp_path, toy_corpus):
    result = run_cli(
        [
            *toy_overrides(toy_corpus),
            *FAST,
            "model=ngram",
            "model.smoothing=mle",  # unseen n-grams: probability zero, perplexity inf
            f"hydra.run.dir={tmp_path}/run",
            f"paths.cache_dir={tmp_path}/cache",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]  # honest inf is no divergence
    text = (tmp_path / "run" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=reject_constant)
    assert metrics["test/ppl"] is None and metrics["val/ppl"] is None
    assert 0 < metrics["test/zero_prob"] < metrics["test/tokens"]
