"""The contract of a language-model net: a plain ``nn.Module`` (an encoder and a head) that the
language-modeling task (``tasks/language_modeling.py``) trains, scores and samples from.

    train_window: int | None      None: sentence-aligned [B, bptt] columns, state carried;
                                  an int: shuffled windows of that many tokens, nothing carried
    init_state(batch_size, device) -> state | None      the state at a sentence start
    forward(inputs [B, S], state) -> (scores [B, S, V], state)     what generation samples
    token_nll(inputs [B, S], targets [B, T], state) -> (nll [B, T], state)   the last T positions

A net holds no sums, no loss policy and no trainer: those are the task's, identical for every
net. It remembers its constructor arguments (``config``, with ``_target_``), so a checkpoint
can rebuild it without the Hydra config it came from.
"""

from __future__ import annotations

import inspect

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torch.utils._pytree import tree_map

from lm_experiments.models.softmax import logits_nll


def plain(value):
    """Hydra hands lists and dicts over as ListConfig/DictConfig: plain data for checkpoints."""
    if isinstance(value, (ListConfig, DictConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def detach_state(state):
    """The state without its graph: truncated BPTT stops gradients at the batch boundary."""
    return tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, state)


def nll_from_scores(model, inputs: torch.Tensor, targets: torch.Tensor, state=None):
    """-log p(target) at the last T positions from ``model(inputs, state)``'s scores: [B, T]."""
    scores, state = model(inputs, state)
    return logits_nll(scores[:, scores.size(1) - targets.size(1) :], targets), state


class LanguageModelNet(nn.Module):
    #: None: trained on the carried-state column layout; an int: on shuffled windows of that size
    train_window: int | None = None
    #: windows a training step (window-trained nets only); None: ``dataset.batch_size``
    train_batch_size: int | None = None

    def __new__(cls, *args, **kwargs):
        # the arguments of the outermost constructor (a subclass's), before any __init__ runs
        self = super().__new__(cls)
        try:
            bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
        except TypeError:  # unpickling/copying calls __new__ bare; __init__ will complain itself
            return self
        bound.apply_defaults()
        arguments = {}
        for name, value in list(bound.arguments.items())[1:]:  # without self
            kind = inspect.signature(cls.__init__).parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update({k: plain(v) for k, v in value.items()})
            elif kind is not inspect.Parameter.VAR_POSITIONAL:
                arguments[name] = plain(value)
        object.__setattr__(self, "_constructor_arguments", arguments)
        return self

    @property
    def config(self) -> dict:
        """The constructor call as plain data: ``hydra.utils.instantiate(config)`` rebuilds it."""
        cls = type(self)
        return {"_target_": f"{cls.__module__}.{cls.__qualname__}", **self._constructor_arguments}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def init_state(self, batch_size: int, device=None):
        """The state at the start of a column (a sentence start). Stateless nets: None."""
        return None

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs [B, S] -> (scores [B, S, V] for the token after each input, new state)."""
        raise NotImplementedError

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """-log p(target) for each of the last T = targets.size(1) input positions: [B, T].

        The first S - T inputs (when S > T) are context only. Nets override this when they can
        score without materialising all scores (the adaptive softmax, the NNLM's windows)."""
        return nll_from_scores(self, inputs, targets, state)

    detach_state = staticmethod(detach_state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
