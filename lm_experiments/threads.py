"""How many intra-op threads torch gets: ``threads=auto`` (the default) or ``threads=N``.

On a busy machine OpenMP's threads spin-wait for a core that another process holds, and a small
model then runs many times slower on two threads than on one (measured on the project's 2-core
VM with one other process: 158 -> 1.4 batches/s). So ``auto`` counts the cores that are actually
free (the process's CPU affinity less the cores busy right now, sampled from ``/proc/stat`` over
a fifth of a second; the 1-minute load average where that is unreadable) and gives a model more
than one thread only when it is large enough to gain from them (``PARAMS_PER_THREAD``; see
``benchmarks/bench_threads.py``, which measures the cliff and the gain). The load average alone
lags by a minute: a sweep's next job would count its own finished predecessor as another
process and run a large model on one thread (measured: 1.8x slower). Processes that share a
node (DDP ranks) share its free cores. ``OMP_NUM_THREADS``, when set, is the user's choice and
``auto`` keeps it.
"""

from __future__ import annotations

import os
import time

import lightning as L
import torch

#: parameters a thread must have to itself before a second one pays for its synchronisation
#: (benchmarks/bench_threads.py, 2 cores: a 0.1M-parameter RNNLM gains nothing from a second
#: thread, 2.5M- and 3M-parameter models gain 1.8-1.9x; so a second thread from 2M parameters)
PARAMS_PER_THREAD = 1_000_000
SAMPLE_SECONDS = 0.2  # how long free_cores watches /proc/stat


def available_cores() -> int:
    """Cores this process may run on (CPU affinity: cgroups, taskset, SLURM's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_times(stat: str) -> tuple[float, float]:
    """(all, idle) jiffies summed over the machine's CPUs, from the first line of /proc/stat:
    ``cpu user nice system idle iowait irq softirq steal ...``."""
    fields = [float(x) for x in stat.split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[3] + fields[4]  # steal counts as busy: another VM has it


def busy_between(before: str, after: str, cpus: int) -> float:
    """How many of the machine's ``cpus`` were busy between two readings of /proc/stat."""
    (all_0, idle_0), (all_1, idle_1) = cpu_times(before), cpu_times(after)
    elapsed = all_1 - all_0
    return 0.0 if elapsed <= 0 else cpus * (1 - (idle_1 - idle_0) / elapsed)


def busy_cores() -> float:
    """Cores kept busy by other processes now (this one waits while it samples)."""
    try:
        with open("/proc/stat") as f:
            before = f.read()
        time.sleep(SAMPLE_SECONDS)
        with open("/proc/stat") as f:
            after = f.read()
        return busy_between(before, after, os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):  # not Linux: the load average
        try:
            return os.getloadavg()[0]
        except OSError:
            return 0.0


def free_cores() -> int:
    """Cores not already kept busy by other processes, at least one."""
    cores = available_cores()
    return max(1, min(cores, round(cores - busy_cores())))


def auto_threads(num_parameters: int, processes: int = 1, free: int | None = None) -> int:
    """The thread count ``threads=auto`` picks for a model of ``num_parameters``."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    free = free_cores() if free is None else free
    per_process = max(1, free // max(1, processes))
    return max(1, min(per_process, num_parameters // PARAMS_PER_THREAD))


def resolve(setting, num_parameters: int, processes: int = 1) -> int:
    """``threads=N`` -> N; ``auto``/null -> :func:`auto_threads`."""
    if setting in (None, "auto"):
        return auto_threads(num_parameters, processes)
    return int(setting)


class IntraOpThreads(L.Callback):
    """Sets torch's intra-op threads for each stage of a run from the model it runs, and gives
    the previous setting back when the stage ends (the next job of a multirun starts afresh)."""

    def __init__(self, setting="auto"):
        self.setting = setting
        self.previous: int | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.previous = torch.get_num_threads()
        params = sum(p.numel() for p in pl_module.parameters())
        processes = max(1, trainer.world_size // max(1, trainer.num_nodes))
        torch.set_num_threads(resolve(self.setting, params, processes))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.previous is not None:
            torch.set_num_threads(self.previous)
            self.previous = None
