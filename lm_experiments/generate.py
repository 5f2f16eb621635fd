"""``python -m lm_experiments.generate ckpt_path=... prompt="the cat" num_samples=5``: score a
prompt under a trained model of any family and sample its continuations, each printed with its
log-probability (lm_experiments/generation.py does the work)."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from lm_experiments import generation, threads, validation
from lm_experiments.errors import UserError
from lm_experiments.locations import conf_dir
from lm_experiments.runtime.checkpoints import read_checkpoint
from lm_experiments.tasks.loading import load_task


def load_model(ckpt_path: str):
    """The model stored in a checkpoint, with its vocabulary, in eval mode on the CPU, and the
    checkpoint itself (its tokenizer, its config)."""
    return load_task(ckpt_path), read_checkpoint(ckpt_path)


def sample(cfg: DictConfig) -> list[str]:
    """The output lines: the prompt's score (when there is a prompt), then one line a sample,
    ``<log-probability>\\t<text>``."""
    validation.check_config(cfg, subtrees=("",))
    model, checkpoint = load_model(cfg.ckpt_path)
    torch.set_num_threads(threads.resolve(cfg.get("threads"), model.num_parameters()))
    tokenizer = cfg.get("join") or generation.checkpoint_tokenizer(checkpoint)
    prompt = cfg.get("prompt") or ""
    if prompt:
        generation.check_prompt(prompt, model.vocab, tokenizer)
    prompt_score, samples = generation.generate(
        model,
        model.vocab,
        prompt=prompt,
        tokenizer=tokenizer,
        num_samples=cfg.num_samples,
        max_length=cfg.max_length,
        num_words=cfg.get("num_words"),
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    lines = [f"# prompt log-probability {prompt_score:.3f}: {prompt}"] if prompt else []
    sep = "" if tokenizer == "char" or not prompt else " "
    for s in samples:
        text = f"{prompt}{sep}{generation.join(s.tokens, tokenizer)}".rstrip()
        lines.append(f"{s.log_prob:.3f}\t{text}")
    return lines


@hydra.main(version_base="1.3", config_path=conf_dir(), config_name="generate")
def main(cfg: DictConfig) -> None:
    validation.app_started()
    try:
        lines = sample(cfg)
        if cfg.get("out"):
            out = Path(cfg.out).expanduser()
            out.write_text("\n".join(lines) + "\n")
            print(f"wrote {len(lines)} lines to {out}")
        else:
            for line in lines:
                print(line)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    with validation.hydra_errors():
        main()
