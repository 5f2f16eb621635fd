"""``python -m lm_experiments.eval ckpt_path=PATH [dataset=...]``: the validation and test
perplexity of a checkpoint, whatever family it holds.

The family comes from the checkpoint (its ``model_class``), the sizes from its
``hyper_parameters``, the vocabulary from the checkpoint too (checked against the dataset's, so
the scored tokens are the training run's); nothing of ``model=`` is read. Results go to
``metrics.json`` in the run directory, as a training run's do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig

from lm_experiments import validation
from lm_experiments.errors import UserError
from lm_experiments.generate import load_model
from lm_experiments.locations import conf_dir
from lm_experiments.tasks.language_modeling import check_vocabulary
from lm_experiments.threads import IntraOpThreads
from lm_experiments.utils import instantiate, print_config_tree, write_json_atomic


def evaluate(cfg: DictConfig) -> dict:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    model, checkpoint = load_model(cfg.ckpt_path)  # class and sizes: the checkpoint's
    datamodule = instantiate(cfg.dataset)
    check_vocabulary(checkpoint.get("vocabulary", []), datamodule.vocab)
    model.vocab, model.oracle_ppl = datamodule.vocab, datamodule.oracle_ppl
    datamodule.train_window = model.train_window
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=[IntraOpThreads(cfg.threads)])
    if cfg.get("validate", True):
        trainer.validate(model, datamodule=datamodule, verbose=False)
    trainer.test(model, datamodule=datamodule, verbose=False)
    metrics = {
        "model": checkpoint["model_class"].rpartition(".")[2].lower(),
        "model_class": checkpoint["model_class"],
        "dataset": datamodule.name,
        "params": model.num_parameters(),
        "ckpt_path": str(Path(cfg.ckpt_path).expanduser().resolve()),
    }
    for stage, results in model.results.items():
        metrics.update({f"{stage}/{key}": value for key, value in results.items()})
    if trainer.is_global_zero:
        write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", metrics)
    return metrics


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="eval")
def main(cfg: DictConfig) -> None:
    validation.app_started()
    try:
        validation.check_config(cfg)
        if cfg.get("print_config"):
            print_config_tree(cfg)
        metrics = evaluate(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    for stage in ("val", "test"):
        if f"{stage}/ppl" in metrics:
            print(
                f"{stage} perplexity: {metrics[f'{stage}/ppl']:.3f} ({metrics[f'{stage}/tokens']} tokens)"
            )


if __name__ == "__main__":
    with validation.hydra_errors():
        main()
