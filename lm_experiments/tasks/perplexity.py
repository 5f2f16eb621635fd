"""Corpus perplexity: exp(sum of NLL / number of scored tokens), never a mean of per-batch
perplexities. The sums are float64 and add up across batches and DDP ranks (torchmetrics'
``dist_reduce_fx="sum"``), so a split's perplexity does not depend on how it was cut."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class CorpusPerplexity(Metric):
    """exp(sum of NLL / number of scored tokens); its sums add up across DDP ranks.

    It also counts the tokens given probability zero (an unsmoothed n-gram's unseen n-grams):
    their NLL is inf, so is the perplexity, and the count says how many made it so."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("nll_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("zero_prob", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, nll_sum: torch.Tensor, tokens: torch.Tensor, zero_prob=0) -> None:
        self.nll_sum += nll_sum.detach().double()
        self.tokens += tokens.detach().long()
        self.zero_prob += zero_prob

    def compute(self) -> dict[str, torch.Tensor]:
        return {
            "ppl": torch.exp(self.nll_sum / self.tokens),
            "tokens": self.tokens.clone(),
            "zero_prob": self.zero_prob.clone(),
        }
