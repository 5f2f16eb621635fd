"""What classification and tagging share: the encoder taken from the model config (or a trained
LM), cross-entropy on the labelled positions, and torchmetrics accuracy / macro-F1 / the
majority-class baseline, summed over DDP ranks by torchmetrics' own state reduction."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from lm_experiments.data.vocab import IGNORE_INDEX, Vocabulary
from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder, WindowProjection
from lm_experiments.models.window_encoder import WindowEncoder
from lm_experiments.tasks.sentence_scores import sentence_rows, write_sentence_scores
from lm_experiments.tasks.step_log import logs_this_step

STAGES = ("train", "val", "test")


def labelled_data(datamodule, task_cfg):
    """The data a task reads: a labelled dataset as it is; for ``task=classify|tag`` on the
    embedded corpus (``dataset=synthetic``), its sentences with the grammar's exact labels
    (``task.label``, ``task.limit_train``). The LM task gets the data module unchanged."""
    from hydra.utils import get_class

    kind = getattr(get_class(task_cfg._target_), "kind", None)
    if kind is None or hasattr(datamodule, "labels"):
        if kind is not None and task_cfg.get("limit_train") is not None:
            raise UserError("task.limit_train is for dataset=synthetic; use dataset.limit_train")
        return datamodule
    if not getattr(datamodule, "annotations", None):
        raise UserError(
            f"task={kind} needs labelled data: dataset=synthetic, or a labelled dataset "
            f"(tags, labels, conll2003, sst2, imdb); '{datamodule.name}' has no labels"
        )
    from lm_experiments.data.synthetic_labels import SyntheticLabelled

    return SyntheticLabelled(
        datamodule,
        kind,
        task_cfg.get("label"),
        task_cfg.get("limit_train"),
        task_cfg.get("encoder_ckpt"),
    )


def encoder_of(net, bidirectional: bool) -> RecurrentEncoder | WindowEncoder:
    """The LM net's encoder (its head is dropped): a recurrent one, rebuilt reading both ways
    when ``bidirectional`` (allowed here: a classifier or tagger sees the whole sentence), or
    the NNLM's projection and hidden layer, on a window around each token when
    ``bidirectional`` (else the LM's own window, ending at the token)."""
    projection = getattr(net, "projection", None)
    if isinstance(projection, WindowProjection):
        right = (projection.window - 1) // 2 if bidirectional else 0
        return WindowEncoder(projection, net.hidden, net.drop.p, right)
    encoder = getattr(net, "encoder", None)
    if not isinstance(encoder, RecurrentEncoder):
        raise UserError(
            f"task=classify|tag needs a recurrent model (rnnlm, lstm, gru, stacked_rnn) or, "
            f"for tagging, the NNLM's window; got {type(net).__name__}"
        )
    if not bidirectional or encoder.directions == 2:
        return encoder
    return RecurrentEncoder(
        encoder.embedding.num_embeddings,
        encoder.embedding.embedding_dim,
        encoder.hidden_dim,
        encoder.cell,
        encoder.num_layers,
        encoder.drop.p,
        bidirectional=True,
    )


def scores(num_classes: int) -> MetricCollection:
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(num_classes, average="micro", ignore_index=IGNORE_INDEX),
            "f1": MulticlassF1Score(num_classes, average="macro", ignore_index=IGNORE_INDEX),
            "majority_acc": MulticlassAccuracy(
                num_classes, average="micro", ignore_index=IGNORE_INDEX
            ),
        }
    )


