"""Where the framework's training step spends its time against the plain loop: each candidate
piece switched off in turn, in the same process, interleaved rounds.

    python -m benchmarks.profile_step                   # RNNLM 1x200, fp32, 1 thread
    python -m benchmarks.profile_step --model "LSTM 2x200" --precision bf16-mixed --threads 2
    python -m benchmarks.profile_step --quick           # a smoke check (a few steps)
    python -m benchmarks.profile_step --ops             # also torch.profiler's top operators

A piece's share is (step time as is - step time without it) / step time as is, the median over
rounds; shares overlap where pieces do (logging off also silences the divergence guard, which
reads the logged loss). Switching a piece off changes only speed, never what is run on: every
variant trains the same net on the same batches. The last rows are the framework without
Lightning (the task's step in a bare loop) and the plain loop (``plain_loop.py``), timed the
same way: from the first step after the warm-up to the end of the last.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.bench_speed import (
    MODELS,
    _framework,
    _plain,
    _Window,
    corpus,
    framework_config,
)


@contextlib.contextmanager
def patched(obj, name: str, value):
    saved = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, saved)


def fused_loss():
    """The loss as one fused ``F.cross_entropy(logits.float())`` where the row blocks would run
    (``softmax._row_blocks_pay``: bf16 logits on one thread; elsewhere a no-op)."""
    import torch.nn.functional as F

    from lm_experiments.models import softmax

    class Fused:
        @staticmethod
        def apply(flat, targets):
            return F.cross_entropy(flat.float(), targets, ignore_index=-100, reduction="none")

    return patched(softmax, "_RowBlockNLL", Fused)


def old_row_block_loss():
    """The row-block loss wherever it ran before it was measured (every CPU float32/bf16
    logits, any thread count): a negative share is what it cost."""
    import torch

    from lm_experiments.models import softmax

    def always(logits):
        return logits.device.type == "cpu" and logits.dtype != torch.float64

    return patched(softmax, "_row_blocks_pay", always)


def no_step_logging():
    """``self.log("train/loss")`` skipped (the task logs it only every ``log_every_n_steps``
    steps; the divergence guard reads the step's returned ``global_loss``)."""
    from lm_experiments.tasks.language_modeling import LanguageModeling

    log = LanguageModeling.log

    def quiet(self, name, *args, **kwargs):
        if name != "train/loss":
            log(self, name, *args, **kwargs)

    return patched(LanguageModeling, "log", quiet)


def no_corpus_sums():
    """``CorpusPerplexity.update`` (the float64 sums) skipped."""
    from lm_experiments.tasks.perplexity import CorpusPerplexity

    return patched(CorpusPerplexity, "update", lambda self, *args: None)


def no_masks_or_sums():
    """The task's ``_scored`` without the ignore-index mask, the zero-probability count and the
    float64 sums: the NLL's plain sum over every position (no padding mid-epoch)."""
    import torch

    from lm_experiments.tasks.language_modeling import LanguageModeling, carried

    def lean(self, batch, stage):
        inputs, targets = batch
        state = self._state.get(stage)
        state = self.init_state(inputs.size(0)) if state is None else carried(state, inputs.device)
        nll, state = self.scored_nll(inputs, targets, state, stage)
        self._state[stage] = self.detach_state(state)
        return nll.float().sum(), torch.tensor(targets.numel())

    return patched(LanguageModeling, "_scored", lean)


# variant: (what is switched off, a context manager factory or config overrides)
VARIANTS = {
    "as is": (contextlib.nullcontext, []),
    "block-wise float32 loss (bf16, 1 thread) -> fused": (fused_loss, []),
    "(added) the row-block loss on every CPU step, as before": (old_row_block_loss, []),
    "train/loss logging (on log_every_n_steps steps)": (no_step_logging, []),
    "divergence guard (isfinite check, host sync)": (
        contextlib.nullcontext,
        ["~callbacks.divergence_guard"],
    ),
    "signal-checkpoint hook (an all-reduce under DDP)": (
        contextlib.nullcontext,
        ["~callbacks.signal_checkpoint"],
    ),
    "float64 corpus sums": (no_corpus_sums, []),
    "ignore-index mask, zero-prob count, float64 sums": (no_masks_or_sums, []),
}


def bare_task_loop(task, datamodule, cfg, window: _Window, steps: int) -> dict:
    """The task's own step (``_scored``: the net, masks, float64 sums) in a bare loop: what
    Lightning adds is the framework's step time minus this one's."""
    import torch

    task.train()
    optimizer = task.configure_optimizers()
    autocast = torch.autocast("cpu", torch.bfloat16, enabled="bf16" in cfg.trainer.precision)
    task.on_train_epoch_start()
    for i, batch in enumerate(datamodule.train_dataloader()):
        if i == steps:
            break
        window.step_start(i)
        with autocast:
            nll_sum, tokens = task._scored(batch, "train")
            loss = nll_sum / tokens.clamp(min=1)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        window.step_end(i, int(tokens))
    return window.rates


def collation_seconds(datamodule, steps: int) -> float:
    """Seconds per batch the train DataLoader takes alone (slicing columns, int64 copies)."""
    started = time.perf_counter()
    for i, _ in enumerate(datamodule.train_dataloader()):
        if i + 1 == steps:
            break
    return (time.perf_counter() - started) / steps


class ProfiledWindow(_Window):
    """A window that also runs torch.profiler over the timed steps."""

    def __init__(self, warmup: int, last: int):
        super().__init__(warmup)
        self.last, self.profiler = last, None

    def step_start(self, index: int) -> None:
        if index == self.warmup:
            import torch.profiler

            self.profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
            self.profiler.__enter__()
        super().step_start(index)

    def step_end(self, index: int, tokens: int) -> None:
        super().step_end(index, tokens)
        if index == self.last and self.profiler is not None:
            self.profiler.__exit__(None, None, None)


def operator_table(cfg, init_state, warmup: int, steps: int, rows: int = 25) -> str:
    """torch.profiler's operators over ``steps`` framework steps after the warm-up, by self
    CPU time."""
    window = ProfiledWindow(warmup, warmup + steps - 1)
    _framework(cfg, init_state, window)
    return window.profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def profile(model, precision, threads, steps, warmup, rounds, with_ops=False):
    """Seconds per step of every variant, per round; the DataLoader's alone; the operators."""
    import lightning as L
    import torch

    from benchmarks.plain_loop import Corpus
    from lm_experiments.train import build

    torch.set_num_threads(threads)
    overrides, plain = MODELS[model]
    with tempfile.TemporaryDirectory() as workdir:
        what, train_path, eval_path = corpus(Path(workdir))
        job = {"overrides": overrides, "plain": plain, "warmup": warmup, "steps": steps}
        job |= {"threads": threads}
        job |= {"train": str(train_path), "eval": str(eval_path)}
        configs = {
            name: framework_config({**job, "overrides": [*overrides, *extra]}, precision, workdir)
            for name, (_, extra) in VARIANTS.items()
        }
        L.seed_everything(0, verbose=False)
        datamodule, task = build(configs["as is"])
        init_state = copy.deepcopy(task.state_dict())
        plain_corpus = Corpus(train_path, batch_size=20)

        def bare():
            _, fresh = build(configs["as is"])
            fresh.load_state_dict(init_state)
            window = _Window(warmup)
            return bare_task_loop(fresh, datamodule, configs["as is"], window, warmup + steps)

        runs = {
            **{
                name: (lambda n=name: _run_variant(n, configs[n], init_state, warmup))
                for name in VARIANTS
            },
            "Lightning (the task's step in a bare loop)": bare,
            "plain loop (reference)": lambda: _plain(plain_corpus, job, precision, _Window(warmup)),
        }
        seconds = {name: [] for name in runs}  # per round: (wall, CPU) seconds per step
        names = list(runs)
        for round_ in range(rounds):  # a rotating order: no variant is always first
            for name in names[round_:] + names[:round_]:
                rates = runs[name]()
                seconds[name].append(
                    (700 / rates["tokens_per_sec"], 700 / rates["tokens_per_cpu_sec"])
                )
        collation = collation_seconds(datamodule, warmup + steps)
        ops = operator_table(configs["as is"], init_state, warmup, steps) if with_ops else None
    return what, seconds, collation, ops


def _run_variant(name: str, cfg, init_state, warmup: int) -> dict:
    factory, _ = VARIANTS[name]
    with factory():
        return _framework(cfg, init_state, _Window(warmup))


def report(what, seconds: dict, collation: float, args) -> str:
    as_is = seconds["as is"]
    lines = [
        f"{args.model}, {args.precision}, {args.threads} thread(s), {what}; {args.steps} timed "
        f"steps after {args.warmup} warm-up steps (excluded), {args.rounds} rounds; median "
        "ms per step by the wall clock and by the process's CPU time, and the share of the step "
        "each piece costs (median of per-round shares; positive: switching it off saves time)",
        "",
        "| switched off | ms/step | share | CPU ms/step | share (CPU) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in seconds.items():
        wall, cpu = (1000 * statistics.median(v[k] for v in values) for k in (0, 1))
        if name == "as is":
            lines.append(f"| nothing (the framework as is) | {wall:.1f} | | {cpu:.1f} | |")
            continue
        shares = [
            statistics.median(1 - v[k] / a[k] for v, a in zip(values, as_is, strict=True))
            for k in (0, 1)
        ]
        label = name if name != "plain loop (reference)" else "everything: the plain loop"
        lines.append(
            f"| {label} | {wall:.1f} | {100 * shares[0]:+.1f}% | {cpu:.1f} | "
            f"{100 * shares[1]:+.1f}% |"
        )
    share = collation / statistics.median(v[0] for v in as_is)
    lines.append(
        f"| (collation: the DataLoader alone) | {1000 * collation:.2f} | {100 * share:.1f}% | | |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=next(iter(MODELS)), choices=list(MODELS))
    parser.add_argument("--precision", default="32-true", choices=("32-true", "bf16-mixed"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=5, help="steps not timed")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="4 steps, 1 round")
    parser.add_argument("--ops", action="store_true", help="torch.profiler's operator table")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup, args.rounds = 4, 1, 1
    what, seconds, collation, ops = profile(
        args.model, args.precision, args.threads, args.steps, args.warmup, args.rounds, args.ops
    )
    print(report(what, seconds, collation, args))
    if ops:
        print(f"\ntorch.profiler, the framework as is, {args.steps} steps:\n{ops}")


if __name__ == "__main__":
    main()
