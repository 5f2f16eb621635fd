"""Intra-op threads: one thread against all cores against ``threads=auto``, on a quiet machine and
on a busy one (another process spinning on one core), for a small and a large model.

    python -m benchmarks.run threads            # 30 timed training steps per measurement
    python -m benchmarks.run threads --quick    # 3 steps: a smoke check

Each measurement is a process of its own (OpenMP reads its settings once): it builds the model,
sets ``torch.set_num_threads`` to the count under test, and times training steps (forward,
cross-entropy, backward, SGD) on [20, 35] batches. ``auto`` is what ``threads=auto`` picks in
that process (lm_experiments/threads.py), so the table shows whether it avoids the busy-machine
cliff and keeps the gain of more threads where there is one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

TITLE = "Intra-op threads: 1 vs all cores vs auto, quiet and busy machine"

MODELS = {  # name: (cell, layers, hidden, vocabulary)
    "small (RNNLM 1x128, V=300)": ("RNN", 1, 128, 300),
    "medium (LSTM 2x200, V=6000)": ("LSTM", 2, 200, 6_000),
    "large (LSTM 2x650, V=10000)": ("LSTM", 2, 650, 10_000),
}

STEP = """
import json, sys, time, torch
from torch import nn
from lm_experiments.threads import auto_threads
cell, layers, hidden, vocab, threads, steps = json.loads(sys.argv[1])
class LM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = getattr(nn, cell)(hidden, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
    def forward(self, x):
        return self.out(self.rnn(self.embed(x))[0])
model = LM()
params = sum(p.numel() for p in model.parameters())
chosen = auto_threads(params) if threads == "auto" else int(threads)
torch.set_num_threads(chosen)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x = torch.randint(vocab, (20, 35)); y = torch.randint(vocab, (20, 35))
def step():
    opt.zero_grad()
    loss = nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
    loss.backward(); opt.step()
for _ in range(2):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
rate = steps / (time.perf_counter() - start)
print(json.dumps({"steps_per_s": rate, "threads": chosen, "params": params}))
"""


def measure(model: tuple, threads, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(
        [sys.executable, "-c", STEP, json.dumps([*model, threads, steps])],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def busy_core() -> subprocess.Popen:
    """Another process keeping one core busy, as a second job on a shared machine does."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run(quick: bool = False) -> str:
    steps = 3 if quick else 30
    cores = len(os.sched_getaffinity(0))
    lines = [
        f"{steps} timed steps a measurement, batch [20, 35], SGD; {cores} cores.",
        "",
        "| model | parameters | machine | 1 thread | all cores | auto (threads) |",
        "|---|---:|---|---:|---:|---:|",
    ]
    rows = {}
    for machine in ("quiet", "busy"):  # every quiet row, then every busy one under one spinner
        spinner = busy_core() if machine == "busy" else None
        try:
            if spinner:
                time.sleep(0 if quick else 65)  # let the 1-minute load average see it
            for name, model in MODELS.items():
                if quick:
                    model = (model[0], 1, 32, 50)
                one = measure(model, 1, steps)
                every = measure(model, cores, steps)
                auto = measure(model, "auto", steps)
                rows[name, machine] = (
                    f"| {name} | {one['params']:,} | {machine} | {one['steps_per_s']:.1f} | "
                    f"{every['steps_per_s']:.1f} | {auto['steps_per_s']:.1f} ({auto['threads']}) |"
                )
        finally:
            if spinner:
                spinner.kill()
                spinner.wait()
    lines += [rows[name, machine] for name in MODELS for machine in ("quiet", "busy")]
    lines += [
        "",
        "Steps per second (higher is better). `auto` should never be far below the best column "
        "of its row, and never at the busy machine's all-cores cliff.",
    ]
    return "\n".join(lines)
