"""The n-gram in the shared LightningModule: a thin adapter that counts once, then only evaluates.

There is no training loop for a count-based model, so ``count_and_validate`` (what ``train.py``
runs for it instead of ``trainer.fit``) hands it to ``trainer.validate``: as the trainer sets up
(``setup``, where the DDP ranks exist), each rank counts its shard of the training id stream --
the data module's stream itself, not batches of a dataloader -- the ranks merge their counts,
every rank estimates the same tables, and validation, the one checkpoint and the test follow
through the base class's perplexity accounting over exactly the tokens the neural models score.
With ``arpa_path`` the tables are read from an ARPA file (e.g. estimated by KenLM on a corpus far
larger than this process could count) and nothing is counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.errors import UserError
from lm_experiments.models.base import LanguageModel
from lm_experiments.models.ngram.net import NGramNet
from lm_experiments.models.ngram.smoothing import train_ngram
from lm_experiments.models.ngram.tables import LN10, NGramModel


def shard(stream: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s contiguous part of ``stream``, cut at sentence ends into ``world`` parts of
    about equal length: every sentence in exactly one part."""
    if world == 1:
        return stream
    ends = np.flatnonzero(stream == EOS_ID) + 1  # where a sentence ends
    if len(ends) == 0:
        return stream if rank == 0 else stream[:0]
    targets = np.arange(1, world) * (len(stream) / world)
    cuts = ends[np.minimum(np.searchsorted(ends, targets), len(ends) - 1)]
    bounds = np.concatenate([[0], cuts, [len(stream)]])
    return stream[bounds[rank] : bounds[rank + 1]]


def all_gather(obj, world: int) -> list:
    """Every rank's ``obj`` (a collective: every rank calls it)."""
    if world == 1 or not dist.is_initialized():
        return [obj]
    gathered: list = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


class NGramLM(LanguageModel):
    """The count-based ``NGramNet`` behind today's ``LanguageModel`` (no parameter, no loss)."""

    counts_once = True  # train.py: count_and_validate instead of trainer.fit

    def __init__(self, vocab_size: int, **options):
        """``options``: the net's (``order``, ``smoothing``, ``k``, ``arpa_path``)."""
        super().__init__(vocab_size)
        self.net = NGramNet(vocab_size, **options)
        self.order = self.net.order
        self._train_shard: np.ndarray | None = None  # scored once validation can log it

    @property
    def ngram(self) -> NGramModel | None:
        """The estimated tables (None before counting)."""
        return self.net.tables

    @ngram.setter
    def ngram(self, tables: NGramModel | None) -> None:
        self.net.tables = tables

    def num_parameters(self) -> int:
        return self.net.num_parameters()

    # --- counting, once ---------------------------------------------------------------------
    def count_and_validate(
        self, trainer, datamodule, ckpt_path=None, checkpoint=None, train=True, validate=True
    ):
        """What ``trainer.fit`` is for a neural model: the tables from ``checkpoint`` (read from
        ``ckpt_path``; nothing counted) or counted in ``setup``; validation; one checkpoint
        (``last.ckpt``) of a newly counted model. Returns the checkpoint that holds this model
        (None when none does)."""
        if checkpoint is not None:
            self.on_load_checkpoint(checkpoint)
            if train and "ngram_train" in checkpoint:  # the counting pass's figures, as counted
                self.results["train"] = dict(checkpoint["ngram_train"])
        if train or validate:
            trainer.validate(self, datamodule=datamodule, verbose=False)
        folder = getattr(trainer.checkpoint_callback, "dirpath", None)
        if ckpt_path or not train or folder is None:
            return ckpt_path
        path = str(Path(folder) / "last.ckpt")
        trainer.save_checkpoint(path)  # train.py's AtomicCheckpointIO: no in-memory copy
        return path

    def setup(self, stage: str) -> None:
        """Count this rank's shard of the training stream and merge the ranks' counts (or read
        the ARPA file), unless the tables are here already (a checkpoint, an earlier stage)."""
        if self.net.fitted:
            return
        if self.net.arpa_path is not None:
            self._train_seconds += self.net.read_arpa(self.vocab)
            return
        datamodule = self.trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "streams"):
            raise UserError("NGramLM counts the data module's training stream: pass datamodule=")
        world = self.trainer.world_size
        mine = shard(np.asarray(datamodule.streams["train"]), self.trainer.global_rank, world)
        self._train_seconds += self.net.fit(mine, lambda counts: all_gather(counts, world))
        self._train_shard = mine

    def training_step(self, batch, batch_idx):
        raise UserError(
            "the n-gram is counted, not trained by a loop: run it with train.py "
            "(python -m lm_experiments model=ngram) or NGramLM.count_and_validate"
        )

    def on_validation_epoch_end(self):
        if self._train_shard is not None:  # the counting pass's figures: perplexity on the
            lp = self.net.tables.score_stream(self._train_shard)  # training text (this rank's)
            nll = torch.tensor(-lp.sum() * LN10, dtype=torch.float64)
            self.train_ppl.update(nll, torch.tensor(len(lp)))
            self._train_shard = None
            super().on_train_epoch_end()  # logs train/ppl, train/tokens, train/tokens_per_sec
        super().on_validation_epoch_end()

    # --- scoring: the net's ---------------------------------------------------------------------
    def init_state(self, batch_size: int):
        return self.net.init_state(batch_size, self.device)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        return self.net.token_nll(inputs, targets, state)

    def forward(self, inputs: torch.Tensor, state=None):
        return self.net(inputs, state)

    # --- checkpoints carry the estimated tables ---------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.net.fitted:
            checkpoint["ngram"] = self.net.tables.state_dict()
        if "train" in self.results:
            checkpoint["ngram_train"] = dict(self.results["train"])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        if "ngram" in checkpoint:
            self.net.tables = NGramModel.from_state_dict(checkpoint["ngram"])
        elif "ngram_columns" in checkpoint:  # saved inside a counting pass by an older version
            columns = [c.numpy() for part in checkpoint["ngram_columns"] for c in part]
            net = self.net
            net.tables = train_ngram(columns, net.vocab_size, net.order, net.smoothing, net.k)