class SupervisedTask(L.LightningModule):
    """Subclasses give ``make_head(encoder)`` (-> logits) and may add metrics."""

    monitor = "val/acc"  # checkpoints and early stopping: validation accuracy, never test
    kind: str  # "classify" | "tag": the data it reads (``labelled_data``)

    def __init__(
        self,
        net,
        vocab: Vocabulary,
        labels: list[str],
        majority: int = 0,
        optimizer=None,
        scheduler=None,
        bidirectional: bool = True,
        encoder_ckpt: str | None = None,
        freeze_encoder: bool = False,
        oracle_ppl=None,  # the LM task's; a labelled corpus has none
        monitor: str = "val/acc",  # read by conf/callbacks (checkpoint, early stopping)
        monitor_mode: str = "max",
        label: str | None = None,  # dataset=synthetic: which sentence label (the data's choice)
        limit_train: int | None = None,  # dataset=synthetic: the labelled sentences used
        **head_options,
    ):
        super().__init__()
        self.vocab, self.labels = vocab, list(labels)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        encoder = encoder_of(net, bidirectional)
        if encoder_ckpt:
            from lm_experiments.tasks.pretrained import load_encoder

            load_encoder(encoder, encoder_ckpt, vocab)
        if freeze_encoder:
            encoder.requires_grad_(False)
        self.freeze_encoder = freeze_encoder
        self.model = self.make_head(encoder, len(self.labels), **head_options)
        self.register_buffer("majority", torch.tensor(majority))
        # (ModuleDict keys may not be "train": nn.Module.train)
        self.metrics = nn.ModuleDict({f"{s}_scores": self.make_scores() for s in STAGES})
        self.results: dict[str, dict[str, float]] = {}
        self.kept: dict[str, list] = {"val": [], "test": []}  # per-sentence rows (score files)
        self.best_val_acc = 0.0

    def make_head(self, encoder, num_labels: int, **options) -> nn.Module:
        raise NotImplementedError

    def make_scores(self) -> MetricCollection:
        return scores(len(self.labels))

    @property
    def train_window(self):
        return None  # whole sentences, never LM windows

    @property
    def encoder(self) -> RecurrentEncoder:
        return self.model.encoder

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.model(tokens, lengths)

    def on_train_epoch_start(self):
        if self.freeze_encoder:  # fixed features: no dropout noise in them either
            self.encoder.eval()

    def _step(self, batch, stage: str) -> torch.Tensor:
        logits = self(batch["tokens"], batch["lengths"])  # [B, C] or [B, T, C]
        targets = batch["targets"]
        loss = nn.functional.cross_entropy(
            logits.flatten(0, -2), targets.flatten(), ignore_index=IGNORE_INDEX
        )
        predicted = logits.argmax(-1)
        self.update_scores(self.metrics[f"{stage}_scores"], predicted, targets)
        if stage != "train":
            self.kept[stage].append(sentence_rows(batch, predicted, targets))
        if stage != "train":  # the epoch's mean over its batches, over every rank
            self.log(f"{stage}/loss", loss, sync_dist=True, batch_size=targets.size(0))
        elif logs_this_step(self._trainer):
            self.log("train/loss", loss, prog_bar=True, batch_size=targets.size(0))
        return loss

    def update_scores(self, metrics: MetricCollection, predicted, targets) -> None:
        for name, metric in metrics.items():
            if name == "majority_acc":
                metric.update(torch.full_like(targets, int(self.majority)), targets)
            elif name in ("acc", "f1"):
                metric.update(predicted, targets)

    def training_step(self, batch, batch_idx):
        loss = self._step(batch, "train")
        return {"loss": loss, "global_loss": self._mean_over_ranks(loss.detach())}

    def _mean_over_ranks(self, loss: torch.Tensor) -> torch.Tensor:
        """The ranks' mean loss, for the divergence guard: a loss that is not finite on one rank
        is not finite on all, so every rank stops at the same step (none waits for another)."""
        if self._trainer is None or self.trainer.world_size == 1:
            return loss
        total = loss.double()
        torch.distributed.all_reduce(total)  # sum over ranks
        return (total / self.trainer.world_size).float()

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def _finish(self, stage: str) -> None:
        computed = self.metrics[
            f"{stage}_scores"
        ].compute()  # a collective under DDP: on every rank
        out = {}
        for name, value in computed.items():
            if value.ndim == 0:
                out[name] = float(value)
            else:  # per-tag figures: one key per tag name
                out.update(
                    {f"{name}/{tag}": float(v) for tag, v in zip(self.labels, value, strict=True)}
                )
        self.metrics[f"{stage}_scores"].reset()
        if stage != "train":
            write_sentence_scores(self, stage, self.kept[stage], self.kind == "tag")
            self.kept[stage] = []
        if stage == "val":  # the sweeps' objective (train.objective): the best so far
            self.best_val_acc = out["acc_best"] = max(self.best_val_acc, out["acc"])
        self.results[stage] = out
        self.log_dict({f"{stage}/{k}": v for k, v in out.items()}, rank_zero_only=False)

    def on_train_epoch_end(self):
        self._finish("train")

    def on_validation_epoch_end(self):
        if not self.trainer.sanity_checking:
            self._finish("val")
        else:
            self.metrics["val_scores"].reset()
            self.kept["val"] = []

    def on_test_epoch_end(self):
        self._finish("test")

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            return None
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params=params)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {  # plateau's mode is min: stepped on the validation loss
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch"},
        }

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["vocabulary"] = list(self.vocab.itos)
        checkpoint["labels"] = list(self.labels)
