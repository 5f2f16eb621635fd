"""A trained task from a checkpoint alone: the net rebuilt from ``model_config`` (its
constructor call, saved by the task), the vocabulary from ``vocabulary``, the weights."""

from __future__ import annotations

import importlib

import lightning as L
from hydra.utils import instantiate

from lm_experiments.errors import UserError
from lm_experiments.runtime.checkpoints import model_class, read_checkpoint


def _resolve(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_task(ckpt_path: str) -> L.LightningModule:
    """The task stored in ``ckpt_path``, with its vocabulary, in eval mode on the CPU."""
    checkpoint = read_checkpoint(ckpt_path)
    cls = model_class(checkpoint)
    if issubclass(cls, L.LightningModule) or "model_config" not in checkpoint:
        raise UserError(
            f"ckpt_path: '{ckpt_path}' was written by an older lm_experiments (its model is a "
            f"{cls.__name__} module, not a net with its config): train it again"
        )
    net = instantiate(checkpoint["model_config"])
    task = _resolve(checkpoint["task_class"])(net)
    task.load_state_dict(checkpoint["state_dict"])
    task.on_load_checkpoint(checkpoint)  # the vocabulary
    return task.eval()
