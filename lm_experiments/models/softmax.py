"""The output layer: p(w_{t+1} | h_t) over the whole vocabulary, two ways.

    full:      p(w | h) = softmax(W_y h + b_y)_w                     one V x H matrix
    adaptive:  ids are sorted by falling train frequency, so cutoffs c_1 < ... < c_k cut the
               vocabulary into a head [0, c_1) and tail clusters C_i = [c_i, c_{i+1}) (c_{k+1} = V):
               p(w | h) = p_head(w | h)                        w in the head
               p(w | h) = p_head(C_i | h) * p_i(w | h)         w in tail cluster C_i
               p_head is a softmax over the c_1 head words plus one entry per cluster; p_i is a
               softmax over C_i after projecting h down to H / div_value^i dimensions
               (Grave et al. 2017, "Efficient softmax approximation for GPUs").

Both are normalized distributions over all V words (the adaptive one is a product of normalized
factors), so perplexity stays exact with either: the adaptive softmax is cheaper, not approximate.
Most tokens of a Zipfian corpus fall in the head, so most positions never touch a tail.

Every layer here answers three questions, in float32 whatever the autocast dtype:

* ``forward(h)``: scores [..., V] whose softmax is the distribution (logits for ``full``,
  log-probabilities for ``adaptive``); what a net's ``forward`` returns and generation samples;
* ``log_probs(h)``: log p over the whole vocabulary [..., V];
* ``nll(h, targets)``: -log p(target) [...], for training and evaluation; the adaptive layer
  computes it without materialising [..., V].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from lm_experiments.data.vocab import IGNORE_INDEX
from lm_experiments.errors import UserError

SOFTMAXES = ("full", "adaptive")


class FullSoftmax(nn.Linear):
    """softmax(W_y h + b_y): an ``nn.Linear`` (so weights tie with the embedding, and checkpoints
    keep the ``output.weight``/``output.bias`` names)."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """[..., H] -> logits [..., V] as one 2-D product: on a CPU, ``linear`` of a 3-D input
        is a matmul plus a separate broadcast bias add (slow in bf16), of a 2-D one a single
        ``addmm`` with the bias fused."""
        return super().forward(h.reshape(-1, h.size(-1))).view(*h.shape[:-1], -1)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(self(h).float(), dim=-1)  # [..., V]

    def nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return logits_nll(self(h), targets)


def logits_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log softmax(logits)[target], in float32: logits [..., V], targets [...] -> [...]
    (0 at ignored positions)."""
    flat, flat_targets = logits.reshape(-1, logits.size(-1)), targets.reshape(-1)  # [N, V], [N]
    if _row_blocks_pay(logits):
        nll = _RowBlockNLL.apply(flat, flat_targets)
    else:  # one fused kernel (float32 logits as they are; bf16 ones converted first)
        nll = F.cross_entropy(
            flat.float(), flat_targets, ignore_index=IGNORE_INDEX, reduction="none"
        )
    return nll.view(targets.shape)


def _row_blocks_pay(logits: torch.Tensor) -> bool:
    """Whether the row-block loss beats the fused one: only for bf16/fp16 logits on a CPU, on
    one thread. Float32 logits need no converted copy, and the fused kernel was 1.3x (one
    thread) to 4x (two) cheaper in CPU time on [700, 6k-10k] logits; with more than one thread
    each of the block loop's small kernels pays an OpenMP fork/join (and spin-waits on a busy
    machine), which cost 2-3x the fused kernel even in bf16 (``benchmarks/profile_step.py``)."""
    return (
        logits.device.type == "cpu"
        and logits.dtype in (torch.bfloat16, torch.float16)
        and torch.get_num_threads() == 1
    )


