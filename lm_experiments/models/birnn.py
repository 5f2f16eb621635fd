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

Reported: ``ppl_forward`` (comparable with every other family), ``ppl_backward`` and ``ppl`` =
exp(mean of the two NLLs), each a corpus-level exp(sum NLL / tokens) with float64 sums; the base's
metric holds sum (NLL→ + NLL←) / 2 with the usual token count, so ``val/ppl`` (checkpoints, early
stopping, sweeps) selects on the biLM objective.

Carrying state across batches. The stream arrives in [B, bptt] chunks in reading order, but the
backward LM's state for a chunk comes from the chunk *after* it, which has not arrived yet:
truncated BPTT read backwards means the state flows from the end of a column towards its start.

* Evaluation is exact: the forward LM scores each batch with its carried state, as every family;
  the batches are also kept (token ids only), and at the end of the epoch the backward LM reads
  each whole column from its last token back to its first, carrying its state across chunks of
  ``eval_chunk`` steps. So the backward NLL of a column is that of one pass over it, whatever
  ``bptt`` is, and its start state sits at the column's end, a sentence end, as the forward LM's
  sits at the column's start, a sentence start. (Why not per batch: a batch's backward state
  would have to come from batches not yet read. Why not have the loader serve columns in reverse
  chunk order: the forward LM needs them in reading order, and every family shares one loader;
  keeping the ids costs 8 bytes a token.)
