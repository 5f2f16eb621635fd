"""Runs that survive what happens to long jobs: a signal, a resume, a DDP relaunch under Hydra.

Stopping and resuming (``CheckpointOnSignal``)
    On SIGTERM (a scheduler's preemption, ``kill``) or the first Ctrl-C, training finishes the
    batch it is in, writes a resumable ``last.ckpt`` and exits (status 128 + the signal number);
    ``ckpt_path=<run>/checkpoints/last.ckpt`` continues it, and the resumed run reaches exactly the
    metrics of an uninterrupted one. What that takes, beyond Lightning's own resume:

    * the checkpoint is written at a batch boundary *inside* an epoch: if the signal comes during
      an epoch's last batch, the epoch's validation, epoch-end hooks and LR-scheduler step run
      first and the run stops after the next batch (resuming Lightning 2.6.6 from its own
      end-of-epoch SIGTERM checkpoint would skip the whole next epoch);
    * the model saves the state it carries from batch to batch (the hidden state of every column,
      the epoch's NLL sums so far; ``LanguageModel.on_save_checkpoint``), and the data module
      where the epoch stands, so the train loader restarts at the next batch rather than at batch
      0 of a map-style dataset (``ResumableSampler``);
    * the random number generators are saved and restored before the first resumed batch
      (dropout masks), per rank;
    * Lightning skips ReduceLROnPlateau at the end of a resumed epoch (it assumes the epoch's
      validation metric is missing); after a mid-epoch resume it is not, so the step is kept;
    * an end-of-epoch checkpoint (ModelCheckpoint's last.ckpt, written when validation ends)
      predates that epoch's ReduceLROnPlateau step, which Lightning never takes on resume: the
      checkpoint keeps the value the step reads, and the resumed run takes it first. So
      resuming last.ckpt after a crash, or to train a finished run longer, is exact too.

    A second Ctrl-C aborts at once, without a checkpoint. Under DDP every rank stops after the
    same batch: the ranks agree on it with one all-reduce per batch (the signal may reach only
    one of them). Lightning's own SIGTERM handler is replaced while training because it runs a
    collective inside the signal handler.

A diverging loss
    ``LanguageModel.training_step`` raises a UserError when the loss is not finite (all ranks see
    the same global loss, so all stop together); nothing is saved after that point, so the last
    checkpoint is the last good one.

DDP under Hydra (``ddp_job_argv``, ``rerun_as_ddp_child``, ``isolated_ddp_job``)
    Lightning's subprocess launcher starts ranks 1..N-1 by re-running this process's command line
    plus ``hydra.run.dir=<run.dir>`` (lightning/fabric/strategies/launchers/subprocess_script.py,
    ``_hydra_subprocess_cmd``). Under ``-m`` that command line is the whole sweep, and
    ``hydra.run.dir`` is not the job's directory: every child would run the sweep again, in other
    directories. And after a job, Lightning leaves LOCAL_RANK/MASTER_PORT/... in the environment
    and the process group alive, so the next job of a sweep believes its processes were launched
    externally and hangs. Here rank 0 hands its children the exact command line of its job (its
    overrides, its run directory, ``hydra.mode=RUN``) through the environment, the child swaps it
    in before Hydra parses anything, and each job ends by destroying its process group and
    restoring the environment. A child exits 0 after an error or a signal that every rank met
    (rank 0 reports it): a non-zero child makes Lightning's launcher kill rank 0, the sweep.
    Use the basic launcher (jobs one after another) or submitit (SLURM starts the ranks; none
    of this applies) for DDP sweeps; joblib's worker processes are not Hydra apps.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import signal
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch.utils.data import Sampler

log = logging.getLogger(__name__)

# Lightning warns on every mid-epoch resume unless the DataLoader itself is stateful; ours resumes
# through the data module's state (ResumableSampler), which that check cannot see
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")


# --- where the training stream stands ------------------------------------------------------------
def training_position(trainer: L.Trainer | None) -> dict[str, int] | None:
    """``{"epoch": e, "batches": k}``: k training batches of epoch e are done (0 <= k < the
    epoch's batches), or None outside ``fit``. Read from Lightning's progress counters, which are
    also what its fit loop resumes from."""
    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return None
    done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    if done >= trainer.num_training_batches:  # the epoch is over: the next one starts at 0
        return {"epoch": trainer.current_epoch + 1, "batches": 0}
    return {"epoch": trainer.current_epoch, "batches": done}


def gather_per_rank(obj, trainer: L.Trainer | None) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (a collective under DDP: every rank must call it).
    Tensors go through the CPU, so any rank can read any other's."""
    obj = torch.utils._pytree.tree_map(
        lambda x: x.detach().cpu() if isinstance(x, torch.Tensor) else x, obj
    )
    if trainer is None or trainer.world_size == 1 or not dist.is_initialized():
        return [obj]
    gathered = [None] * trainer.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


class ResumableSampler(Sampler):
    """The train loader's sampler, able to start its next pass at a given batch of a given epoch.

    Lightning resumes its fit loop at the saved batch index but, for a map-style dataset, iterates
    the loader from its first batch; and it creates the iterator before setting the sampler's
    epoch. ``resume(epoch, batches)`` makes the next pass that epoch's, minus its first batches.
    """

    def __init__(self, sampler, batch_size: int = 1):
        self.sampler, self.batch_size = sampler, batch_size  # items per batch
        self.skip_batches = 0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):  # DistributedSampler: the shuffle of that epoch
            self.sampler.set_epoch(epoch)

    def resume(self, epoch: int, batches: int) -> None:
        self.set_epoch(epoch)
        self.skip_batches = batches

    def __len__(self) -> int:
        return len(self.sampler)  # a full epoch: Lightning counts the resumed batches as done

    def __iter__(self):
        skip, self.skip_batches = self.skip_batches * self.batch_size, 0
        return itertools.islice(iter(self.sampler), skip, None)


