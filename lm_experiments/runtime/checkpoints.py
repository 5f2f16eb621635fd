"""Checkpoints: read the one a user points at, know the model it holds, never half-write one.

* :func:`read_checkpoint` loads a checkpoint or says in one line why it cannot.
* A checkpoint knows its model: ``model_group`` (the composed ``model`` config of the run that
  wrote it, optimizer and scheduler included, and the choice's name; written by
  :class:`ModelGroupInCheckpoint`), else ``model_config`` (the net's constructor config), else
  ``model_class`` + ``hyper_parameters``. :func:`model_from_checkpoint` makes ``train=false
  ckpt_path=...`` and resuming build that model unless the user asked for another one, and
  :func:`check_fits` refuses, in one line, a checkpoint that is not the model asked for.
* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file, fsyncs it and renames
  it over the old one: a kill during a save leaves the previous checkpoint, a full disk gives one
  line and loses nothing already saved.
"""

from __future__ import annotations

import errno
import importlib
import logging
import os
from pathlib import Path

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf, open_dict

from lm_experiments.errors import UserError

log = logging.getLogger(__name__)

#: the ``model`` keys that choose the optimisation, not the model a checkpoint holds
_NOT_THE_MODEL = ("optimizer", "scheduler")


def read_checkpoint(path: str, mmap: bool = False) -> dict:
    """Load a Lightning checkpoint on the CPU, or explain in one line why it cannot be.
    ``mmap``: tensors memory-mapped from the file, not copied (a large n-gram's tables)."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"ckpt_path: no such file '{file}'; pass the path of a .ckpt file")
    try:
        # weights_only: a checkpoint is data; our models keep only plain values in it
        checkpoint = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises many types for a truncated or foreign file
        raise UserError(
            f"ckpt_path: '{file}' is not a readable checkpoint ({type(err).__name__}); it may be "
            "truncated or corrupt: use last.ckpt or another checkpoint of the run"
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise UserError(f"ckpt_path: '{file}' is not a Lightning checkpoint (no state_dict)")
    return checkpoint


def model_class(checkpoint: dict):
    """The class of the net (or module) that wrote ``checkpoint``."""
    path = checkpoint.get("model_class")
    if not path:
        raise UserError("the checkpoint was not written by lm_experiments (no model_class)")
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise UserError(
            f"the checkpoint's model {path} no longer exists (written by an older "
            "lm_experiments): train it again"
        ) from None


# --- the model a checkpoint holds ----------------------------------------------------------------
class ModelGroupInCheckpoint(L.Callback):
    """Writes the run's ``model`` config (resolved) and its choice's name into every checkpoint,
    so that evaluating or resuming it needs no ``model=``."""

    def __init__(self, model: DictConfig, choice: str | None):
        self.group = {"choice": choice, "config": OmegaConf.to_container(model, resolve=True)}

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint["model_group"] = self.group


def saved_model(checkpoint: dict) -> tuple[str | None, dict]:
    """(the choice's name or None, the model config with ``_target_``) that wrote
    ``checkpoint``; the config has no optimizer or scheduler unless the run's whole group was
    saved."""
    if "model_group" in checkpoint:
        group = checkpoint["model_group"]
        return group.get("choice"), dict(group["config"])
    if "model_config" in checkpoint:
        return None, dict(checkpoint["model_config"])
    if "model_class" not in checkpoint:
        raise UserError("ckpt_path: the checkpoint was not written by lm_experiments (no model)")
    params = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "vocab_size"}
    return None, {"_target_": checkpoint["model_class"], **params}


def describe(target: str, params: dict) -> str:
    """``RNNLM(cell=lstm, hidden_dim=32, ...)``: a model in one line."""
    shown = ", ".join(
        f"{k}={v}" for k, v in sorted(params.items()) if k not in (*_NOT_THE_MODEL, "_target_")
    )
    return f"{target.rpartition('.')[2]}({shown})"


def model_overrides(overrides: list[str]) -> list[str]:
    """The command-line overrides that choose the model (not its optimisation)."""
    chosen = []
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key in ("model", "experiment") or (
            key.startswith("model.") and key.split(".")[1] not in _NOT_THE_MODEL
        ):
            chosen.append(override)
    return chosen


def model_from_checkpoint(cfg: DictConfig, checkpoint: dict, overrides: list[str]) -> str | None:
    """Unless ``overrides`` choose the model, set ``cfg.model`` to the checkpoint's (keeping the
    composed optimizer and scheduler when the checkpoint does not hold them); return the model's
    name for the report (the saved choice's, else the class's), or None for the asked model."""
    if model_overrides(overrides):
        return None  # the user asked for a model: check_fits compares it with the checkpoint
    choice, saved = saved_model(checkpoint)
    for key in _NOT_THE_MODEL:
        if key not in saved and key in cfg.model:
            saved[key] = OmegaConf.to_container(cfg.model[key])
    with open_dict(cfg):
        cfg.model = OmegaConf.create(saved)
        if checkpoint.get("task_class") and "task" in cfg:  # e.g. a biRNN's bidirectional task
            cfg.task._target_ = checkpoint["task_class"]
    log.info("model from the checkpoint: %s", describe(saved["_target_"], saved))
    return choice or saved["_target_"].rpartition(".")[2].lower()


def check_fits(asked: DictConfig, model: torch.nn.Module, checkpoint: dict) -> None:
    """Refuse, in one line, a checkpoint of another family or other sizes than the model built
    from ``asked`` (the ``model`` config)."""
    _, saved = saved_model(checkpoint)
    shapes = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # model_config names the net inside the module; model_group and model_class the module
    same_family = "model_group" not in checkpoint and "model_config" in checkpoint
    same_family = same_family or saved["_target_"] == asked.get("_target_")
    asked_params = OmegaConf.to_container(asked, resolve=True)
    if same_family and shapes == mine and not _other_settings(saved, asked_params, checkpoint):
        return
    raise UserError(
        f"ckpt_path: the checkpoint holds {describe(saved['_target_'], saved)}, but the "
        f"configuration asks for {describe(str(asked.get('_target_')), asked_params)}; drop "
        "the model=/model.* overrides to use the checkpoint's model as it is"
    )


def _other_settings(saved: dict, asked: dict, checkpoint: dict) -> list[str]:
    """The settings the checkpoint's model fixes beyond its tensors (a net's
    ``checkpoint_settings``: the n-gram's order, smoothing, ...) that differ from the asked."""
    net = model_class(checkpoint) if "model_class" in checkpoint else None
    keys = getattr(net, "checkpoint_settings", ())
    return [k for k in keys if k in saved and saved[k] != asked.get(k)]


# --- writing ------------------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into ``.<name>.tmp`` beside the target, fsync, rename over the target: the
    target is the old checkpoint or the new one, never a part of one, whatever kills the write."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.tmp")
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(partial, path)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)  # the rename itself survives a power cut
            finally:
                os.close(directory)
        except OSError as err:
            partial.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise UserError(
                    f"no space left on the device to save {path} (the checkpoints saved before "
                    f"are intact); free space in {path.parent} or point paths.log_dir elsewhere, "
                    "then resume from the last checkpoint"
                ) from None
            raise
