"""Training speed: what the framework costs over a hand-written loop, what bf16-mixed buys, and
the peak memory of each.

    python -m benchmarks.run speed            # 100 timed steps per measurement, 5 rounds
    python -m benchmarks.run speed --quick    # 15 timed steps, best of two: a smoke check
    BENCH_THREADS=1 python -m benchmarks.run speed   # on a machine others are using

For each model (the RNNLM of Mikolov et al., 1 x 200, and Zaremba's 2 x 200 LSTM; bptt 35,
batch 20, SGD lr 1, gradient clipping 0.25) on PTB-mini (train on PTB's valid split, evaluate on
its test split; ``../shared/data/ptb``; the synthetic corpus when that is absent):

a. training tokens/s through the whole framework (LMDataModule columns, LanguageModel with its
   float64 perplexity sums, Lightning's Trainer with our callbacks and CSV logging) against a
   minimal PyTorch loop (same model class and initial weights, same batches, ``cross_entropy``,
   ``clip_grad_norm_``, ``SGD``), in the same process, interleaved;
b. bf16-mixed against fp32: speed, and the validation perplexity after the same steps;
c. peak memory of each: resident-set growth during training on a CPU (sampled every 2 ms, one
   process per measurement), ``torch.cuda.max_memory_allocated`` on a GPU.

Speed is measured in one process per model: each round runs the framework and the hand loop in
fp32 and in bf16-mixed, back to back in a rotating order, so every ratio compares runs made
under the same conditions (on a shared or virtual machine, speeds drift by 5-20% over minutes).
Each memory measurement has a process of its own.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TITLE = "Training speed: framework overhead, bf16-mixed, memory"
ROOT = Path(__file__).resolve().parents[1]
PTB = ROOT.parent / "shared" / "data" / "ptb"

SGD = ["model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=1.0"]  # both recipes
MODELS = {
    "RNNLM 1x200 (rnn_tanh)": [
        "model=rnnlm",
        "model.embedding_dim=200",
        "model.hidden_dim=200",
        *SGD,
    ],
    "LSTM 2x200": ["model=lstm", "model.embedding_dim=200", "model.hidden_dim=200", *SGD],
}
PRECISIONS = ("32-true", "bf16-mixed")


def corpus_overrides() -> tuple[str, list[str]]:
    if (PTB / "valid.txt").is_file():
        return "PTB-mini (train: PTB valid, 77k tokens; evaluation: PTB test)", [
            "dataset=text",
            f"dataset.train_path={PTB / 'valid.txt'}",
            f"dataset.valid_path={PTB / 'test.txt'}",
            f"dataset.test_path={PTB / 'test.txt'}",
        ]
    return "the synthetic corpus (../shared/data/ptb is absent)", ["dataset=synthetic"]


# --- inside one measurement process ----------------------------------------------------------
def _compose(overrides: list[str], workdir: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(ROOT)
        cfg.paths.output_dir = workdir
        cfg.paths.cache_dir = str(ROOT / ".cache" / "datasets")
        del cfg.hydra
    return cfg


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Window:
    """Tokens, wall time and CPU time of the training steps after the first ``warmup`` ones.

    CPU time (of the whole process) is what a step costs whatever else runs on the machine; wall
    time is what a user waits, and on a shared machine it includes waiting for a core.
    """

    def __init__(self, warmup: int):
        self.warmup, self.tokens = warmup, 0
        self.started = self.cpu_started = None
        self.seconds = self.cpu_seconds = 0.0

    def step_start(self, index: int) -> None:
        if index == self.warmup:
            _sync()
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def step_end(self, index: int, targets) -> None:
        if index >= self.warmup:
            self.tokens += targets.numel()  # no padding before the epoch's last batch
            _sync()
            self.seconds = time.perf_counter() - self.started
            self.cpu_seconds = time.process_time() - self.cpu_started

    @property
    def rates(self) -> dict[str, float]:
        """Tokens per wall-clock second and per CPU second."""
        if not self.seconds:
            return {"tokens_per_sec": 0.0, "tokens_per_cpu_sec": 0.0}
        return {
            "tokens_per_sec": self.tokens / self.seconds,
            "tokens_per_cpu_sec": self.tokens / max(self.cpu_seconds, 1e-9),
        }


def _framework(cfg, init_state: dict, steps: int, warmup: int, memory=None) -> dict:
    """``trainer.fit`` for ``warmup + steps`` batches, as train.py builds it."""
    import lightning as L

    from lm_experiments.train import build
    from lm_experiments.utils import instantiate, instantiate_group

    window = _Window(warmup)

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            window.step_start(batch_idx)
            if memory is not None and batch_idx == 0:
                memory.start()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            window.step_end(batch_idx, batch[1])

    datamodule, model = build(cfg)
    model.load_state_dict(init_state)
    callbacks = [*instantiate_group(cfg.get("callbacks")), Timer()]
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_group(cfg.logger))
    trainer.fit(model, datamodule=datamodule)
    return {**window.rates, "model": model, "datamodule": datamodule}


def _hand_loop(cfg, init_state: dict, steps: int, warmup: int, memory=None) -> dict:
    """The minimal PyTorch loop of pytorch/examples' word_language_model, on the same batches."""
    import torch
    import torch.nn.functional as F

    from lm_experiments.data.batching import ColumnBatches
    from lm_experiments.train import build
    from lm_experiments.utils import instantiate

    datamodule, task = build(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task.load_state_dict(init_state)
    model = task.net.to(device)  # the bare net: the loop below is the task
    model.train()
    optimizer = instantiate(cfg.model.optimizer)(params=model.parameters())  # the same one
    batches = ColumnBatches(datamodule.streams["train"], cfg.dataset.batch_size, cfg.dataset.bptt)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled="bf16" in cfg.trainer.precision)
    window, state = _Window(warmup), None
    for i in range(warmup + steps):
        inputs, targets = (t.to(device) for t in batches[i])
        window.step_start(i)
        if memory is not None and i == 0:
            memory.start()
        if state is None:
            state = model.init_state(inputs.size(0))
        with autocast:
            logits, state = model(inputs, state)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.trainer.gradient_clip_val)
        optimizer.step()
        state = model.detach_state(state)
        window.step_end(i, targets)
    return window.rates


