"""The contract every model family shares.

A family says how it turns inputs into next-token logits (``forward``) and what state it carries
from one batch to the next (``init_state``); this base owns everything that must be identical
across families so that their perplexities are comparable:

* the NLL sum (float64) and the count of scored tokens per split, summed over batches and DDP
  ranks; perplexity = exp(sum NLL / scored tokens) -- never a mean of per-batch perplexities;
* the carried state: reset at the start of every epoch of every stage, detached between batches
  (truncated BPTT), handed to the next batch on its device in float32 (``carried``);
* logging, the vocabulary in checkpoints, and generation.
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.distributed
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils._pytree import tree_map
from torchmetrics import Metric

from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX, Vocabulary
from lm_experiments.errors import UserError
from lm_experiments.models.softmax import logits_nll


def carried(state, device: torch.device):
    """A state carried from the last batch, ready for the next: on the batch's device (a resumed
    one is restored before Lightning moves the model to its GPU), floating tensors in float32
    (autocast may have returned them in bf16/fp16; it casts them again if the layer wants that,
    and a checkpoint saved under one precision resumes under another)."""
    return tree_map(
        lambda x: (
            x.to(device, torch.float32 if x.is_floating_point() else x.dtype)
            if isinstance(x, torch.Tensor)
            else x
        ),
        state,
    )


class CorpusPerplexity(Metric):
    """exp(sum of NLL / number of scored tokens); its sums add up across DDP ranks.

    It also counts the tokens given probability zero (an unsmoothed n-gram's unseen n-grams):
    their NLL is inf, so is the perplexity, and the count says how many made it so."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("zero_prob", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, tokens: torch.Tensor, zero_prob=0) -> None:
        self.nll_sum += nll_sum.detach().double()
        self.tokens += tokens.detach().long()
        self.zero_prob += zero_prob

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "ppl": torch.exp(self.nll_sum / self.tokens),
            "tokens": self.tokens.clone(),
            "zero_prob": self.zero_prob.clone(),
        }


def check_vocabulary(saved: list[str], vocab: Vocabulary | None) -> None:
    if vocab is not None and saved != vocab.itos:
        raise UserError(
            f"the checkpoint's vocabulary ({len(saved)} tokens) does not match this dataset's "
            f"({len(vocab)} tokens): use the dataset (and dataset.min_freq/max_size) the "
            "checkpoint was trained on, or train a new model"
        )


