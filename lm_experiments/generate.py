"""``python -m lm_experiments.generate ckpt_path=... num_samples=5``: sample sentences from a
trained model, word by word, feeding each sampled word back in."""

from __future__ import annotations

import sys

import hydra
import torch
from omegaconf import DictConfig

from lm_experiments.checkpoints import model_class, read_checkpoint
from lm_experiments.errors import UserError
from lm_experiments.locations import conf_dir


def load_model(ckpt_path: str):
    """The model stored in a checkpoint, with its vocabulary, in eval mode on the CPU."""
    checkpoint = read_checkpoint(ckpt_path)
    model = model_class(checkpoint).load_from_checkpoint(ckpt_path, map_location="cpu")
    return model.eval()


def sample(cfg: DictConfig) -> list[str]:
    if cfg.num_samples <= 0 or cfg.max_length <= 0:
        raise UserError("num_samples and max_length must be positive integers")
    model = load_model(cfg.ckpt_path)
    generator = torch.Generator().manual_seed(cfg.seed)
    sentences = model.generate(
        cfg.num_samples, cfg.max_length, cfg.temperature, cfg.top_k, generator=generator
    )
    joiner = "" if cfg.get("join") == "char" else " "
    return [joiner.join(model.vocab.decode(ids)) for ids in sentences]


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="generate")
def main(cfg: DictConfig) -> None:
    try:
        for line in sample(cfg):
            print(line)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
