"""The bidirectional LM as ELMo defines it (Peters et al. 2018): two LMs, one per direction.

For a stream x_0 = <eos>, x_1, ..., x_N (x_N = <eos>; every <eos> ends one sentence and opens
the next):

    forward LM:   h→_t = RNN→(E→[x_t], h→_{t-1})      p→(x_{t+1} | x_0..x_t)   = softmax(W→ h→_t)
    backward LM:  h←_t = RNN←(E←[x_t], h←_{t+1})      p←(x_{t-1} | x_t..x_N)   = softmax(W← h←_t)
    loss = (NLL→ + NLL←) / 2                          (bilm-tf's 0.5 * (loss_fwd + loss_bwd))

E← may be E→ (``share_embeddings``) and W← may be W→ (``share_softmax``; ELMo shares both);
``softmax=adaptive`` swaps the output layer as in the RNNLM (models/softmax.py).
Each LM is causal in its own direction: the forward one never sees a token at or after the one it
predicts, the backward one never sees a token at or before it.

Which tokens each direction scores. The forward LM scores x_1..x_N (every word and every
sentence's closing <eos>: the count every family uses). Its mirror image, the backward LM, scores
x_0..x_{N-1} from the right: every word, and for every sentence the <eos> *before* it, i.e. it
predicts "a sentence starts here" from the sentence and what follows; the final x_N is its start
context, as x_0 is the forward LM's. So both directions score N tokens. In the column layout a
batch holds (inputs, targets) with targets[t] = x_{t+1}: the forward LM predicts targets[t] from
inputs[..t]; the backward LM predicts inputs[t] from targets[t..] (to the end of the column), and
the same mask (targets != IGNORE_INDEX) counts both. Under the true process both directions have
the same total NLL (p(x_1..x_N | x_0) = p(x_0..x_{N-1} | x_N) when x_0 = x_N = <eos> and
sentences are independent), so the oracle perplexity bounds both.

This module is the net: the two LMs (``forward_nll``, ``backward_nll``, ``encode``). How their
sums are kept per direction and carried across batches is the task's:
``tasks/bidirectional.py``. Generation samples from the forward LM (``forward``/``init_state``
are the forward LM's); ``encode`` gives both directions' states per position, ELMo's contextual
features.
"""

from __future__ import annotations

import torch

from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX
from lm_experiments.models.encoders import RecurrentEncoder
from lm_experiments.models.net import LanguageModelNet
from lm_experiments.models.softmax import output_layer


def reverse_columns(inputs: torch.Tensor, targets: torch.Tensor):
    """Each row read from its last scored position back to its first.

    inputs, targets [B, T], padding (targets == IGNORE_INDEX) only at the end of a row. Returns
    ``(reversed_inputs, reversed_targets, index)``, all [B, T]: the backward LM reads
    ``reversed_inputs[:, k] = targets[:, L-1-k]`` and predicts ``reversed_targets[:, k] =
    inputs[:, L-1-k]`` (L: the row's scored length), padding again at the end. ``index`` maps
    positions both ways (it is its own inverse): ``x.gather(1, index)`` flips the scored part.
    """
    valid = targets != IGNORE_INDEX  # [B, T]
    lengths = valid.sum(dim=1, keepdim=True)  # [B, 1]
    positions = torch.arange(targets.size(1), device=targets.device)[None]  # [1, T]
    if not torch.equal(valid, positions < lengths):
        raise ValueError("reverse_columns: padding must come only at the end of each row")
    index = torch.where(valid, lengths - 1 - positions, positions)  # [B, T]
    reversed_inputs = targets.gather(1, index).masked_fill(~valid, EOS_ID)
    reversed_targets = inputs.gather(1, index).masked_fill(~valid, IGNORE_INDEX)
    return reversed_inputs, reversed_targets, index