class LanguageModel(L.LightningModule):
    """Base LightningModule: a family subclasses it and implements ``forward``/``init_state``."""

    #: None: train on the carried-state column layout; an int: on shuffled windows of that size
    train_window: int | None = None

    def __init__(self, vocab_size: int, optimizer=None, scheduler=None):
        super().__init__()
        # every family's __init__ arguments, gathered up the call chain; the optimizer and
        # scheduler factories stay out, so checkpoints hold only plain data (weights_only loads)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"], logger=False)
        for key, value in self.hparams.items():  # Hydra passes lists as ListConfig: store plain
            if isinstance(value, (ListConfig, DictConfig)):
                self.hparams[key] = OmegaConf.to_container(value)
        self.vocab_size = vocab_size
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.vocab: Vocabulary | None = None  # attached by train.py; saved in every checkpoint
        self.oracle_ppl: dict[str, float] = {}  # per stage, when the corpus knows it
        self.train_ppl, self.val_ppl, self.test_ppl = (CorpusPerplexity() for _ in range(3))
        self.register_buffer("best_val_ppl", torch.tensor(math.inf, dtype=torch.float64))
        self._state: dict[str, object] = {}
        self._train_seconds = 0.0
        #: the latest corpus-level figures per stage, in full precision (read by train.py)
        self.results: dict[str, dict[str, float]] = {}

    # --- what a family implements ---------------------------------------------------------------
    def init_state(self, batch_size: int):
        """The state at the start of a column (a sentence start). Stateless families: None."""
        return None

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs [B, S] -> (logits [B, S, V] for the token after each input, new state)."""
        raise NotImplementedError

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """-log p(target) for each of the last T = targets.size(1) input positions: [B, T].

        The first S - T inputs (when S > T) are context only. Families override this when they
        can score without materialising all logits (n-gram, adaptive softmax).
        """
        logits, state = self(inputs, state)
        return logits_nll(logits[:, -targets.size(1) :], targets), state  # [B, T]

    def detach_state(self, state):
        return tree_map(lambda x: x.detach() if isinstance(x, torch.Tensor) else x, state)

    # --- the shared step ------------------------------------------------------------------------
    def _scored(self, batch, stage: str):
        """NLL sum and scored-token count of one batch, carrying the stage's state."""
        inputs, targets = batch
        windows = stage == "train" and self.train_window is not None
        state = self._state.get(stage)
        if state is None or windows:  # shuffled windows carry nothing from batch to batch
            state = self.init_state(inputs.size(0))
        else:
            state = carried(state, inputs.device)
        nll, state = self.token_nll(inputs, targets, state)
        if not windows:
            self._state[stage] = self.detach_state(state)
        mask = targets != IGNORE_INDEX
        nll = nll.masked_fill(~mask, 0.0)  # [B, T]
        nll_sum = nll.float().sum()  # the loss's sum (float32, differentiable)
        tokens = mask.sum()
        zero_prob = (torch.isinf(nll) & mask).sum()
        # the perplexity's sum adds the tokens' NLLs in float64, so it does not depend on how a
        # split is cut into batches or ranks (a float32 batch sum would, in its 7th digit)
        getattr(self, f"{stage}_ppl").update(nll.detach().double().sum(), tokens, zero_prob)
        return nll_sum, tokens

    def training_step(self, batch, batch_idx):
        nll_sum, tokens = self._scored(batch, "train")
        world = self.trainer.world_size if self._trainer is not None else 1
        if world == 1:
            loss = nll_sum / tokens.clamp(min=1)  # the mean NLL of the batch's scored tokens
            global_loss = loss.detach()
        else:
            # DDP averages the ranks' gradients. Dividing this rank's NLL sum by the mean tokens
            # per rank (all ranks' tokens / world) makes that average the gradient of
            # sum NLL / sum tokens over the global batch, exactly as one process with the whole
            # batch, even when ranks score different numbers of tokens (padded column ends)
            totals = torch.stack([nll_sum.detach().double(), tokens.double()])  # [2]
            torch.distributed.all_reduce(totals)  # sum over ranks
            loss = nll_sum * world / totals[1].clamp(min=1)
            global_loss = (totals[0] / totals[1].clamp(min=1)).float()
        self.log("train/loss", global_loss, prog_bar=True, batch_size=batch[0].size(0))
        return loss

    def validation_step(self, batch, batch_idx):
        self._scored(batch, "val")

    def test_step(self, batch, batch_idx):
        self._scored(batch, "test")

    # --- epochs: reset the carried state, report corpus-level perplexity ---------------------------
    def on_train_epoch_start(self):
        self._state["train"] = None

    def on_validation_epoch_start(self):
        self._state["val"] = None

    def on_test_epoch_start(self):
        self._state["test"] = None

    def on_train_batch_start(self, batch, batch_idx):
        self._batch_started = time.perf_counter()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self._train_seconds += time.perf_counter() - self._batch_started

    def _log_perplexity(self, stage: str) -> dict[str, float]:
        """Log the stage's corpus perplexity (all ranks' sums) and reset its sums."""
        metric = getattr(self, f"{stage}_ppl")
        total = metric.compute()  # sums over ranks
        metric.reset()
        out = {"ppl": total["ppl"].item(), "tokens": int(total["tokens"].item())}
        if total["zero_prob"] > 0:  # only models that can assign zero (an unsmoothed n-gram)
            out["zero_prob"] = int(total["zero_prob"].item())
        oracle = self.oracle_ppl.get(stage)
        if oracle is not None:
            out.update(oracle_ppl=oracle, ppl_ratio=out["ppl"] / oracle)
        for key, value in out.items():
            self.log(f"{stage}/{key}", float(value), prog_bar=key == "ppl" and stage != "train")
        self.results[stage] = out
        return out

    def on_train_epoch_end(self):
        out = self._log_perplexity("train")
        if self._train_seconds > 0:
            # each rank timed its own batches; all ranks' tokens went through in that time
            out["tokens_per_sec"] = out["tokens"] / self._train_seconds
            self.log("train/tokens_per_sec", out["tokens_per_sec"])
        self._train_seconds = 0.0

    def on_validation_epoch_end(self):
        out = self._log_perplexity("val")
        if not self.trainer.sanity_checking:
            self.best_val_ppl.fill_(min(self.best_val_ppl.item(), out["ppl"]))
        out["ppl_best"] = self.best_val_ppl.item()
        self.log("val/ppl_best", out["ppl_best"], prog_bar=True)

    def on_test_epoch_end(self):
        self._log_perplexity("test")

    # --- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        if self.optimizer_factory is None:
            return None
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/ppl", "interval": "epoch"},
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # --- checkpoints carry the vocabulary and the class that reads them ---------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.vocab is not None:
            checkpoint["vocabulary"] = self.vocab.itos
        cls = type(self)
        checkpoint["model_class"] = f"{cls.__module__}.{cls.__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("vocabulary")
        if saved is not None:
            check_vocabulary(saved, self.vocab)
            if self.vocab is None:
                self.vocab = Vocabulary(saved)

    # --- what a resume inside an epoch needs (saved per rank by lm_experiments/runtime) ----------
    def resume_state(self) -> dict:
        """What the next training batch builds on, as plain data: the carried state of this
        rank's columns, the epoch's sums so far (every CorpusPerplexity, e.g. per direction) and
        the seconds timed."""
        return {
            "state": self._state.get("train"),
            "sums": {
                name: (metric.nll_sum, metric.tokens)
                for name, metric in self.named_modules()
                if isinstance(metric, CorpusPerplexity)
            },
            "train_seconds": self._train_seconds,
        }

    def load_resume_state(self, state: dict) -> None:
        """Continue from :meth:`resume_state` (this rank's)."""
        self._state["train"] = state["state"]  # to the model's device at its first batch
        metrics = dict(self.named_modules())
        for name, (nll_sum, tokens) in state["sums"].items():
            metrics[name].nll_sum, metrics[name].tokens = (
                nll_sum.to(self.device),
                tokens.to(self.device),
            )
        self._train_seconds = state["train_seconds"]

    # --- generation: feed each sampled token back in ----------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        num_samples: int = 1,
        max_length: int = 50,
        temperature: float = 1.0,
        top_k: int = 0,
        generator: torch.Generator | None = None,
    ) -> list[list[int]]:
        """Sample sentences from the start-of-sentence context until ``<eos>`` or ``max_length``
        tokens; returns each sentence's ids without the ``<eos>``.

        ``temperature`` 0 is greedy decoding; ``top_k`` > 0 samples among the k likeliest.
        """
        was_training = self.training
        self.eval()
        state = self.init_state(num_samples)
        token = torch.full((num_samples, 1), EOS_ID, dtype=torch.long, device=self.device)
        sentences: list[list[int]] = [[] for _ in range(num_samples)]
        finished = torch.zeros(num_samples, dtype=torch.bool)
        for _ in range(max_length):
            logits, state = self(token, state)
            logits = logits[:, -1].float()  # [num_samples, V]
            if temperature == 0:
                next_token = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k > 0:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
                    logits = logits.masked_fill(logits < kth, -math.inf)
                probs = torch.softmax(logits, dim=-1).cpu()
                next_token = torch.multinomial(probs, 1, generator=generator).to(self.device)
            for i, t in enumerate(next_token.squeeze(1).tolist()):
                if not finished[i]:
                    if t == EOS_ID:
                        finished[i] = True
                    else:
                        sentences[i].append(t)
            if finished.all():
                break
            token = next_token
        self.train(was_training)
        return sentences
