"""An LM's encoder as a classifier's or tagger's starting point (``task.encoder_ckpt``).

The labelled data takes the LM checkpoint's vocabulary (``dataset.vocabulary_ckpt``, set from
``task.encoder_ckpt``), so ids mean the same words; the embeddings and recurrent layers are
copied; a bidirectional encoder gets the LM's weights in its forward direction (the backward
one starts fresh: a causal LM has none). The NNLM's projection and hidden layer carry over to
a window tagger whole: a window around the token has the LM window's shape."""

from __future__ import annotations

from lm_experiments.data.vocab import Vocabulary
from lm_experiments.errors import UserError
from lm_experiments.models.encoders import RecurrentEncoder
from lm_experiments.models.window_encoder import WindowEncoder
from lm_experiments.runtime.checkpoints import read_checkpoint
from lm_experiments.tasks.language_modeling import check_vocabulary

PREFIX = "net.encoder."
WINDOW_PREFIX = "net."


def checkpoint_vocabulary(path: str) -> Vocabulary:
    saved = read_checkpoint(path).get("vocabulary")
    if not saved:
        raise UserError(f"task.encoder_ckpt: '{path}' has no vocabulary; use an LM checkpoint")
    return Vocabulary(saved)


def lm_weights(state_dict: dict, encoder) -> dict:
    """The LM's weights of ``encoder``'s parts, named as in ``encoder``: a recurrent net's
    ``net.encoder.*``; the NNLM's projection and hidden layer ``net.projection.*``,
    ``net.hidden.*`` (its output layer is dropped, as a recurrent LM's head is)."""
    if isinstance(encoder, WindowEncoder):
        parts = tuple(f"{WINDOW_PREFIX}{part}." for part in ("projection", "hidden"))
        return {k[len(WINDOW_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(parts)}
    return {k[len(PREFIX) :]: v for k, v in state_dict.items() if k.startswith(PREFIX)}


def load_encoder(encoder: RecurrentEncoder | WindowEncoder, path: str, vocab: Vocabulary) -> None:
    checkpoint = read_checkpoint(path)
    check_vocabulary(checkpoint.get("vocabulary", []), vocab)
    weights = lm_weights(checkpoint["state_dict"], encoder)
    window = isinstance(encoder, WindowEncoder)
    if not weights:
        kind = "NNLM window (net.projection)" if window else "recurrent encoder (net.encoder)"
        raise UserError(f"task.encoder_ckpt: '{path}' holds no {kind} for model=... here")
    own = encoder.state_dict()
    expected = {k for k in own if not k.endswith("_reverse")}
    shapes = {k: tuple(v.shape) for k, v in weights.items()}
    if set(weights) != expected or any(shapes[k] != tuple(own[k].shape) for k in expected):
        mine = {k: tuple(own[k].shape) for k in expected}
        show = describe_window if window else describe
        raise UserError(
            f"task.encoder_ckpt: the checkpoint's encoder ({show(shapes)}) does not match "
            f"model=... here ({show(mine)}): use the model config (cell, window, embedding_dim, "
            "hidden_dim, num_layers) the LM was trained with"
        )
    encoder.load_state_dict(weights, strict=False)


CELL_OF_GATES = {1: "rnn_tanh", 3: "gru", 4: "lstm"}  # weight_hh rows per hidden unit


def describe(shapes: dict) -> str:
    layers = sum(1 for k in shapes if k.startswith("rnn.weight_ih_l"))
    rows, hidden = shapes.get("rnn.weight_hh_l0", (0, 0))
    cell = CELL_OF_GATES.get(rows // hidden if hidden else 0, "?")
    embedding = shapes.get("embedding.weight")
    return f"{cell}, {layers} layer(s), hidden {hidden}, embedding {embedding}"


def describe_window(shapes: dict) -> str:
    _, width = shapes.get("projection.embedding.weight", (0, 0))
    hidden, inputs = shapes.get("hidden.weight", (0, 0))
    return f"window {inputs // width if width else '?'}, embedding {width}, hidden {hidden}"
