"""Small helpers for the Hydra entry points: config printing, instantiation, result files."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import hydra
import rich
import rich.syntax
import rich.tree
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf

from lm_experiments import locations
from lm_experiments.errors import UserError

log = logging.getLogger(__name__)

PRINT_ORDER = ("dataset", "model", "trainer", "callbacks", "logger", "paths")


def print_config_tree(cfg: DictConfig) -> None:
    """Print the composed config as a rich tree, one branch per config group."""
    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    keys = [k for k in PRINT_ORDER if k in cfg] + [k for k in cfg if k not in PRINT_ORDER]
    for key in keys:
        branch = tree.add(key, style="bold", guide_style="dim")
        node = cfg[key]
        text = OmegaConf.to_yaml(node, resolve=True) if isinstance(node, DictConfig) else str(node)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    rich.print(tree)


def instantiate(node: DictConfig, **kwargs):
    """``hydra.utils.instantiate``, letting a UserError raised by the target reach the user as it
    is (Hydra wraps every exception of a target in an InstantiationException), and turning a
    target's refusal of its arguments (ValueError, TypeError) into one line naming the target."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, UserError):
            raise cause from None
        if isinstance(cause, ValueError | TypeError):
            target = node.get("_target_", "?") if isinstance(node, DictConfig) else "?"
            raise UserError(
                f"{target} refused its configuration: {cause}; fix the value in its config "
                "group (`--cfg job` prints them)"
            ) from None
        raise


def instantiate_group(group: DictConfig | None) -> list:
    """Instantiate every entry of a config group whose members each have a ``_target_``."""
    if not group:
        return []
    return [instantiate(node) for node in group.values() if "_target_" in node]


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON through a temporary file, so a crash never leaves a half-written result."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def wandb_mode() -> str:
    """``online`` when the user is logged in to W&B (or asked for it), else ``offline``."""
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    netrc = Path.home() / ".netrc"
    if netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore"):
        return "online"
    return "offline"


OmegaConf.register_new_resolver("wandb_mode", wandb_mode, replace=True)
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)
OmegaConf.register_new_resolver("lm_home", locations.home, replace=True)
OmegaConf.register_new_resolver("lm_cache", locations.cache_home, replace=True)
