"""One experiment: build data, model, trainer and loggers from the config; fit; test the best
checkpoint; write ``metrics.json`` in the run directory."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.callbacks import ModelSummary, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lm_experiments import wandb_extras
from lm_experiments.errors import UserError
from lm_experiments.generation import TokenizerInCheckpoint
from lm_experiments.runtime.checkpoints import (
    AtomicCheckpointIO,
    ModelGroupInCheckpoint,
    check_fits,
    model_from_checkpoint,
    read_checkpoint,
)
from lm_experiments.runtime.compat import check_versions
from lm_experiments.runtime.signals import interruption
from lm_experiments.tasks.language_modeling import check_vocabulary
from lm_experiments.tasks.scoring import PerTokenScores
from lm_experiments.tasks.supervised import labelled_data
from lm_experiments.threads import IntraOpThreads
from lm_experiments.utils import instantiate, instantiate_group, write_json_atomic

log = logging.getLogger(__name__)


def _model_choice() -> str | None:
    return HydraConfig.get().runtime.choices.get("model") if HydraConfig.initialized() else None


def _model_name(cfg: DictConfig, model) -> str:
    return cfg.get("model_name") or _model_choice() or type(model).__name__.lower()


def _overrides() -> list[str]:
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def refuse_finished_run(output_dir: Path, overwrite: bool) -> None:
    """A run directory that holds a finished run (its metrics.json) is not written into again
    unless the user says ``overwrite=true``: its checkpoints and figures are results."""
    if (output_dir / "metrics.json").exists() and not overwrite:
        raise UserError(
            f"{output_dir} already holds a finished run (metrics.json); choose another "
            "hydra.run.dir, or pass overwrite=true to replace its checkpoints and metrics"
        )


def finite_or_null(metrics: dict) -> dict:
    """metrics.json is strict JSON: an infinite or NaN figure is written as null (an infinite
    perplexity comes with ``<split>/zero_prob``, the tokens given probability zero)."""
    return {
        key: None if isinstance(value, float) and not math.isfinite(value) else value
        for key, value in metrics.items()
    }


def build(cfg: DictConfig):
    """The data module, and the task wrapping a net sized to its vocabulary."""
    datamodule = labelled_data(instantiate(cfg.dataset), cfg.task)  # synthetic: its own labels
    vocab = datamodule.vocab  # tokenizes (cached) and builds the vocabulary from train
    net = build_net(cfg.model, len(vocab))
    extra = {}  # classify / tag data: the label set and the train majority
    if hasattr(datamodule, "labels"):
        extra = {"labels": datamodule.labels, "majority": datamodule.majority}
    model = instantiate(cfg.task, net=net, vocab=vocab, oracle_ppl=datamodule.oracle_ppl, **extra)
    datamodule.train_window = model.train_window  # shuffled windows, or carried-state columns
    datamodule.train_batch_size = getattr(model, "train_batch_size", None)  # windows a step
    return datamodule, model


def build_net(model_cfg: DictConfig, vocab_size: int):
    """The net ``conf/model`` describes: every key but the optimizer and scheduler it chooses
    (those go to the task, ``conf/task/lm.yaml``)."""
    net_cfg = {k: v for k, v in model_cfg.items() if k not in ("optimizer", "scheduler")}
    return instantiate(OmegaConf.create(net_cfg), vocab_size=vocab_size)


def _callbacks(cfg: DictConfig) -> list:
    """The callbacks group, less the progress bar and summary when the trainer turns them off
    (Lightning refuses the combination; a user asking for no progress bar means it), and the
    model's config in every checkpoint (so that using it needs no ``model=``)."""
    callbacks = instantiate_group(cfg.get("callbacks"))
    callbacks.append(IntraOpThreads(cfg.get("threads", "auto")))  # threads=auto|N (threads.py)
    callbacks.append(TokenizerInCheckpoint())  # generation joins tokens as they were split
    callbacks.append(ModelGroupInCheckpoint(cfg.model, cfg.get("model_name") or _model_choice()))
    if OmegaConf.select(cfg, "score.per_token", default=False):  # tokens.parquet too
        callbacks.append(PerTokenScores())
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not cfg.trainer.get("enable_model_summary", True):
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    return callbacks


def train(cfg: DictConfig) -> dict:
    """Run the experiment described by ``cfg`` and return its metrics."""
    threads = torch.get_num_threads()
    try:  # each stage's intra-op threads are set by the IntraOpThreads callback (threads.py)
        return _run(cfg)
    finally:
        torch.set_num_threads(threads)  # the next job of a multirun starts from the default


