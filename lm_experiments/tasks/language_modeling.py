"""Language modeling: the one LightningModule that trains, scores and samples every LM net.

A net (``models/net.py``: an encoder and a head) says how inputs become next-token scores and
what state it carries; this task owns everything that must be identical across nets so that
their perplexities are comparable:

* teacher forcing: every batch is (inputs, targets) with targets[t] = the token after inputs[t];
  the net reads the true tokens, whatever it predicted;
* truncated BPTT and the carried state: one state per stage, reset at the start of every epoch,
  detached between batches (gradients flow back ``bptt`` steps, the state flows on), handed to
  the next batch on its device in float32 (``carried``); window-trained nets carry nothing;
* the NLL sum (float64) and the count of scored tokens per split (``CorpusPerplexity``), summed
  over batches and DDP ranks; perplexity = exp(sum NLL / scored tokens), and a training loss
  whose DDP gradient average equals one process with the whole batch;
* logging, ``val/ppl_best``, tokens/s, checkpoint metadata (the vocabulary, the net's class and
  constructor config), what a mid-epoch resume needs (``resume_state``), and generation;
* a count-based net (the n-gram) is not trained by a loop: it is counted once from the training
  stream as the trainer sets up, and its tables go into the checkpoint (``counting.py``).
"""

from __future__ import annotations

import math
import time

import lightning as L
import torch
import torch.distributed
from torch.utils._pytree import tree_map

from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX, Vocabulary
from lm_experiments.errors import UserError
from lm_experiments.models.net import LanguageModelNet, detach_state
from lm_experiments.tasks import counting
from lm_experiments.tasks.perplexity import CorpusPerplexity
from lm_experiments.tasks.scoring import KeptScores, write_epoch_scores
from lm_experiments.tasks.step_log import logs_this_step

STAGES = ("train", "val", "test")


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


def check_vocabulary(saved: list[str], vocab: Vocabulary | None) -> None:
    if vocab is not None and saved != vocab.itos:
        raise UserError(
            f"the checkpoint's vocabulary ({len(saved)} tokens) does not match this dataset's "
            f"({len(vocab)} tokens): use the dataset (and dataset.min_freq/max_size) the "
            "checkpoint was trained on, or train a new model"
        )


def class_path(obj) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


