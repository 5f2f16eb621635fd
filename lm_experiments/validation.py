"""Configuration mistakes as one ``error:`` line naming the key, what is wrong and the fix.

Two places catch them. :func:`check_config` reads the composed config before anything is
instantiated: missing mandatory values (``???``) and values outside their range (sizes, rates,
probabilities), recognised by the key's name wherever it sits (``model.dropout``,
``model.encoder.hidden_dim``). :class:`HydraErrors` rewrites the errors Hydra reports while it
composes the config, before the app runs (an unknown key, an unknown choice), which Hydra
prints as several lines of its own.
"""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Callable, Iterator

from omegaconf import DictConfig, ListConfig, OmegaConf

from lm_experiments.errors import UserError

Rule = tuple[Callable[[object], bool], str, str]  # (accepts, what it must be, an example)


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


POSITIVE_INT: Rule = (_positive_int, "a positive integer", "1")
PROBABILITY: Rule = (lambda v: _number(v) and 0 <= v < 1, "a probability in [0, 1)", "0.1")
POSITIVE: Rule = (lambda v: _number(v) and v > 0, "a positive number", "0.001")
NON_NEGATIVE: Rule = (lambda v: _number(v) and v >= 0, "a number >= 0", "0")
FRACTION: Rule = (lambda v: _number(v) and 0 < v < 1, "a number in (0, 1)", "0.5")

#: rules by the last part of a key (a regular expression matched against the whole name)
RULES: dict[str, Rule] = {
    r".*_dim|num_layers|window|order|batch_size|eval_batch_size|bptt|num_samples": POSITIVE_INT,
    r"max_length|num_words|min_freq": POSITIVE_INT,
    r"(.*_)?dropout": PROBABILITY,
    r"lr": POSITIVE,
    r"weight_decay|momentum|temperature|top_k|gradient_clip_val": NON_NEGATIVE,
    r"factor": FRACTION,
    r"max_epochs": (
        lambda v: isinstance(v, int) and v >= -1,
        "an integer >= -1 (-1: no limit)",
        "10",
    ),
    r"min_epochs": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0", "1"),
}
#: subtrees that hold a run's settings (hydra and paths are Hydra's and the user's business)
CHECKED = ("model", "dataset", "trainer", "debug")


def _leaves(node, prefix: str) -> Iterator[tuple[str, object]]:
    items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else []
    for key, _ in items:
        path = f"{prefix}.{key}" if prefix else str(key)
        if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
            continue  # missing: reported first; a reference: checked where it is defined
        child = node[key]
        if isinstance(child, DictConfig):
            yield from _leaves(child, path)
        elif not isinstance(child, ListConfig):
            yield path, child


def missing_keys(cfg: DictConfig) -> list[str]:
    return sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra."))


def check_values(cfg: DictConfig, subtrees=CHECKED) -> None:
    """Raise a UserError for the first value outside its range."""
    for top in subtrees:
        node = cfg if top == "" else cfg.get(top)  # "": the top level itself (generate's config)
        if isinstance(node, DictConfig):
            for path, value in _leaves(node, top):
                check_value(path, value)


def check_value(path: str, value) -> None:
    name = path.rpartition(".")[2]
    for pattern, (accepts, what, example) in RULES.items():
        if re.fullmatch(pattern, name) and value is not None and not accepts(value):
            raise UserError(f"{path} must be {what} (got {value!r}); pass e.g. {path}={example}")


def check_threads(value) -> None:
    if value in (None, "auto") or _positive_int(value):
        return
    raise UserError(
        f"threads must be auto, null or a positive integer (got {value!r}); pass threads=auto "
        "or threads=1"
    )


def check_config(cfg: DictConfig, subtrees=CHECKED) -> None:
    """Every check, in the order a user fixes them: what is missing, then what is out of range."""
    missing = missing_keys(cfg)
    if missing:
        raise UserError(
            f"{', '.join(missing)}: required but not given; pass {missing[0]}=VALUE on the "
            "command line (`--cfg job` shows every key)"
        )
    check_values(cfg, subtrees)
    if "threads" in cfg:
        check_threads(cfg.threads)


# --- Hydra's composition errors -------------------------------------------------------------------
def translate_hydra_error(text: str) -> str | None:
    """One line for the message Hydra printed, or None when it is not one we know."""
    key = re.search(r"Could not override '([^']+)'", text)
    if key and "not in struct" in text:
        name = key.group(1)
        return (
            f"{name}: no such key in this config; check the spelling (`--cfg job` prints every "
            f"key), or add a new key with +{name}=VALUE"
        )
    if key and "No match in the defaults list" in text:
        name = key.group(1)
        return f"{name}: not a config group of this command (`--help` lists its groups)"
    choice = re.search(r"Could not find '([^']+)'", text)
    if choice:
        options = re.findall(r"^\t(\S+)$", text, flags=re.M)
        listed = f"; choose one of: {', '.join(options)}" if options else ""
        return f"Could not find '{choice.group(1)}' among the config choices{listed}"
    mismatch = re.search(r"Error merging override (\S+)", text)
    if mismatch:
        return f"{mismatch.group(1)}: {text.strip().splitlines()[-1].strip()}"
    return None


class HydraErrors(io.TextIOBase):
    """Holds what is written to stderr until the app starts (:meth:`release`). If Hydra exits
    with an error before that, the held text becomes one ``error:`` line when it is one we
    know, else it is printed as Hydra wrote it."""

    def __init__(self) -> None:
        self.real = sys.stderr
        self.held: list[str] | None = []

    def write(self, text: str) -> int:
        if self.held is None:
            return self.real.write(text)
        self.held.append(text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def release(self) -> None:
        if self.held is not None:
            held, self.held = "".join(self.held), None
            self.real.write(held)
        if sys.stderr is self:
            sys.stderr = self.real

    def __enter__(self) -> HydraErrors:
        sys.stderr = self
        return self

    def __exit__(self, kind, error, tb) -> None:
        if self.held is not None and kind is SystemExit and error.code not in (0, None):
            line = translate_hydra_error("".join(self.held))
            if line is not None:
                self.held = [f"error: {line}\n"]
                error.code = 2
        self.release()


_tap: HydraErrors | None = None


def hydra_errors() -> HydraErrors:
    """The context an entry point runs Hydra in (see :class:`HydraErrors`)."""
    global _tap
    _tap = HydraErrors()
    return _tap


def app_started() -> None:
    """Called first thing by an app: stderr is the user's again."""
    if _tap is not None:
        _tap.release()