def _from_checkpoint(cfg: DictConfig, ckpt_path: str | None):
    """The data module and model; with ``ckpt_path``, the checkpoint's model unless the command
    line chose one, and a one-line refusal of a checkpoint that does not fit (before training,
    not deep inside Lightning)."""
    if not ckpt_path:
        return build(cfg)
    checkpoint = read_checkpoint(ckpt_path)
    choice = model_from_checkpoint(cfg, checkpoint, _overrides())
    if choice:
        with open_dict(cfg):
            cfg.model_name = choice
    datamodule, model = build(cfg)
    check_vocabulary(checkpoint.get("vocabulary", []), model.vocab)
    check_fits(cfg.model, model, checkpoint)
    return datamodule, model


def _run(cfg: DictConfig) -> dict:
    check_versions()
    output_dir = Path(cfg.paths.output_dir)
    refuse_finished_run(output_dir, bool(cfg.get("overwrite", False)))
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    ckpt_path = cfg.get("ckpt_path")

    datamodule, model = _from_checkpoint(cfg, ckpt_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    if rank_zero_only.rank == 0:  # DDP ranks share the run directory
        (output_dir / "vocab.txt").write_text("\n".join(model.vocab.itos) + "\n")

    loggers = instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        callbacks=_callbacks(cfg),
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],  # a kill or a full disk never leaves half a checkpoint
    )
    for logger in loggers:
        logger.log_hyperparams(
            {**OmegaConf.to_container(cfg, resolve=True), "params": model.num_parameters()}
        )
    wandb_extras.start(loggers, _model_name(cfg, model), datamodule.name)  # W&B only: tags

    started = time.perf_counter()
    count_based = getattr(model, "count_based", False)  # the n-gram: no training loop
    if count_based:  # counted once from the train stream, validated, saved once
        checkpoint = read_checkpoint(ckpt_path) if ckpt_path else None
        counted_ckpt = model.count_and_validate(
            trainer,
            datamodule,
            ckpt_path,
            checkpoint,
            cfg.get("train", True),
            cfg.get("validate", True),
        )
    elif cfg.get("train", True):
        try:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        except SIGTERMException:  # stopped on a signal, after saving a resumable checkpoint
            raise interruption(trainer) from None
    elif cfg.get("validate", True):  # evaluating a checkpoint: its validation perplexity too
        trainer.validate(model, datamodule=datamodule, ckpt_path=ckpt_path, verbose=False)
    train_seconds = time.perf_counter() - started

    if cfg.get("test", True) and count_based:
        trainer.test(model, datamodule=datamodule)  # the weights in memory are the checkpoint's
    elif cfg.get("test", True):
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        if not cfg.get("train", True):
            best = ckpt_path
        if not best:
            log.warning("no best checkpoint was saved: testing the weights in memory")
        trainer.test(model, datamodule=datamodule, ckpt_path=best or None)

    metrics = {
        "model": _model_name(cfg, model),
        "dataset": datamodule.name,
        "params": model.num_parameters(),
        "train_seconds": train_seconds,
        "epochs": 1 if count_based and cfg.get("train", True) else trainer.current_epoch,
        "run_dir": str(output_dir),
    }
    for stage, results in model.results.items():
        metrics.update({f"{stage}/{key}": value for key, value in results.items()})
    if trainer.checkpoint_callback and trainer.checkpoint_callback.best_model_path:
        metrics["best_checkpoint"] = trainer.checkpoint_callback.best_model_path
    if count_based and counted_ckpt:
        metrics["best_checkpoint"] = counted_ckpt
    if trainer.is_global_zero:
        write_json_atomic(output_dir / "metrics.json", finite_or_null(metrics))
        if "test/ppl" in metrics:
            log.info(
                "test perplexity %.3f on %d tokens%s",
                metrics["test/ppl"],
                metrics["test/tokens"],
                f" (oracle {metrics['test/oracle_ppl']:.3f})"
                if "test/oracle_ppl" in metrics
                else "",
            )
    # W&B only: final figures in the summary, sampled sentences, and finish() the run
    join = "" if cfg.dataset.get("tokenizer") == "char" else " "
    wandb_extras.finish(trainer, model, metrics, seed=cfg.get("seed") or 0, join=join)
    return metrics


def objective(metrics: dict) -> float:
    """What sweepers minimise: the best validation perplexity, or for a classifier or tagger
    its validation error, 1 - the best ``val/acc`` (inf when there is none)."""
    if "val/acc_best" in metrics:
        return 1.0 - metrics["val/acc_best"]
    value = metrics.get("val/ppl_best", math.inf)
    return value if math.isfinite(value) else math.inf