class _RowBlockNLL(torch.autograd.Function):
    """``cross_entropy(logits.float(), reduction="none")`` and its gradient, computed a block of
    rows at a time: float32 math on a block that stays in the CPU cache, instead of float32
    copies of all [N, V] logits, their log-softmax and its gradient in memory. The values are
    the same (float32 log-sum-exp); under bf16 autocast it is what makes the output layer's
    loss cheaper along with its matrix product, and it never stores float32 [N, V] for backward.

        nll_i = logsumexp_j(z_ij) - z_i,t_i          d nll_i / d z_ij = softmax(z_i)_j - [j = t_i]
    """

    BLOCK = 1 << 17  # elements of a row block (512 KiB in float32)

    @staticmethod
    def forward(ctx, logits, targets):
        ignored = targets == IGNORE_INDEX
        targets = targets.masked_fill(ignored, 0)
        ctx.rows = rows = max(1, _RowBlockNLL.BLOCK // max(1, logits.size(1)))
        lse = torch.empty(logits.size(0), dtype=torch.float32)  # [N]
        for start in range(0, logits.size(0), rows):
            lse[start : start + rows] = torch.logsumexp(logits[start : start + rows].float(), 1)
        nll = lse - logits.gather(1, targets[:, None]).squeeze(1).float()  # [N]
        ctx.save_for_backward(logits, targets, ignored, lse, nll)
        return nll.masked_fill(ignored, 0.0)

    @staticmethod
    @once_differentiable  # the gradient itself is not differentiated (no double backward)
    def backward(ctx, grad_nll):
        logits, targets, ignored, lse, nll = ctx.saved_tensors
        g = grad_nll.float().masked_fill(ignored, 0.0)  # [N]
        grad = torch.empty_like(logits)  # [N, V], in the logits' dtype
        for start in range(0, logits.size(0), ctx.rows):
            block = slice(start, start + ctx.rows)
            softmax = torch.exp(logits[block].float() - lse[block, None])  # [rows, V]
            grad[block] = softmax.mul_(g[block, None])
        # the target's entry, (p_target - 1) * g with p_target = exp(-nll), in float32:
        # subtracting in bf16 would cancel
        grad[torch.arange(logits.size(0)), targets] = ((torch.exp(-nll) - 1) * g).to(grad.dtype)
        return grad, None


def default_cutoffs(vocab_size: int) -> list[int]:
    """A head of the V/8 most frequent words (at most 20k), then clusters four times larger each.

    For WikiText-103 (V = 267,735) that is [20000, 80000]: a 20k-word head and two tails, close to
    the [20000, 40000, 200000] of Grave et al.; for PTB (V = 10,000), [1250, 5000].
    """
    cutoffs, cut = [], min(20000, max(vocab_size // 8, 2))
    while cut < vocab_size:
        cutoffs.append(cut)
        cut *= 4
    return cutoffs or [max(1, vocab_size // 2)]


class AdaptiveSoftmax(nn.AdaptiveLogSoftmaxWithLoss):
    """torch's ``AdaptiveLogSoftmaxWithLoss`` (its ``head`` and ``tail`` layers and cutoffs), with
    the float32 softmaxes and the [..., H] -> [..., V] interface of this module."""

    def __init__(self, hidden_dim: int, vocab_size: int, cutoffs=None, div_value: float = 4.0):
        cutoffs = list(cutoffs) if cutoffs else default_cutoffs(vocab_size)
        if (
            any(not isinstance(c, int) for c in cutoffs)
            or cutoffs != sorted(set(cutoffs))
            or cutoffs[0] <= 0
            or cutoffs[-1] >= vocab_size
        ):
            raise UserError(
                f"model.cutoffs must be increasing integers between 1 and V - 1 = {vocab_size - 1}"
                f" (the vocabulary is sorted by frequency), got {cutoffs}; or null for automatic"
            )
        super().__init__(hidden_dim, vocab_size, cutoffs, div_value=div_value, head_bias=True)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.log_probs(h)

    def log_probs(self, h: torch.Tensor) -> torch.Tensor:
        """log p(w | h) for every w: [..., H] -> [..., V] (float32)."""
        flat = h.reshape(-1, h.size(-1))  # [N, H]
        head = F.log_softmax(self.head(flat).float(), dim=-1)  # [N, c_1 + k]
        out = flat.new_empty(flat.size(0), self.n_classes, dtype=torch.float32)
        out[:, : self.shortlist_size] = head[:, : self.shortlist_size]
        for i, tail in enumerate(self.tail):
            lo, hi = self.cutoffs[i], self.cutoffs[i + 1]
            cluster = head[:, self.shortlist_size + i, None]  # log p_head(C_i | h): [N, 1]
            out[:, lo:hi] = cluster + F.log_softmax(tail(flat).float(), dim=-1)
        return out.view(*h.shape[:-1], self.n_classes)

    def nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """-log p(target | h) [...] (float32); each tail runs only on the positions whose target
        is in its cluster. Ignored positions get a finite value (the caller masks them)."""
        flat = h.reshape(-1, h.size(-1))  # [N, H]
        t = targets.reshape(-1).masked_fill(targets.reshape(-1) == IGNORE_INDEX, 0)  # [N]
        head = F.log_softmax(self.head(flat).float(), dim=-1)  # [N, c_1 + k]
        # the head entry to read: the word itself, or its cluster's entry
        cluster = torch.bucketize(t, t.new_tensor(self.cutoffs[:-1]), right=True) - 1  # -1: head
        entry = torch.where(cluster < 0, t, self.shortlist_size + cluster)
        logp = head.gather(1, entry[:, None]).squeeze(1)  # [N]
        for i, tail in enumerate(self.tail):
            rows = (cluster == i).nonzero().squeeze(1)  # positions whose target is in C_i
            if rows.numel() == 0 and not torch.is_grad_enabled():
                continue  # (in training it runs on no rows: DDP needs it in every backward)
            within = F.log_softmax(tail(flat[rows]).float(), dim=-1)  # [n_i, |C_i|]
            word = (t[rows] - self.cutoffs[i])[:, None]
            logp = logp.index_add(0, rows, within.gather(1, word).squeeze(1))
        return (-logp).view(targets.shape)


def output_layer(
    softmax: str, hidden_dim: int, vocab_size: int, cutoffs=None, div_value: float = 4.0
) -> nn.Module:
    """The output layer named by ``model.softmax``."""
    if softmax == "full":
        return FullSoftmax(hidden_dim, vocab_size)
    if softmax == "adaptive":
        return AdaptiveSoftmax(hidden_dim, vocab_size, cutoffs, div_value)
    raise UserError(f"model.softmax must be one of {list(SOFTMAXES)}, got '{softmax}'")