# --- random number generators ------------------------------------------------------------------
def rng_state() -> dict:
    """Every generator a training step may draw from, as plain data (checkpoints load with
    ``weights_only``)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# --- stop on a signal with a resumable checkpoint ------------------------------------------------
class RunInterrupted(Exception):
    """Training stopped on a signal after saving a resumable checkpoint."""

    def __init__(self, signum: int, ckpt_path: str | None, position: dict | None = None):
        self.signum, self.ckpt_path = signum, ckpt_path
        self.exit_code = 128 + signum  # the shell's convention for "killed by signal"
        name = signal.Signals(signum).name
        where = (
            f" after batch {position['batches']} of epoch {position['epoch']}" if position else ""
        )
        if ckpt_path:
            message = (
                f"stopped by {name}{where}; resumable checkpoint: {ckpt_path} "
                f"(continue with ckpt_path={ckpt_path})"
            )
        else:
            message = f"stopped by {name}{where}; no checkpoint was written"
        super().__init__(message)


class CheckpointOnSignal(L.Callback):
    """SIGTERM or Ctrl-C: finish the batch, save ``<dirpath>/<filename>.ckpt``, stop.

    Also keeps, in every checkpoint, what an exact resume needs beyond the weights: the random
    number generators of every rank. (See the module docstring for the whole design.)
    """

    def __init__(self, dirpath: str, filename: str = "last", signals=("SIGTERM", "SIGINT")):
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self.signals = [signal.Signals[s] if isinstance(s, str) else s for s in signals]
        self._received: int | None = None
        self._stopping = False
        self._handlers: dict = {}
        self._rng_to_restore: dict | None = None
        self._resumed: dict | None = None  # the state of the checkpoint this fit resumes
        self._resumed_mid_epoch = False
        self.interrupted: RunInterrupted | None = None

    # signals: set a flag; everything else happens at the next batch boundary
    def _on_signal(self, signum, frame) -> None:
        if self._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
        self._received = signum
        print(
            f"\n{signal.Signals(signum).name} received: saving a resumable checkpoint after this "
            "batch (Ctrl-C again to abort without one)",
            file=sys.stderr,
            flush=True,
        )

    def _install_handlers(self) -> None:
        self._received, self._stopping, self.interrupted = None, False, None
        for signum in self.signals:  # after Lightning registered its own (Trainer._run)
            self._handlers[signum] = signal.getsignal(signum)
            signal.signal(signum, self._on_signal)

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for signum, handler in self._handlers.items():
            signal.signal(signum, handler)
        self._handlers = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._rng_to_restore is not None:  # the first batch after a resume: as if never stopped
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        signum = self._received or 0
        if trainer.world_size > 1:  # the signal may have reached one rank only: agree on a batch
            received = torch.tensor(float(signum), device=trainer.strategy.root_device)
            dist.all_reduce(received, op=dist.ReduceOp.MAX)  # any rank's signal
            signum = int(received.item())
        last_of_epoch = batch_idx + 1 >= trainer.num_training_batches
        if not signum or (last_of_epoch and trainer.num_training_batches > 1):
            return
        self._stopping, self._received = True, signum
        # Lightning's own stop: SIGTERMException once this batch (and a validation due after it)
        # is done, on every rank; ``on_exception`` below writes the checkpoint
        trainer._signal_connector.received_sigterm = True

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not (self._stopping and isinstance(exception, SIGTERMException)):
            return  # an error (a diverged loss, a crash) or a second Ctrl-C: keep the last good one
        position = training_position(trainer)
        partial = self.path.with_name(self.path.name + ".partial")
        trainer.save_checkpoint(
            partial, weights_only=False
        )  # every rank (collectives inside); rank 0 writes
        if trainer.is_global_zero:
            os.replace(partial, self.path)  # never a half-written last.ckpt
        trainer.strategy.barrier("CheckpointOnSignal")
        self.interrupted = RunInterrupted(self._received, str(self.path), position)

    # what an exact resume needs beyond the weights, in every checkpoint
    def state_dict(self) -> dict:
        trainer = getattr(self, "_trainer", None)
        metrics = trainer.callback_metrics if trainer is not None else {}
        monitored = {  # what each plateau scheduler's next step will read
            config.monitor: float(metrics[config.monitor])
            for config in (trainer.lr_scheduler_configs if trainer is not None else [])
            if config.reduce_on_plateau and config.monitor in metrics
        }
        return {
            "rng": gather_per_rank(rng_state(), trainer),
            "position": training_position(trainer),
            "plateau_metrics": monitored,
        }

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer  # state_dict() gets no trainer argument

    def load_state_dict(self, state: dict) -> None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return
        rngs = state.get("rng") or []
        if len(rngs) == trainer.world_size:
            self._rng_to_restore = rngs[trainer.global_rank]
        self._resumed = state

    def on_train_start(self, trainer, pl_module) -> None:
        self._install_handlers()
        resumed, self._resumed = self._resumed, None
        position = (resumed or {}).get("position")
        if not position:
            return
        self._resumed_mid_epoch = position["batches"] > 0
        # An end-of-epoch checkpoint (ModelCheckpoint's, written when validation ends) predates
        # that epoch's ReduceLROnPlateau step, and Lightning resumes at the next epoch without
        # taking it: take it now, with the value it would have read.
        for config in trainer.lr_scheduler_configs:
            value = resumed.get("plateau_metrics", {}).get(config.monitor)
            pending = config.scheduler.last_epoch < position["epoch"]  # one step per epoch done
            if (
                config.reduce_on_plateau
                and config.interval == "epoch"
                and pending
                and value is not None
            ):
                config.scheduler.step(value)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._resumed_mid_epoch:
            # Lightning skips plateau schedulers at the end of the epoch it resumed in, because it
            # assumes that epoch's validation metric is missing; after a mid-epoch resume this
            # epoch validated normally, so let the step happen as in an uninterrupted run
            self._resumed_mid_epoch = False
            trainer.fit_loop.restarting = False


def interruption(trainer: L.Trainer) -> RunInterrupted:
    """The RunInterrupted to raise for a SIGTERMException that left ``trainer.fit``."""
    for callback in trainer.callbacks:
        if isinstance(callback, CheckpointOnSignal) and callback.interrupted is not None:
            return callback.interrupted
    return RunInterrupted(signal.SIGTERM, None)


# --- DDP under Hydra ---------------------------------------------------------------------------
DDP_JOB = "LM_EXPERIMENTS_DDP_JOB"
_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")
_LAUNCH_KEYS = ("hydra.mode", "hydra.run.", "hydra.sweep.", "hydra.output_subdir", "hydra.job.num")
_LAUNCH_GROUPS = ("hydra/launcher", "hydra/sweeper", "hydra.launcher", "hydra.sweeper")


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def ddp_job_argv(argv: list[str] | None = None) -> list[str]:
    """The command line (after the program) that runs exactly the current Hydra job, in its run
    directory, as a single run: what the DDP ranks 1..N-1 of this job must execute."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    argv = sys.argv[1:] if argv is None else argv
    flags = []
    for i, arg in enumerate(argv):  # the config search path and name, as given
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            flags += [arg] if "=" in arg else argv[i : i + 2]
    kept = [
        o
        for o in hydra_cfg.overrides.hydra
        if not o.lstrip("~+").startswith(_LAUNCH_KEYS + _LAUNCH_GROUPS)
    ]
    return [
        *flags,
        *hydra_cfg.overrides.task,  # this job's overrides (a sweep's values for this job)
        *kept,
        f"hydra.run.dir={_quote(hydra_cfg.runtime.output_dir)}",
        "hydra.output_subdir=null",  # rank 0 writes .hydra/
        "hydra.mode=RUN",  # never the sweep again
    ]


