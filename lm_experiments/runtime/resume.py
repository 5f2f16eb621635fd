"""What an exact resume needs beyond Lightning's own checkpoint: the random number generators of
every rank, the model's carried state of every rank, the value the next plateau step reads.

The model exposes its part as plain data (``resume_state()`` / ``load_resume_state(state)``:
the state carried from batch to batch, the epoch's NLL sums so far, the seconds timed); this
module gathers it from every rank into the checkpoint and hands each rank its own back. The
model layer never imports this: fault tolerance depends on the model, not the other way round.
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.distributed as dist
from lightning_utilities.core.apply_func import apply_to_collection

from lm_experiments.data.sampler import training_position
from lm_experiments.errors import UserError

CARRIED = "carried"  # the checkpoint key of the model's per-rank resume state


def gather_per_rank(obj, trainer) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` (a collective under DDP: every rank must call it).
    Tensors go through the CPU, so any rank can read any other's."""
    obj = apply_to_collection(obj, torch.Tensor, lambda x: x.detach().cpu())
    if trainer is None or trainer.world_size == 1 or not dist.is_initialized():
        return [obj]
    gathered = [None] * trainer.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


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


# --- the model's carried state -----------------------------------------------------------------
def save_carried(trainer, pl_module, checkpoint: dict) -> None:
    """Inside an epoch, put every rank's ``pl_module.resume_state()`` into ``checkpoint``: what
    the next batch builds on (each rank carries its own columns). A collective under DDP."""
    position = training_position(trainer)
    if not position or position["batches"] == 0 or not hasattr(pl_module, "resume_state"):
        return  # at an epoch boundary the model starts afresh: nothing is carried
    checkpoint[CARRIED] = {
        "position": position,
        "ranks": gather_per_rank(pl_module.resume_state(), trainer),
    }


def restore_carried(trainer, pl_module, checkpoint: dict) -> None:
    """Hand this rank its part of a mid-epoch checkpoint's carried state (when fitting)."""
    carried = checkpoint.get(CARRIED)
    if not carried or not hasattr(pl_module, "load_resume_state"):
        return
    ranks, world = carried["ranks"], trainer.world_size
    if len(ranks) != world:
        raise UserError(
            f"this checkpoint was saved inside an epoch by {len(ranks)} processes, so it "
            f"resumes only on {len(ranks)} (got {world}): set trainer.devices/num_nodes "
            "accordingly, or resume from an end-of-epoch checkpoint"
        )
    pl_module.load_resume_state(ranks[trainer.global_rank])


def plateau_metrics(trainer) -> dict[str, float]:
    """What each plateau scheduler's next step will read, as it stands now."""
    metrics = trainer.callback_metrics
    return {
        config.monitor: float(metrics[config.monitor])
        for config in trainer.lr_scheduler_configs
        if config.reduce_on_plateau and config.monitor in metrics
    }


def take_pending_plateau_steps(trainer, position: dict, monitored: dict[str, float]) -> None:
    """An end-of-epoch checkpoint (ModelCheckpoint's, written when validation ends) predates that
    epoch's ReduceLROnPlateau step, and Lightning resumes at the next epoch without taking it:
    take it now, with the value it would have read."""
    for config in trainer.lr_scheduler_configs:
        value = monitored.get(config.monitor)
        pending = config.scheduler.last_epoch < position["epoch"]  # one step per epoch done
        if (
            config.reduce_on_plateau
            and config.interval == "epoch"
            and pending
            and value is not None
        ):
            config.scheduler.step(value)
