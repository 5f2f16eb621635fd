"""An LM's encoder as a classifier's or tagger's starting point (``task.encoder_ckpt``).

The labelled data takes the LM checkpoint's vocabulary (``dataset.vocabulary_ckpt``, set from
``task.encoder_ckpt``), so ids mean the same words; the embeddings and recurrent layers are
copied; a bidirectional encoder gets the LM's weights in its forward direction (the backward
one starts fresh: a causal LM has none)."""

from __future__ import annotations

from lm_experiments.data.vocab import Vocabulary
from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder
from lm_experiments.runtime.checkpoints import read_checkpoint
from lm_experiments.tasks.language_modeling import check_vocabulary

PREFIX = "net.encoder."


def checkpoint_vocabulary(path: str) -> Vocabulary:
    saved = read_checkpoint(path).get("vocabulary")
    if not saved:
        raise UserError(f"task.encoder_ckpt: '{path}' has no vocabulary; use an LM checkpoint")
    return Vocabulary(saved)


def load_encoder(encoder: RecurrentEncoder, path: str, vocab: Vocabulary) -> None:
    checkpoint = read_checkpoint(path)
    check_vocabulary(checkpoint.get("vocabulary", []), vocab)
    weights = {
        k[len(PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(PREFIX)
    }
    if not weights:
        raise UserError(f"task.encoder_ckpt: '{path}' holds no recurrent encoder (net.encoder)")
    own = encoder.state_dict()
    expected = {k for k in own if not k.endswith("_reverse")}
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    if set(weights) != expected or any(shapes[k] != tuple(own[k].shape) for k in expected):
        raise UserError(
            f"task.encoder_ckpt: the checkpoint's encoder ({describe(shapes)}) does not match "
            f"model=... here ({describe({k: tuple(own[k].shape) for k in expected})}): use the "
            "model config (cell, embedding_dim, hidden_dim, num_layers) the LM was trained with"
        )
    encoder.load_state_dict(weights, strict=False)


CELL_OF_GATES = {1: "rnn_tanh", 3: "gru", 4: "lstm"}  # weight_hh rows per hidden unit


def describe(shapes: dict) -> str:
    layers = sum(1 for k in shapes if k.startswith("rnn.weight_ih_l"))
    rows, hidden = shapes.get("rnn.weight_hh_l0", (0, 0))
    cell = CELL_OF_GATES.get(rows // hidden if hidden else 0, "?")
    embedding = shapes.get("embedding.weight")
    return f"{cell}, {layers} layer(s), hidden {hidden}, embedding {embedding}"