class BiRNNLM(LanguageModelNet):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        cell: str = "lstm",
        num_layers: int = 1,
        dropout: float = 0.0,
        share_embeddings: bool = True,
        share_softmax: bool = True,
        softmax: str = "full",
        cutoffs: list[int] | None = None,
    ):
        super().__init__()
        self.vocab_size = vocab_size

        def encoder(embedding=None):
            return RecurrentEncoder(
                vocab_size, embedding_dim, hidden_dim, cell, num_layers, dropout, False, embedding
            )

        # the forward LM: E→, RNN→, W→
        self.forward_encoder = encoder()
        self.head = output_layer(softmax, hidden_dim, vocab_size, cutoffs)  # full | adaptive
        # the backward LM: its own RNN; E← and W← are the forward ones when shared
        shared = self.forward_encoder.embedding if share_embeddings else None
        self.backward_encoder = encoder(shared)
        self.backward_head = (
            self.head if share_softmax else output_layer(softmax, hidden_dim, vocab_size, cutoffs)
        )

    def init_state(self, batch_size: int, device=None):
        """Either LM's state at its start (a sentence boundary): zeros."""
        return self.forward_encoder.init_state(batch_size, device)

    def forward(self, inputs: torch.Tensor, state=None):
        """The forward LM: inputs [B, T] -> (scores [B, T, V] for the token after each, state)."""
        h, state = self.forward_encoder(inputs, state)
        return self.head(h), state

    def backward_lm(self, reversed_inputs: torch.Tensor, state=None):
        """The backward LM reading text right to left: scores [B, T, V] for the token *before*
        each token it reads, and its state after the last (leftmost) one."""
        h, state = self.backward_encoder(reversed_inputs, state)
        return self.backward_head(h), state

    def forward_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """-log p→(targets[:, t] | ..inputs[:, t]): [B, T], and the carried state."""
        h, state = self.forward_encoder(inputs, state)
        return self.head.nll(h[:, h.size(1) - targets.size(1) :], targets), state

    def backward_nll(self, inputs: torch.Tensor, targets: torch.Tensor, chunk: int | None = None):
        """-log p←(inputs[:, t] | targets[:, t:]) per position: [B, T] (0 where not scored).

        The backward LM starts from its initial state at the right end of each row (its last
        scored position) and reads the row leftwards in pieces of ``chunk`` steps (all at once
        when None), carrying its state from piece to piece.
        """
        reversed_inputs, reversed_targets, index = reverse_columns(inputs, targets)
        state = self.init_state(inputs.size(0), inputs.device)
        step = chunk or inputs.size(1)
        pieces = []
        for x, y in zip(
            reversed_inputs.split(step, 1), reversed_targets.split(step, 1), strict=True
        ):
            h, state = self.backward_encoder(x, state)
            pieces.append(self.backward_head.nll(h, y))  # [B, step]
        nll = torch.cat(pieces, dim=1).gather(1, index)  # back to reading order
        return nll.masked_fill(targets == IGNORE_INDEX, 0.0)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """Per position (NLL→ + NLL←) / 2, the batch taken as whole columns (the backward LM
        starts at each row's end). The task scores evaluation columns exactly instead
        (``tasks/bidirectional.py``)."""
        forward, state = self.forward_nll(inputs, targets, state)
        scored = inputs[:, inputs.size(1) - targets.size(1) :]  # the scored positions' inputs
        return (forward + self.backward_nll(scored, targets)) / 2, state

    def encode(self, inputs: torch.Tensor):
        """Contextual features: ``(forward_states, backward_states)``, each [B, S, H].

        ``forward_states[:, t]`` has read inputs[:, :t+1], ``backward_states[:, t]`` has read
        inputs[:, t:] right to left (the top layer of each LM, each started from its initial
        state). Frame a sentence as ``<eos> w_1 .. w_m <eos>`` so each LM starts where it did in
        training.
        """
        forward_states, _ = self.forward_encoder(inputs)
        backward_states, _ = self.backward_encoder(inputs.flip(1))
        return forward_states, backward_states.flip(1)
