"""A diverging run stops with one line, before it can save or report anything.

The bound: a language model's mean NLL per token (nats) starts near log V (a uniform guess over
the V words of the vocabulary) and falls as it learns. :class:`DivergenceGuard` stops the run
when the training loss of a step (as the task returns it, ``global_loss``: the LM task's is the
global batch's, the supervised tasks' the mean of the ranks' losses, identical on every DDP rank
so that all ranks stop together; else the logged ``train/loss``) or the validation perplexity's
log is not finite or exceeds ``max_loss_factor`` (default 3) times log V: a model three times
worse than guessing has left the region where training makes progress
(``model.optimizer.lr=1e12`` reaches that within a few steps).

A validation perplexity that is infinite because the model gave some tokens probability zero
(an unsmoothed n-gram: ``val/zero_prob`` counts them) is an honest figure, not a divergence.

Lightning runs ModelCheckpoint's hooks after every other callback's, so raising here comes
before the checkpoint of that step or validation: the last checkpoint is the last good one, and
``train.py`` writes no ``metrics.json`` for a run that raised.
"""

from __future__ import annotations

import math

import lightning as L

from lm_experiments.errors import UserError

FIX = (
    "lower model.optimizer.lr or set trainer.gradient_clip_val (nothing was saved after it "
    "diverged: the last checkpoint is the last good one)"
)


class DivergenceGuard(L.Callback):
    """Raise a UserError when training diverges (see the module docstring for the bound)."""

    def __init__(
        self, loss: str = "train/loss", perplexity: str = "val/ppl", max_loss_factor: float = 3.0
    ):
        self.loss, self.perplexity, self.max_loss_factor = loss, perplexity, max_loss_factor

    def bound(self, pl_module) -> float:
        """The largest mean NLL per token (nats) a run may have: factor x log V."""
        vocab_size = getattr(pl_module, "vocab_size", None)
        return self.max_loss_factor * math.log(vocab_size) if vocab_size else math.inf

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # the step's global loss as the task returns it (logged only every log_every_n_steps)
        value = outputs.get("global_loss") if isinstance(outputs, dict) else None
        if value is None:
            value = trainer.callback_metrics.get(self.loss)
        if value is not None:
            self._check(float(value), f"the training loss ({self.loss})", trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics
        ppl = metrics.get(self.perplexity)
        if ppl is None or trainer.sanity_checking:
            return
        ppl = float(ppl)
        stage = self.perplexity.split("/")[0]
        if ppl == math.inf and float(metrics.get(f"{stage}/zero_prob", 0)) > 0:
            return  # tokens given probability zero: an honest infinite perplexity
        nll = math.log(ppl) if ppl > 0 else math.nan
        self._check(
            nll, f"the log of the validation perplexity ({self.perplexity})", trainer, pl_module
        )

    def _check(self, nll: float, what: str, trainer, pl_module) -> None:
        bound = self.bound(pl_module)
        if math.isfinite(nll) and nll <= bound:
            return
        reason = "is not finite" if not math.isfinite(nll) else f"exceeds {bound:.3g}"
        raise UserError(
            f"training diverged: {what} became {nll:.4g} at step {trainer.global_step}, which "
            f"{reason} (the bound is {self.max_loss_factor:g} x log V, V = "
            f"{getattr(pl_module, 'vocab_size', '?')}); {FIX}"
        )
