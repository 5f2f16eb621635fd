"""Language modeling with a bidirectional LM (``models/birnn.py``): each direction's sums apart,
and the backward LM's evaluation exact.

Reported: ``ppl_forward`` (comparable with every other family), ``ppl_backward`` and ``ppl`` =
exp(mean of the two NLLs), each a corpus-level exp(sum NLL / tokens) with float64 sums; the
task's own metric holds sum (NLL→ + NLL←) / 2 with the usual token count, so ``val/ppl``
(checkpoints, early stopping, sweeps) selects on the biLM objective.

Carrying state across batches. The stream arrives in [B, bptt] chunks in reading order, but the
backward LM's state for a chunk comes from the chunk *after* it, which has not arrived yet:
truncated BPTT read backwards means the state flows from the end of a column towards its start.

* Evaluation is exact: the forward LM scores each batch with its carried state, as every family;
  the batches are also kept (token ids only), and at the end of the epoch the backward LM reads
  each whole column from its last token back to its first, carrying its state across chunks of
  ``eval_chunk`` steps. So the backward NLL of a column is that of one pass over it, whatever
  ``bptt`` is, and its start state sits at the column's end, a sentence end, as the forward LM's
  sits at the column's start, a sentence start. (Why not per batch: a batch's backward state
  would have to come from batches not yet read. Why not have the loader serve columns in reverse
  chunk order: the forward LM needs them in reading order, and every family shares one loader;
  keeping the ids costs 8 bytes a token.)
* Training cannot wait for the future: within each training batch the backward LM starts from its
  initial state at the batch's right end, so its right context is truncated at the batch boundary
  (as a column start truncates the forward LM's left context). The first token it reads tells it
  whether that start is a true sentence end (<eos>) or a cut. No token ever leaks.
"""

from __future__ import annotations

import torch
from torch import nn

from lm_experiments.data.vocab import IGNORE_INDEX
from lm_experiments.tasks.language_modeling import STAGES, LanguageModeling
from lm_experiments.tasks.perplexity import CorpusPerplexity

DIRECTIONS = ("forward", "backward")


class BidirectionalLanguageModeling(LanguageModeling):
    """The task for a net with ``forward_nll(inputs, targets, state)`` and
    ``backward_nll(inputs, targets, chunk)`` (``BiRNNLM``)."""

    #: steps per piece when the backward LM reads whole columns at the end of an evaluation epoch:
    #: it bounds the [B, eval_chunk, V] scores in memory; the state is carried between pieces, so
    #: it does not change the result
    eval_chunk = 64

    def __init__(self, net, *args, **kwargs):
        super().__init__(net, *args, **kwargs)
        self.direction_ppl = nn.ModuleDict(
            {f"{stage}_{d}": CorpusPerplexity() for stage in STAGES for d in DIRECTIONS}
        )
        self._pending: dict[str, list] = {"val": [], "test": []}  # batches awaiting the backward LM

    def scored_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state, stage: str):
        """Per position (NLL→ + NLL←) / 2, each direction's sums to its own metric. Training:
        the backward LM reads this batch alone (truncated at its right end). Evaluation: the
        backward half is not known yet: NLL→ / 2 now, the rest at epoch end."""
        forward, state = self.net.forward_nll(inputs, targets, state)
        inputs = inputs[:, inputs.size(1) - targets.size(1) :]  # the scored positions' inputs
        mask = targets != IGNORE_INDEX
        tokens = mask.sum()
        self.direction_ppl[f"{stage}_forward"].update(forward[mask].double().sum(), tokens)
        if stage != "train":
            self._kept[stage].keep("nll", forward)
            self._pending[stage].append((inputs, targets))
            return forward / 2, state
        backward = self.net.backward_nll(inputs, targets)
        self.direction_ppl["train_backward"].update(backward[mask].double().sum(), tokens)
        return (forward + backward) / 2, state

    def keep_scores(self, stage: str, nll: torch.Tensor) -> None:
        """Nothing here: ``scored_nll`` keeps the forward LM, ``_finish_backward`` the backward."""

    @torch.no_grad()
    def _finish_backward(self, stage: str) -> None:
        """The exact backward pass over the stage's whole columns, once all batches are in."""
        pending, self._pending[stage] = self._pending[stage], []
        if not pending:
            return
        inputs = torch.cat([x for x, _ in pending], dim=1)  # [B, L]: whole columns
        targets = torch.cat([y for _, y in pending], dim=1)
        backward = self.net.backward_nll(inputs, targets, chunk=self.eval_chunk)
        self._kept[stage].keep("nll_backward", backward)
        mask = targets != IGNORE_INDEX
        nll_sum = backward[mask].double().sum()  # float64, as the task sums
        self.direction_ppl[f"{stage}_backward"].update(nll_sum, mask.sum())
        # the backward halves of the task metric's (NLL→ + NLL←) / 2; tokens were counted already
        getattr(self, f"{stage}_ppl").update(nll_sum / 2, torch.zeros_like(mask.sum()))

    def _log_directions(self, stage: str) -> None:
        out = self.results[stage]
        for d in DIRECTIONS:
            metric = self.direction_ppl[f"{stage}_{d}"]
            total = metric.compute()
            metric.reset()
            # evaluation scores whole splits; a training epoch resumed from a mid-epoch
            # checkpoint restores only the task's sums, so its directions may cover less
            if stage != "train" and int(total["tokens"]) != out["tokens"]:
                raise RuntimeError(
                    f"{stage}: the {d} LM scored {int(total['tokens'])} tokens, not {out['tokens']}"
                )
            out[f"ppl_{d}"] = total["ppl"].item()
            self.log(f"{stage}/ppl_{d}", out[f"ppl_{d}"])

    # --- epochs: start collecting, finish the backward pass before logging ----------------------
    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._pending["val"] = []

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._pending["test"] = []

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        self._log_directions("train")

    def on_validation_epoch_end(self):
        self._finish_backward("val")  # before the score file is written
        super().on_validation_epoch_end()
        self._log_directions("val")

    def on_test_epoch_end(self):
        self._finish_backward("test")
        super().on_test_epoch_end()
        self._log_directions("test")
