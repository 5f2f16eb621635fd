"""The n-gram as a language-model net: counted once from the training stream (``fit``), then
scored with its tables through the same contract as every neural net.

    count_based = True                                    counted once (``tasks/counting.py``)
    train_window = None                                   evaluated on the column layout
    init_state(batch_size, device) -> [B, N-1] tokens     the last N - 1 tokens of each column
    forward(inputs [B, S], state) -> (log p [B, S, V], state)
    token_nll(inputs [B, S], targets [B, T], state) -> (nll [B, T], state)

The carried state is the last N - 1 input tokens of each column (-1 where there are none), cut
after the most recent ``<eos>``, which is the ``<s>`` context of the next sentence. It has no
parameters and no optimizer: ``fit`` counts and estimates, and the tables are plain arrays,
saved in the task's checkpoint (``save_tables``/``load_tables``) rather than in a state dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from lm_experiments.data.vocab import EOS_ID, IGNORE_INDEX
from lm_experiments.errors import UserError
from lm_experiments.models.net import LanguageModelNet
from lm_experiments.models.ngram.arpa import load_arpa
from lm_experiments.models.ngram.counting import NGramCounts, count_ngrams, merge_counts
from lm_experiments.models.ngram.memory import reusing_freed_memory
from lm_experiments.models.ngram.smoothing import check_options, estimate, train_ngram
from lm_experiments.models.ngram.tables import LN10, NONE, NGramModel

log = logging.getLogger(__name__)


class NGramNet(LanguageModelNet):
    """An order-N count-based LM over ``vocab_size`` ids; ``tables`` is None until fitted."""

    #: the language-modeling task counts it once instead of running a training loop
    count_based = True
    #: the settings its saved tables fix, which a checkpoint's (empty) state dict cannot show:
    #: ``check_fits`` refuses a checkpoint whose settings differ from the ones asked for
    checkpoint_settings = ("order", "smoothing", "k", "arpa_path")

    def __init__(
        self,
        vocab_size: int,
        order: int = 5,
        smoothing: str = "kneser_ney",
        k: float = 1.0,
        arpa_path: str | None = None,
    ):
        super().__init__()
        check_options(smoothing, k, order)
        self.vocab_size, self.order, self.smoothing, self.k = vocab_size, order, smoothing, k
        self.arpa_path = None if arpa_path is None else str(Path(arpa_path).expanduser())
        self.tables: NGramModel | None = None

    @property
    def fitted(self) -> bool:
        return self.tables is not None

    # --- fitting: count once, estimate (or read an ARPA file) ---------------------------------
    def fit(self, stream, gather: Callable[[NGramCounts], list] | None = None) -> float:
        """Count ``stream`` (ids; whole sentences, each followed by ``<eos>``) and estimate the
        tables; returns the seconds it took. Under DDP each rank passes its own shard and
        ``gather`` (an all-gather of the ranks' counts): the merged counts are those of the
        whole stream, so every rank estimates the one-process model."""
        started = time.perf_counter()
        with reusing_freed_memory(len(stream)):
            counts = count_ngrams(stream, self.vocab_size, self.order)
            if gather is not None:
                counts = merge_counts(gather(counts))
            tables = estimate(counts, self.smoothing, self.k, np.float32)
            del counts
            self.tables = tables.compact()
        seconds = time.perf_counter() - started
        log.info(
            "n-gram model (%s, order %d) estimated in %.2f s: %s n-grams",
            self.smoothing,
            self.order,
            seconds,
            self.tables.num_ngrams(),
        )
        return seconds

    def read_arpa(self, vocab) -> float:
        """Read the tables from ``arpa_path`` (over ``vocab``'s words) instead of counting."""
        started = time.perf_counter()
        if not Path(self.arpa_path).is_file():  # checked here: a checkpoint needs it not
            raise UserError(f"model.arpa_path: no such file '{self.arpa_path}'")
        if vocab is None:
            raise UserError("model=ngram with model.arpa_path needs the dataset's vocabulary")
        self.tables = load_arpa(self.arpa_path, vocab, self.order)
        if self.tables.order < self.order:
            log.warning(
                "%s holds a %d-gram model; model.order=%d",
                self.arpa_path,
                self.tables.order,
                self.order,
            )
        return time.perf_counter() - started

    def model(self) -> NGramModel:
        """The tables; before any fit, the uniform model (every word 1 / V)."""
        return (
            self.tables
            if self.tables is not None
            else NGramModel.uniform(self.vocab_size, self.order)
        )

    def num_parameters(self) -> int:
        """Stored probabilities and backoffs (an n-gram model's parameters; 0 before fitting)."""
        return 0 if self.tables is None else self.tables.num_values()

    def stream_nll(self, stream) -> tuple[torch.Tensor, torch.Tensor]:
        """(the NLL sum in float64, the scored tokens) of ``stream`` read as one column."""
        lp = self.model().score_stream(stream)  # log10 p of every token
        return torch.tensor(-lp.sum() * LN10, dtype=torch.float64), torch.tensor(len(lp))

    # --- checkpoints: the tables as plain tensors (weights_only loads) --------------------------
    def save_tables(self, checkpoint: dict) -> None:
        if self.fitted:
            checkpoint["ngram"] = self.tables.state_dict()

    def load_tables(self, checkpoint: dict) -> None:
        if "ngram" in checkpoint:
            self.tables = NGramModel.from_state_dict(checkpoint["ngram"])
        elif "ngram_columns" in checkpoint:  # saved inside a counting pass by an older version
            columns = [c.numpy() for part in checkpoint["ngram_columns"] for c in part]
            self.tables = train_ngram(columns, self.vocab_size, self.order, self.smoothing, self.k)

    # --- scoring ------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None) -> torch.Tensor:
        return torch.full((batch_size, self.order - 1), NONE, dtype=torch.long, device=device)

    def _history(self, inputs: torch.Tensor, state) -> np.ndarray:
        """[B, N-1+S]: the carried tokens, then the inputs."""
        if state is None:
            state = self.init_state(inputs.size(0))
        return np.concatenate(
            [state.to("cpu", torch.int64).numpy(), inputs.to("cpu", torch.int64).numpy()], 1
        )

    def _next_state(self, history: np.ndarray, like: torch.Tensor) -> torch.Tensor:
        """The last N - 1 tokens of each row, nothing before its last ``<eos>``."""
        keep = self.order - 1
        state = history[:, history.shape[1] - keep :].copy() if keep else history[:, :0].copy()
        if keep:
            columns = np.arange(keep)
            last_eos = np.where(state == EOS_ID, columns, -1).max(1, keepdims=True)
            state[columns < last_eos] = NONE
        return torch.from_numpy(state).to(like.device)

    def token_nll(self, inputs: torch.Tensor, targets: torch.Tensor, state=None):
        """-ln p(target) [B, T] for the last T inputs, in one vectorized walk of the tables."""
        model = self.model()
        history = self._history(inputs, state)  # [B, N-1+S]
        T = targets.size(1)
        y = targets.to("cpu", torch.int64).numpy()
        valid = y != IGNORE_INDEX
        before = history.shape[1] - T  # history[:, before]: the input before the first target
        seq = np.concatenate([history[:, : before + 1], np.where(valid, y, NONE)], 1)
        # the targets continue the inputs (the column layout): score the sequence itself
        continues = np.array_equal(
            np.where(valid[:, :-1], seq[:, before + 1 : -1], 0),
            np.where(valid[:, :-1], history[:, before + 1 :], 0),
        )
        if continues:
            lp = model.log10_probs(seq)[:, -T:]
        else:  # any inputs: each target against its own context
            keep = max(self.order - 1, 1)
            windows = np.lib.stride_tricks.sliding_window_view(history, keep, axis=1)
            contexts = windows[:, before + 1 - keep : before + 1 - keep + T].reshape(-1, keep)
            lp = model.score(contexts, np.where(valid, y, EOS_ID).reshape(-1)).reshape(y.shape)
        nll = np.where(valid, -lp * LN10, 0.0).astype(np.float32)  # float, like every family
        return torch.from_numpy(nll).to(inputs.device), self._next_state(history, inputs)

    def forward(self, inputs: torch.Tensor, state=None):
        """inputs [B, S] -> (log p(next token) [B, S, V], new state): the full distributions."""
        model = self.model()
        history = self._history(inputs, state)
        B, S = inputs.shape
        keep = max(self.order - 1, 1)
        if history.shape[1] < keep:
            history = np.concatenate([np.full((B, keep - history.shape[1]), NONE), history], 1)
        windows = np.lib.stride_tricks.sliding_window_view(history, keep, axis=1)
        contexts = windows[:, history.shape[1] - S - keep + 1 :].reshape(B * S, keep)
        logp = model.log_distribution(contexts) * LN10  # [B*S, V]
        logits = torch.from_numpy(logp.astype(np.float32)).view(B, S, -1).to(inputs.device)
        return logits, self._next_state(history, inputs)
