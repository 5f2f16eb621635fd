"""Reading checkpoints the user points at, with errors that say what to do."""

from __future__ import annotations

from pathlib import Path

import torch

from lm_experiments.errors import UserError


def read_checkpoint(path: str) -> dict:
    """Load a Lightning checkpoint on the CPU, or explain in one line why it cannot be."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"ckpt_path: no such file '{file}'; pass the path of a .ckpt file")
    try:
        # weights_only: a checkpoint is data; our models keep only plain values in it
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise UserError(
            f"ckpt_path: '{file}' is not a readable checkpoint ({type(err).__name__}); it may be "
            "truncated or corrupt: use last.ckpt or another checkpoint of the run"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"ckpt_path: '{file}' is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def model_class(checkpoint: dict):
    """The LanguageModel subclass that wrote ``checkpoint``."""
    import importlib

    path = checkpoint.get("model_class")
    if not path:
        raise UserError("the checkpoint was not written by lm_experiments (no model_class)")
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