class _PeakMemory:
    """Peak growth over the starting point: resident set (CPU, sampled) or CUDA allocations."""

    def __init__(self):
        self.base = self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def start(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = self.peak = self._rss()

        def sample():
            while not self._stop.wait(0.002):
                self.peak = max(self.peak, self._rss())

        threading.Thread(target=sample, daemon=True).start()

    def stop(self) -> float:
        """MiB above the starting point."""
        import torch

        self._stop.set()
        if torch.cuda.is_available():
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        self.peak = max(self.peak, self._rss())
        return (self.peak - self.base) / 2**20


def measure(job: dict) -> dict:
    """One process: a (model, precision) speed comparison, or one memory measurement."""
    import lightning as L
    import torch

    from lm_experiments.train import build

    if os.environ.get("BENCH_THREADS"):  # e.g. 1 on a shared machine: OpenMP spin-waits
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))  # collapse under others' load
    steps, warmup = job["steps"], job["warmup"]
    with tempfile.TemporaryDirectory() as workdir:
        overrides = [
            *job["overrides"],
            "callbacks=none",
            "~callbacks.model_checkpoint",  # no validation here, so nothing to monitor
            "model.scheduler=null",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "trainer.devices=1",
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={warmup + steps}",
            "+trainer.limit_val_batches=0",
            "dataset.batch_size=20",
            "dataset.bptt=35",
        ]
        cfgs = {p: _compose([*overrides, f"trainer.precision={p}"], workdir) for p in PRECISIONS}
        L.seed_everything(0, verbose=False)
        _, model = build(cfgs["32-true"])
        init_state = copy.deepcopy(model.state_dict())
        out: dict = {"threads": torch.get_num_threads()}
        runners = {"framework": _framework, "hand": _hand_loop}
        if job["kind"] == "memory":
            memory = _PeakMemory()
            runners[job["runner"]](cfgs[job["precision"]], init_state, steps, warmup, memory)
            out["peak_mib"] = memory.stop()
            return out
        # warm the process first (allocator pools, page faults, kernel selection), so that no
        # run pays for being first; then each round runs all four, in a rotating order
        for precision in PRECISIONS:
            _hand_loop(cfgs[precision], init_state, 0, warmup)
        combos = [(r, p) for r in runners for p in PRECISIONS]
        runs: dict[tuple, list[dict]] = {c: [] for c in combos}
        for repeat in range(job["repeats"]):
            for runner, precision in combos[repeat:] + combos[:repeat]:
                run = runners[runner](cfgs[precision], init_state, steps, warmup)
                runs[runner, precision].append(run)
                if runner == "framework" and f"val_ppl {precision}" not in out:
                    out[f"val_ppl {precision}"] = _validate(run, precision)  # after these steps
        for (runner, precision), results in runs.items():  # the best round, by each clock
            out[f"{runner} {precision}"] = max(r["tokens_per_sec"] for r in results)
            out[f"{runner}_cpu {precision}"] = max(r["tokens_per_cpu_sec"] for r in results)

        # one round's runs follow each other under the same conditions: the median of the
        # rounds' ratios is steadier than a ratio of two bests taken minutes apart
        def paired(a: tuple, b: tuple, key: str = "tokens_per_sec") -> float:
            return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True))

        for precision in PRECISIONS:
            out[f"ratio {precision}"] = paired(("framework", precision), ("hand", precision))
            out[f"ratio_cpu {precision}"] = paired(
                ("framework", precision), ("hand", precision), "tokens_per_cpu_sec"
            )
        for runner in runners:
            out[f"bf16 speed-up {runner}"] = paired((runner, "bf16-mixed"), (runner, "32-true"))
        return out


