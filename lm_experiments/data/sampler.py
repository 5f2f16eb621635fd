"""Where the training stream stands, and a sampler that can start a pass in the middle.

A checkpoint saved inside an epoch must resume at its next batch. Lightning resumes its fit
loop at the saved batch index but, for a map-style dataset, iterates the loader from its first
batch, and it creates the iterator before setting the sampler's epoch; the data module saves
:func:`training_position` in its ``state_dict`` and wraps its train sampler in
:class:`ResumableSampler` so that the resumed pass starts where the saved one stopped.
"""

from __future__ import annotations

import itertools

from lightning.pytorch.trainer.states import TrainerFn
from torch.utils.data import Sampler

from lm_experiments.runtime.compat import batches_done


def training_position(trainer) -> dict[str, int] | None:
    """``{"epoch": e, "batches": k}``: k training batches of epoch e are done (0 <= k < the
    epoch's batches), or None outside ``fit``. Read from Lightning's progress counters, which are
    also what its fit loop resumes from."""
    if trainer is None or trainer.state.fn != TrainerFn.FITTING:
        return None
    done = batches_done(trainer)
    if done >= trainer.num_training_batches:  # the epoch is over: the next one starts at 0
        return {"epoch": trainer.current_epoch + 1, "batches": 0}
    return {"epoch": trainer.current_epoch, "batches": done}


class ResumableSampler(Sampler):
    """The train loader's sampler, able to start its next pass at a given batch of a given epoch:
    ``resume(epoch, batches)`` makes the next pass that epoch's, minus its first batches."""

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
