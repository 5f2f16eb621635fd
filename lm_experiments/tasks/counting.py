"""Counting once: how the language-modeling task fits a count-based net (the n-gram).

A count-based net (``count_based = True``: ``models/ngram/net.py``) has no parameters and no
loss; there is nothing for a training loop to do. So ``train.py`` runs ``count_and_validate``
instead of ``trainer.fit``: it hands the task to ``trainer.validate``, and as the trainer sets
up (the task's ``setup``, where the DDP ranks exist) ``fit_once`` lets each rank count its shard
of the training id stream -- the data module's stream itself, not batches of a dataloader --
merge the ranks' counts (an all-gather) and estimate the same tables as one process would. Or,
with ``arpa_path``, the net reads its tables from an ARPA file and nothing is counted.
Validation, the one checkpoint (the tables, not the tokens) and the test then go through the
task's perplexity accounting over exactly the tokens the neural models score.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch.distributed as dist

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.errors import UserError

#: the counting pass's train figures, saved beside the tables (the test of a resumed run
#: reports them as the run that counted did)
TRAIN_RESULTS = "ngram_train"


def shard(stream: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s contiguous part of ``stream``, cut at sentence ends into ``world`` parts of
    about equal length: every sentence in exactly one part."""
    if world == 1:
        return stream
    ends = np.flatnonzero(stream == EOS_ID) + 1  # where a sentence ends
    if len(ends) == 0:
        return stream if rank == 0 else stream[:0]
    targets = np.arange(1, world) * (len(stream) / world)
    cuts = ends[np.minimum(np.searchsorted(ends, targets), len(ends) - 1)]
    bounds = np.concatenate([[0], cuts, [len(stream)]])
    return stream[bounds[rank] : bounds[rank + 1]]


def all_gather(obj, world: int) -> list:
    """Every rank's ``obj`` (a collective: every rank calls it)."""
    if world == 1 or not dist.is_initialized():
        return [obj]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def fit_once(task) -> tuple[float, np.ndarray | None]:
    """Fit ``task.net`` unless it holds its tables already (a checkpoint, an earlier stage):
    (seconds, the shard of the training stream this rank counted, or None)."""
    net, trainer = task.net, task.trainer
    if net.fitted:
        return 0.0, None
    if net.arpa_path is not None:
        return net.read_arpa(task.vocab), None
    datamodule = trainer.datamodule
    if datamodule is None or not hasattr(datamodule, "streams"):
        raise UserError("the n-gram counts the data module's training stream: pass datamodule=")
    world = trainer.world_size
    mine = shard(np.asarray(datamodule.streams["train"]), trainer.global_rank, world)
    return net.fit(mine, lambda counts: all_gather(counts, world)), mine


def count_and_validate(
    task, trainer, datamodule, ckpt_path=None, checkpoint=None, train=True, validate=True
):
    """What ``trainer.fit`` is for a neural model: the tables from ``checkpoint`` (read from
    ``ckpt_path``; nothing counted) or counted in ``setup``; validation; one checkpoint
    (``last.ckpt``) of a newly counted model. Returns the checkpoint that holds the model (None
    when none does)."""
    if checkpoint is not None:
        task.on_load_checkpoint(checkpoint)
        if train and TRAIN_RESULTS in checkpoint:  # the counting pass's figures, as counted
            task.results["train"] = dict(checkpoint[TRAIN_RESULTS])
    if train or validate:
        trainer.validate(task, datamodule=datamodule, verbose=False)
    folder = getattr(trainer.checkpoint_callback, "dirpath", None)
    if ckpt_path or not train or folder is None:
        return ckpt_path
    path = str(Path(folder) / "last.ckpt")
    trainer.save_checkpoint(path)  # train.py's AtomicCheckpointIO: no in-memory copy
    return path
