"""Stop on a signal with a resumable checkpoint, and resume it exactly.

Stopping and resuming (``CheckpointOnSignal``)
    On SIGTERM (a scheduler's preemption, ``kill``) or the first Ctrl-C, training finishes the
    batch it is in, writes a resumable ``last.ckpt`` and exits (status 128 + the signal number);
    ``ckpt_path=<run>/checkpoints/last.ckpt`` continues it, and the resumed run reaches exactly the
    metrics of an uninterrupted one. What that takes, beyond Lightning's own resume:

    * the checkpoint is written at a batch boundary *inside* an epoch: if the signal comes during
      an epoch's last batch, the epoch's validation, epoch-end hooks and LR-scheduler step run
      first and the run stops after the next batch (resuming Lightning 2.6.6 from its own
      end-of-epoch SIGTERM checkpoint would skip the whole next epoch);
    * the model's state carried from batch to batch (the hidden state of every column, the
      epoch's NLL sums so far: its ``resume_state()``) is saved per rank (``resume.py``), and the
      data module saves where the epoch stands, so the train loader restarts at the next batch
      rather than at batch 0 of a map-style dataset (``data/sampler.py``);
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

The Lightning internals this needs are in ``compat.py``; DDP under Hydra is ``ddp.py``.
"""

from __future__ import annotations

import logging
import signal
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lm_experiments.data.sampler import training_position
from lm_experiments.errors import RunInterrupted
from lm_experiments.runtime import compat
from lm_experiments.runtime.resume import (
    gather_per_rank,
    plateau_metrics,
    restore_carried,
    rng_state,
    save_carried,
    set_rng_state,
    take_pending_plateau_steps,
)

log = logging.getLogger(__name__)

# Lightning warns on every mid-epoch resume unless the DataLoader itself is stateful; ours resumes
# through the data module's state (data/sampler.py), which that check cannot see
warnings.filterwarnings("ignore", message=compat.MID_EPOCH_RESUME_WARNING)


class CheckpointOnSignal(L.Callback):
    """SIGTERM or Ctrl-C: finish the batch, save ``<dirpath>/<filename>.ckpt``, stop.

    Also keeps, in every checkpoint, what an exact resume needs beyond the weights (``resume.py``):
    the random number generators and the model's carried state of every rank. (See the module
    docstring for the whole design.)
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
        compat.stop_after_this_batch(trainer)  # on every rank; ``on_exception`` saves

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not (self._stopping and isinstance(exception, SIGTERMException)):
            return  # an error (a diverged loss, a crash) or a second Ctrl-C: keep the last good one
        position = training_position(trainer)
        # every rank (collectives inside); rank 0 writes, atomically (checkpoints.py)
        trainer.save_checkpoint(self.path, weights_only=False)
        trainer.strategy.barrier("CheckpointOnSignal")
        self.interrupted = RunInterrupted(self._received, str(self.path), position)

    # what an exact resume needs beyond the weights, in every checkpoint
    def state_dict(self) -> dict:
        trainer = getattr(self, "_trainer", None)
        return {
            "rng": gather_per_rank(rng_state(), trainer),
            "position": training_position(trainer),
            "plateau_metrics": plateau_metrics(trainer) if trainer is not None else {},
        }

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        save_carried(trainer, pl_module, checkpoint)

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer  # state_dict() gets no trainer argument

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        restore_carried(trainer, pl_module, checkpoint)  # Lightning calls this only in fit

    def load_state_dict(self, state: dict) -> None:
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
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
        take_pending_plateau_steps(trainer, position, resumed.get("plateau_metrics", {}))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._resumed_mid_epoch:
            # Lightning skips plateau schedulers at the end of the epoch it resumed in, because it
            # assumes that epoch's validation metric is missing; after a mid-epoch resume this
            # epoch validated normally, so let the step happen as in an uninterrupted run
            self._resumed_mid_epoch = False
            compat.end_resumed_epoch_normally(trainer)


def interruption(trainer: L.Trainer) -> RunInterrupted:
    """The RunInterrupted to raise for a SIGTERMException that left ``trainer.fit``."""
    for callback in trainer.callbacks:
        if isinstance(callback, CheckpointOnSignal) and callback.interrupted is not None:
            return callback.interrupted
    return RunInterrupted(signal.SIGTERM, None)
