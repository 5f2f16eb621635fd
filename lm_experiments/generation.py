"""Generation from any family: score a prompt, then sample its continuation token by token.

It needs only the model contract every family keeps, ``model(inputs [B, S], state) -> (logits
[B, S, V], state)`` and ``init_state(batch_size[, device])`` (the state at a sentence start), so
the n-gram, the recurrent models and a Transformer go through the same code. The logits may be
log-probabilities (the n-gram's): a log-softmax leaves those unchanged.

Tokens are joined as the checkpoint's tokenizer split them: with spaces for word models, with
nothing for character models (``tokenizer`` is saved in every checkpoint by
:class:`TokenizerInCheckpoint`; an older checkpoint whose vocabulary is all single characters is
taken to be a character model).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import lightning as L
import torch

from lm_experiments.data.vocab import EOS_ID, UNK, Vocabulary
from lm_experiments.errors import UserError


class TokenizerInCheckpoint(L.Callback):
    """Saves the data module's tokenizer (``word`` | ``char``) in every checkpoint."""

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        tokenizer = getattr(trainer.datamodule, "tokenizer", None)
        if isinstance(tokenizer, str):
            checkpoint["tokenizer"] = tokenizer


def checkpoint_tokenizer(checkpoint: dict) -> str:
    if checkpoint.get("tokenizer"):
        return checkpoint["tokenizer"]
    words = checkpoint.get("vocabulary", [])[2:]
    return "char" if words and all(len(w) == 1 for w in words) else "word"


def tokenize(text: str, tokenizer: str) -> list[str]:
    return list(text) if tokenizer == "char" else text.split()


def join(tokens: list[str], tokenizer: str) -> str:
    return ("" if tokenizer == "char" else " ").join(tokens)


def init_state(model, batch_size: int, device: torch.device):
    """The start-of-sentence state, from ``init_state(batch_size)`` or, for plain nets,
    ``init_state(batch_size, device)``."""
    if len(inspect.signature(model.init_state).parameters) >= 2:
        return model.init_state(batch_size, device)
    return model.init_state(batch_size)


@dataclass
class Sample:
    tokens: list[str]
    log_prob: float  # natural log of the model's probability of the tokens (and <eos> if ended)


def _log_probs(model, inputs: torch.Tensor, state):
    logits, state = model(inputs, state)
    return torch.log_softmax(logits.float(), dim=-1), state  # [B, S, V]


def _pick(log_probs: torch.Tensor, temperature: float, top_k: int, generator) -> torch.Tensor:
    """log_probs [B, V] -> the next token of each row [B]."""
    if temperature == 0:
        return log_probs.argmax(dim=-1)
    logits = log_probs / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    probs = torch.softmax(logits, dim=-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(log_probs.device)


@torch.no_grad()
def score_prompt(model, ids: list[int], rows: int, device) -> tuple[float, torch.Tensor, object]:
    """The prompt's log-probability from the sentence start, and, for ``rows`` copies of it
    (one a sample: no family-specific state copying), the next-token log-probabilities after it
    [rows, V] and the state after it."""
    inputs = torch.tensor([[EOS_ID, *ids]], device=device).expand(rows, -1)  # [rows, 1+P]
    log_probs, state = _log_probs(model, inputs, init_state(model, rows, device))
    score = 0.0
    if ids:
        targets = torch.tensor(ids, device=device)
        score = log_probs[0, :-1].gather(1, targets[:, None]).sum().item()
    return score, log_probs[:, -1], state


@torch.no_grad()
def generate(
    model,
    vocab: Vocabulary,
    prompt: str = "",
    tokenizer: str = "word",
    num_samples: int = 1,
    max_length: int = 50,
    num_words: int | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    generator: torch.Generator | None = None,
) -> tuple[float, list[Sample]]:
    """The prompt's log-probability and ``num_samples`` continuations of it, each until
    ``<eos>``, ``max_length`` tokens or (when given) ``num_words`` words."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    prompt_ids = [vocab.stoi.get(t, vocab.stoi[UNK]) for t in tokenize(prompt, tokenizer)]
    prompt_score, log_probs, state = score_prompt(model, prompt_ids, num_samples, device)
    samples = [Sample([], 0.0) for _ in range(num_samples)]
    running = torch.ones(num_samples, dtype=torch.bool)
    for _ in range(max_length):
        token = _pick(log_probs, temperature, top_k, generator)  # [num_samples]
        chosen = log_probs.gather(1, token[:, None]).squeeze(1).tolist()
        for i, t in enumerate(token.tolist()):
            if running[i]:
                samples[i].log_prob += chosen[i]
                if t == EOS_ID:
                    running[i] = False
                else:
                    samples[i].tokens.append(vocab.itos[t])
                    if num_words and _words(samples[i].tokens, tokenizer) >= num_words:
                        running[i] = False
        if not running.any():
            break
        step, state = _log_probs(model, token[:, None], state)
        log_probs = step[:, -1]
    return prompt_score, samples


def _words(tokens: list[str], tokenizer: str) -> int:
    return len(join(tokens, tokenizer).split()) if tokenizer == "char" else len(tokens)


def check_prompt(prompt: str, vocab: Vocabulary, tokenizer: str) -> None:
    unknown = [t for t in tokenize(prompt, tokenizer) if t not in vocab.stoi]
    if unknown and len(unknown) == len(tokenize(prompt, tokenizer)):
        raise UserError(
            f"prompt: none of its tokens is in the model's vocabulary ({unknown[:3]}...); "
            "use words of the training data"
        )