* Training cannot wait for the future: within each training batch the backward LM starts from its
  initial state at the batch's right end, so its right context is truncated at the batch boundary
  (as a column start truncates the forward LM's left context). The first token it reads tells it
  whether that start is a true sentence end (<eos>) or a cut. No token ever leaks.

Generation samples from the forward LM (``forward``/``init_state`` are the forward LM's);
``encode`` gives both directions' states per position, ELMo's contextual features.
"""

from __future__ import annotations

import torch
from torch import nn

from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX
from lm_experiments.errors import UserError
from lm_experiments.models.base import CorpusPerplexity, LanguageModel
from lm_experiments.models.rnnlm import CELLS, recurrence
from lm_experiments.models.softmax import output_layer

STAGES = ("train", "val", "test")
DIRECTIONS = ("forward", "backward")


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


class BiRNNLM(LanguageModel):
    #: steps per piece when the backward LM reads whole columns at the end of an evaluation epoch:
    #: it bounds the [B, eval_chunk, V] scores in memory; the state is carried between pieces, so
    #: it does not change the result
    eval_chunk = 64

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
        optimizer=None,
        scheduler=None,
    ):
        cutoffs = list(cutoffs) if cutoffs else None  # plain data in the saved hyperparameters
        super().__init__(vocab_size, optimizer, scheduler)
        if cell not in CELLS:
            raise UserError(f"model.cell must be one of {sorted(CELLS)}, got '{cell}'")
        if not isinstance(num_layers, int) or num_layers < 1:
            raise UserError(f"model.num_layers must be a positive integer, got {num_layers!r}")
        self.cell, self.num_layers, self.hidden_dim = cell, num_layers, hidden_dim

        def rnn():
            return CELLS[cell](
                embedding_dim,
                hidden_dim,
                num_layers=num_layers,
                dropout=dropout if num_layers > 1 else 0.0,
                batch_first=True,
                **({"nonlinearity": "tanh"} if cell == "rnn_tanh" else {}),
            )

        self.drop = nn.Dropout(dropout)
        # the forward LM: E→, RNN→, W→ (the names RNNLM uses)
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        self.rnn = rnn()
        self.output = output_layer(softmax, hidden_dim, vocab_size, cutoffs)  # full | adaptive
        # the backward LM: its own RNN; E← and W← are the forward ones when shared
        self.embedding_backward = (
            self.embedding if share_embeddings else nn.Embedding(vocab_size, embedding_dim)
        )
        self.rnn_backward = rnn()
        self.output_backward = (
            self.output if share_softmax else output_layer(softmax, hidden_dim, vocab_size, cutoffs)
        )

        self.direction_ppl = nn.ModuleDict(
            {f"{stage}_{d}": CorpusPerplexity() for stage in STAGES for d in DIRECTIONS}
        )
        self._stage: str | None = None  # during a Trainer's step: whose sums token_nll adds to
        self._pending: dict[str, list] = {"val": [], "test": []}  # batches awaiting the backward LM

    # --- the two LMs ----------------------------------------------------------------------------
    def init_state(self, batch_size: int):
        """Either LM's state at its start (a sentence boundary): zeros."""
        h = torch.zeros(self.num_layers, batch_size, self.hidden_dim, device=self.device)
        return (h, h.clone()) if self.cell == "lstm" else h

    def _features(self, embedding, rnn, inputs, state):
        """One LM's RNN over inputs [B, T] -> (its top layer [B, T, H] after dropout, state)."""
        if state is None:
            state = self.init_state(inputs.size(0))
        h, state = recurrence(rnn, self.drop(embedding(inputs)), state)  # [B, T, H]
        return self.drop(h), state

    def forward(self, inputs: torch.Tensor, state=None):
        """The forward LM: inputs [B, T] -> (scores [B, T, V] for the token after each, state)."""
        h, state = self._features(self.embedding, self.rnn, inputs, state)
        return self.output(h), state

    def backward_lm(self, reversed_inputs: torch.Tensor, state=None):
        """The backward LM reading text right to left: scores [B, T, V] for the token *before*
        each token it reads, and its state after the last (leftmost) one."""
        h, state = self._features(
            self.embedding_backward, self.rnn_backward, reversed_inputs, state
        )
        return self.output_backward(h), state

    def forward_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """-log p→(targets[:, t] | ..inputs[:, t]): [B, T], and the carried state."""
        h, state = self._features(self.embedding, self.rnn, inputs, state)
        return self.output.nll(h[:, h.size(1) - targets.size(1) :], targets), state

    def backward_nll(self, inputs: torch.Tensor, targets: torch.Tensor, chunk: int | None = None):
        """-log p←(inputs[:, t] | targets[:, t:]) per position: [B, T] (0 where not scored).

        The backward LM starts from its initial state at the right end of each row (its last
        scored position) and reads the row leftwards in pieces of ``chunk`` steps (all at once
        when None), carrying its state from piece to piece.
        """
        reversed_inputs, reversed_targets, index = reverse_columns(inputs, targets)
        state = self.init_state(inputs.size(0))
        step = chunk or inputs.size(1)
        pieces = []
        for x, y in zip(
            reversed_inputs.split(step, 1), reversed_targets.split(step, 1), strict=True
        ):
            h, state = self._features(self.embedding_backward, self.rnn_backward, x, state)
            pieces.append(self.output_backward.nll(h, y))  # [B, step]
        nll = torch.cat(pieces, dim=1).gather(1, index)  # back to reading order
        return nll.masked_fill(targets == IGNORE_INDEX, 0.0)

    def encode(self, inputs: torch.Tensor):
        """Contextual features: ``(forward_states, backward_states)``, each [B, S, H].

        ``forward_states[:, t]`` has read inputs[:, :t+1], ``backward_states[:, t]`` has read
        inputs[:, t:] right to left (the top layer of each LM, each started from its initial
        state). Frame a sentence as ``<eos> w_1 .. w_m <eos>`` so each LM starts where it did in
        training.
        """
        forward_states, _ = self._features(self.embedding, self.rnn, inputs, None)
        backward_states, _ = self._features(
            self.embedding_backward, self.rnn_backward, inputs.flip(1), None
        )
        return forward_states, backward_states.flip(1)

    # --- accounting: both directions, and their mean for the base's metric -----------------------
    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """Per position (NLL→ + NLL←) / 2; in a Trainer's step, each direction's sums also go to
        its own metric.

        Training: the backward LM reads this batch alone (truncated at its right end).
        Evaluation: the backward half is not known yet: NLL→ / 2 now, the rest at epoch end.
        Called directly (outside a step), the batch is taken as whole columns.
        """
        forward, state = self.forward_nll(inputs, targets, state)
        inputs = inputs[:, inputs.size(1) - targets.size(1) :]  # the scored positions' inputs
        if self._stage is None:
            return (forward + self.backward_nll(inputs, targets)) / 2, state
        mask = targets != IGNORE_INDEX
        tokens = mask.sum()
        self.direction_ppl[f"{self._stage}_forward"].update(forward[mask].double().sum(), tokens)
        if self._stage != "train":
            self._pending[self._stage].append((inputs, targets))
            return forward / 2, state
        backward = self.backward_nll(inputs, targets)
        self.direction_ppl["train_backward"].update(backward[mask].double().sum(), tokens)
        return (forward + backward) / 2, state

    @torch.no_grad()
    def _finish_backward(self, stage: str) -> None:
        """The exact backward pass over the stage's whole columns, once all batches are in."""
        pending, self._pending[stage] = self._pending[stage], []
        if not pending:
            return
        inputs = torch.cat([x for x, _ in pending], dim=1)  # [B, L]: whole columns
        targets = torch.cat([y for _, y in pending], dim=1)
        backward = self.backward_nll(inputs, targets, chunk=self.eval_chunk)
        mask = targets != IGNORE_INDEX
        nll_sum = backward[mask].double().sum()  # float64, as the base sums
        self.direction_ppl[f"{stage}_backward"].update(nll_sum, mask.sum())
        # the backward halves of the base metric's (NLL→ + NLL←) / 2; tokens were counted already
        getattr(self, f"{stage}_ppl").update(nll_sum / 2, torch.zeros_like(mask.sum()))

    def _log_directions(self, stage: str) -> None:
        out = self.results[stage]
        for d in DIRECTIONS:
            metric = self.direction_ppl[f"{stage}_{d}"]
            total = metric.compute()
            metric.reset()
            # evaluation scores whole splits; a training epoch resumed from a mid-epoch
            # checkpoint restores only the base's sums, so its directions may cover less
            if stage != "train" and int(total["tokens"]) != out["tokens"]:
                raise RuntimeError(
                    f"{stage}: the {d} LM scored {int(total['tokens'])} tokens, not {out['tokens']}"
                )
            out[f"ppl_{d}"] = total["ppl"].item()
            self.log(f"{stage}/ppl_{d}", out[f"ppl_{d}"])

    # --- stage hooks: tell token_nll the stage; finish the backward pass before logging -----------
    def _step(self, stage: str, step, batch, batch_idx):
        self._stage = stage
        try:
            return step(batch, batch_idx)
        finally:
            self._stage = None

    def training_step(self, batch, batch_idx):
        return self._step("train", super().training_step, batch, batch_idx)

    def validation_step(self, batch, batch_idx):
        return self._step("val", super().validation_step, batch, batch_idx)

    def test_step(self, batch, batch_idx):
        return self._step("test", super().test_step, batch, batch_idx)

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._pending["val"] = []

    def on_test_epoch_start(self):
        super().on_test_epoch_start()
        self._pending["test"] = []

    def on_train_epoch_end(self):
        super().on_train_epoch_end()
        self._log_directions("train")

    def on_validation_epoch_end(self):
        self._finish_backward("val")
        super().on_validation_epoch_end()
        self._log_directions("val")

    def on_test_epoch_end(self):
        self._finish_backward("test")
        super().on_test_epoch_end()
        self._log_directions("test")