def _validate(run: dict, precision: str) -> float:
    """Validation perplexity of a trained framework run, evaluated in its own precision."""
    import lightning as L

    evaluator = L.Trainer(
        accelerator="auto",
        devices=1,
        precision=precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    evaluator.validate(run["model"], datamodule=run["datamodule"], verbose=False)
    return run["model"].results["val"]["ppl"]


# --- the parent: one process per measurement, then the tables ----------------------------------
def _child(job: dict) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_speed", "--child", json.dumps(job)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        tail = "\n".join(result.stderr.splitlines()[-15:])
        raise RuntimeError(f"measurement {job} failed ({result.returncode}):\n{tail}")
    return json.loads(lines[-1])


def cpu_bf16_support() -> str:
    try:
        flags = next(
            line.split(":", 1)[1].split()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("flags")
        )
    except (OSError, StopIteration):
        return "unknown (no /proc/cpuinfo)"
    native = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"yes ({', '.join(native)})" if native else "no (bf16 is emulated in fp32 units)"


def run(quick: bool = False) -> str:
    import torch

    steps, warmup, repeats = (15, 3, 2) if quick else (100, 5, 5)
    load_before = os.getloadavg()[0]
    corpus, data = corpus_overrides()
    speed, memory = {}, {}
    for name, model in MODELS.items():
        print(f"  {name}: speed", file=sys.stderr, flush=True)
        base = {"overrides": [*data, *model], "warmup": warmup}
        speed[name] = _child({**base, "kind": "speed", "steps": steps, "repeats": repeats})
        for precision in PRECISIONS:
            base = {**base, "precision": precision}
            for runner in ("framework", "hand"):
                job = {**base, "kind": "memory", "runner": runner, "steps": 5 if quick else 20}
                memory[name, precision, runner] = _child(job)["peak_mib"]

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    threads = next(iter(speed.values()))["threads"]
    lines = [
        f"{corpus}; batch 20 x bptt 35 = 700 tokens a step; {steps} timed steps after {warmup} "
        f"warm-up steps; {repeats} rounds, each running the framework and the hand loop in both "
        "precisions back to back, in one process per model (tokens/s: the best round; ratios and "
        f"speed-ups: the median of the rounds' ratios); {device}, {threads} intra-op thread(s) "
        f"(BENCH_THREADS); load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
        f"(other processes compete for the cores). Native bf16 on this CPU: {cpu_bf16_support()}.",
        "",
        "**a. Framework against a minimal PyTorch loop** (training tokens/s, same process)",
        "",
        "| model | precision | framework tok/s | hand loop tok/s | framework / hand "
        "| framework tok/CPU-s | hand loop tok/CPU-s | framework / hand (CPU) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in speed.items():
        for p in PRECISIONS:
            lines.append(
                f"| {name} | {p} | {r[f'framework {p}']:,.0f} | {r[f'hand {p}']:,.0f} | "
                f"{r[f'ratio {p}']:.3f} | {r[f'framework_cpu {p}']:,.0f} | "
                f"{r[f'hand_cpu {p}']:,.0f} | {r[f'ratio_cpu {p}']:.3f} |"
            )
    lines += [
        "",
        "**b. bf16-mixed against fp32** (framework; validation perplexity after the same steps,"
        " each evaluated in its own precision)",
        "",
        "| model | speed-up (framework) | speed-up (hand loop) | val ppl fp32 | val ppl bf16 "
        "| difference |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in speed.items():
        fp32, bf16 = r["val_ppl 32-true"], r["val_ppl bf16-mixed"]
        lines.append(
            f"| {name} | {r['bf16 speed-up framework']:.2f}x | {r['bf16 speed-up hand']:.2f}x | "
            f"{fp32:.2f} | {bf16:.2f} | {100 * (bf16 / fp32 - 1):+.2f}% |"
        )
    if torch.cuda.is_available():
        how = (
            "Under CUDA autocast the matrix products run in bf16 and the recurrence in float32 "
            "(`models/encoders.py`, `recurrence`: CUDA autocast would run cuDNN RNNs in fp16, and "
            "bf16-mixed has no GradScaler); both loops compute the loss as one fused float32 "
            "cross-entropy."
        )
    else:
        how = (
            "Under CPU autocast the matrix products run in bf16 (the output layer, and each "
            "step of the recurrence); the loss reads the bf16 logits a block of rows at a time "
            "and computes in float32 (`models/softmax.py`, `logits_nll`), where the hand loop "
            "converts all [N, V] logits to float32 first; the embedding and optimizer updates "
            "do not speed up. The output layer is one 2-D `addmm` with its bias fused in both "
            "loops: a 3-D `linear` on the CPU adds the bias in a separate broadcast pass, which "
            "in bf16 cost as much as the product itself."
        )
    lines += ["", f"Target: at least 1.5x faster at less than 2% perplexity difference. {how}"]
    kind = "CUDA allocations" if torch.cuda.is_available() else "resident-set growth"
    lines += [
        "",
        f"**c. Peak memory while training** (MiB, {kind} over the start of training)",
        "",
        "| model | precision | framework | hand loop |",
        "|---|---|---:|---:|",
    ]
    for name in MODELS:
        for precision in PRECISIONS:
            lines.append(
                f"| {name} | {precision} | {memory[name, precision, 'framework']:,.1f} | "
                f"{memory[name, precision, 'hand']:,.1f} |"
            )
    ratios = [r[f"ratio {p}"] for r in speed.values() for p in PRECISIONS]
    cpu_ratios = [r[f"ratio_cpu {p}"] for r in speed.values() for p in PRECISIONS]
    lines += [
        "",
        f"The framework runs at {min(ratios):.3f}-{max(ratios):.3f} of the hand loop's speed by "
        f"the wall clock and {min(cpu_ratios):.3f}-{max(cpu_ratios):.3f} by CPU time (target: at "
        "least 0.95; on a machine shared with other work the CPU-time ratio is the steadier "
        "one). Per step the framework also keeps float64 corpus sums, checks the loss is finite, "
        "logs, runs the signal-checkpoint hook and Lightning's loop and hooks.",
    ]

    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--child", help="run one measurement (JSON) and print its result")
    args = parser.parse_args()
    if args.child:
        result = measure(json.loads(args.child))
        print(json.dumps(result))
    else:
        print(run(quick=True))


if __name__ == "__main__":
    main()
