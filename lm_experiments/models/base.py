"""Compatibility: a family written as its own LightningModule, as every family was before the
nets and the task split (``models/net.py``, ``tasks/language_modeling.py``).

``LanguageModel`` is the language-modeling task whose net is the module itself: a subclass
implements ``forward``/``init_state`` (and may override ``token_nll``) and gets the task's
accounting, checkpoints and generation unchanged. New families are nets instead; this stays
until the last one written this way (the n-gram) has moved.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from lm_experiments.models.net import nll_from_scores
from lm_experiments.tasks.language_modeling import (  # noqa: F401  (their old home)
    LanguageModeling,
    carried,
    check_vocabulary,
)
from lm_experiments.tasks.perplexity import CorpusPerplexity  # noqa: F401


class LanguageModel(LanguageModeling):
    """The task and its own net in one LightningModule."""

    #: None: train on the carried-state column layout; an int: on shuffled windows of that size
    train_window: int | None = None

    def __init__(self, vocab_size: int, optimizer=None, scheduler=None):
        super().__init__(None, optimizer, scheduler)
        # every family's __init__ arguments, gathered up the call chain; the optimizer and
        # scheduler factories stay out, so checkpoints hold only plain data (weights_only loads)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        for key, value in self.hparams.items():  # Hydra passes lists as ListConfig: store plain
            if isinstance(value, (ListConfig, DictConfig)):
                self.hparams[key] = OmegaConf.to_container(value)
        self.vocab_size = vocab_size

    def init_state(self, batch_size: int, device=None):
        """The state at the start of a column (a sentence start). Stateless families: None."""
        return None

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs [B, S] -> (logits [B, S, V] for the token after each input, new state)."""
        raise NotImplementedError

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """-log p(target) for each of the last T = targets.size(1) input positions: [B, T]."""
        return nll_from_scores(self, inputs, targets, state)