class LanguageModeling(L.LightningModule):
    """Wraps a ``LanguageModelNet`` (``self.net``); ``optimizer``/``scheduler`` are factories
    (Hydra partials) called with the parameters / the optimizer."""

    def __init__(
        self,
        net: LanguageModelNet,
        optimizer=None,
        scheduler=None,
        vocab: Vocabulary | None = None,
        oracle_ppl: dict[str, float] | None = None,
    ):
        super().__init__()
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.vocab = vocab  # saved in every checkpoint
        self.oracle_ppl = dict(oracle_ppl or {})  # per stage, when the corpus knows it
        self.train_ppl, self.val_ppl, self.test_ppl = (CorpusPerplexity() for _ in STAGES)
        self.register_buffer("best_val_ppl", torch.tensor(math.inf, dtype=torch.float64))
        self._state: dict[str, object] = {}
        self._kept = {"val": KeptScores(), "test": KeptScores()}  # per-sentence score files
        self._train_seconds = 0.0
        self._counted_shard = None  # a count-based net's training text, scored at validation
        #: the latest corpus-level figures per stage, in full precision (read by train.py)
        self.results: dict[str, dict[str, float]] = {}

    # --- the net ---------------------------------------------------------------------------------
    @property
    def train_window(self) -> int | None:
        return self.net.train_window

    @property
    def train_batch_size(self) -> int | None:
        return self.net.train_batch_size

    def init_state(self, batch_size: int, device=None):
        return self.net.init_state(batch_size, device if device is not None else self.device)

    def forward(self, inputs: torch.Tensor, state=None):
        return self.net(inputs, state)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        return self.net.token_nll(inputs, targets, state)

    detach_state = staticmethod(detach_state)

    def num_parameters(self) -> int:
        if self.count_based:  # no parameters: its stored probabilities and backoffs
            return self.net.num_parameters()
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # --- a count-based net: counted once as the trainer sets up, never trained by a loop ---------
    @property
    def count_based(self) -> bool:
        return getattr(self.net, "count_based", False)

    def setup(self, stage: str) -> None:
        if not self.count_based:
            return
        if stage == "fit":
            raise UserError(
                "the n-gram is counted, not trained by a loop: run it with train.py "
                "(python -m lm_experiments model=ngram) or the task's count_and_validate"
            )
        seconds, self._counted_shard = counting.fit_once(self)
        self._train_seconds += seconds

    def count_and_validate(
        self, trainer, datamodule, ckpt_path=None, checkpoint=None, train=True, validate=True
    ):
        """``trainer.fit`` for a count-based net (``counting.count_and_validate``)."""
        return counting.count_and_validate(
            self, trainer, datamodule, ckpt_path, checkpoint, train, validate
        )

    def _log_counting_pass(self) -> None:
        """The counting pass's train figures: the perplexity of this rank's counted shard."""
        nll_sum, tokens = self.net.stream_nll(self._counted_shard)
        self.train_ppl.update(nll_sum, tokens)
        self._counted_shard = None
        self.on_train_epoch_end()  # logs train/ppl, train/tokens, train/tokens_per_sec

    # --- the shared step ------------------------------------------------------------------------
    def scored_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state, stage: str):
        """The NLL [B, T] a batch of ``stage`` adds to the sums, and the state to carry on
        (a task whose directions are scored apart overrides this: ``bidirectional.py``)."""
        return self.token_nll(inputs, targets, state)

    def _scored(self, batch, stage: str):
        """NLL sum and scored-token count of one batch, carrying the stage's state."""
        inputs, targets = batch
        windows = stage == "train" and self.train_window is not None
        state = self._state.get(stage)
        if state is None or windows:  # shuffled windows carry nothing from batch to batch
            state = self.init_state(inputs.size(0))
        else:
            state = carried(state, inputs.device)
        nll, state = self.scored_nll(inputs, targets, state, stage)
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
        if stage in self._kept:
            self._kept[stage].keep_targets(targets)
            self.keep_scores(stage, nll)
        return nll_sum, tokens

    def keep_scores(self, stage: str, nll: torch.Tensor) -> None:
        """Keep an evaluation batch's per-token NLL [B, T] for the score file (the biRNN keeps
        each direction itself)."""
        self._kept[stage].keep("nll", nll)

    def _write_scores(self, stage: str) -> None:
        kept, self._kept[stage] = self._kept[stage], KeptScores()
        write_epoch_scores(self, stage, kept)

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
        if logs_this_step(self._trainer):
            self.log("train/loss", global_loss, prog_bar=True, batch_size=batch[0].size(0))
        # global_loss: the global batch's mean NLL, for the divergence guard at every step
        return {"loss": loss, "global_loss": global_loss}

    def validation_step(self, batch, batch_idx):
        self._scored(batch, "val")

    def test_step(self, batch, batch_idx):
        self._scored(batch, "test")

    # --- epochs: reset the carried state, report corpus-level perplexity ---------------------------
    def on_train_epoch_start(self):
        self._state["train"] = None

    def on_validation_epoch_start(self):
        self._state["val"] = None
        self._kept["val"] = KeptScores()

    def on_test_epoch_start(self):
        self._state["test"] = None
        self._kept["test"] = KeptScores()

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
        if self._counted_shard is not None:
            self._log_counting_pass()
        self._write_scores("val")
        out = self._log_perplexity("val")
        if not self.trainer.sanity_checking:
            self.best_val_ppl.fill_(min(self.best_val_ppl.item(), out["ppl"]))
        out["ppl_best"] = self.best_val_ppl.item()
        self.log("val/ppl_best", out["ppl_best"], prog_bar=True)

    def on_test_epoch_end(self):
        self._write_scores("test")
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

    # --- what a resume inside an epoch needs (saved per rank by lm_experiments/runtime/resume.py) --
    def resume_state(self) -> dict:
        """This rank's carried training state, the epoch's partial sums of every
        CorpusPerplexity (e.g. per direction) and its training seconds so far."""
        return {
            "state": self._state.get("train"),
            "sums": {
                name: (metric.nll_sum, metric.tokens)
                for name, metric in self.named_modules()
                if isinstance(metric, CorpusPerplexity)
            },
            "train_seconds": self._train_seconds,
        }

    def load_resume_state(self, saved: dict) -> None:
        """Continue the epoch ``resume_state`` was taken in (the state moves to the model's
        device at its first batch: ``carried``)."""
        self._state["train"] = saved["state"]
        metrics = dict(self.named_modules())
        for name, (nll_sum, tokens) in saved["sums"].items():
            metrics[name].nll_sum = nll_sum.to(self.device)
            metrics[name].tokens = tokens.to(self.device)
        self._train_seconds = saved["train_seconds"]

    # --- checkpoints carry the vocabulary and what rebuilds the net -------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.vocab is not None:
            checkpoint["vocabulary"] = self.vocab.itos
        checkpoint["task_class"] = class_path(self)
        checkpoint["model_class"] = class_path(self.net)
        checkpoint["model_config"] = self.net.config  # instantiate() rebuilds the net
        if self.count_based:  # the estimated tables (no raw tokens) and the counting pass's figures
            self.net.save_tables(checkpoint)
            if "train" in self.results:
                checkpoint[counting.TRAIN_RESULTS] = dict(self.results["train"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("vocabulary")
        if saved is not None:
            check_vocabulary(saved, self.vocab)
            if self.vocab is None:
                self.vocab = Vocabulary(saved)
        if self.count_based:
            self.net.load_tables(checkpoint)

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