def is_ddp_child() -> bool:
    """A rank > 0 process that Lightning's launcher started from one of our jobs (not a process
    that torchrun or SLURM started: those set no job of another process)."""
    parent = json.loads(os.environ.get(DDP_JOB, "{}")).get("parent", os.getpid())
    return parent != os.getpid() and os.environ.get("LOCAL_RANK", "0") != "0"


def rerun_as_ddp_child() -> None:
    """In a rank > 0 process started by Lightning, run rank 0's job instead of the command line
    Lightning built (call before Hydra parses ``sys.argv``)."""
    if is_ddp_child():
        sys.argv[1:] = json.loads(os.environ[DDP_JOB])["argv"]


_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", DDP_JOB)


@contextmanager
def isolated_ddp_job(child_argv: list[str] | None = None):
    """One job's DDP world: children rerun ``child_argv``; afterwards the process group is
    destroyed and the environment restored, so that the next job of a sweep starts a new one."""
    saved = {key: os.environ.get(key) for key in _DDP_ENV}
    owns_group = not (dist.is_available() and dist.is_initialized())
    if child_argv is not None and not is_ddp_child():
        os.environ[DDP_JOB] = json.dumps({"argv": child_argv, "parent": os.getpid()})
    try:
        yield
    finally:
        if owns_group and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
