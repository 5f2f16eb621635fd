"""Training speed: the framework against an independent plain PyTorch loop, bf16-mixed, memory.

    python -m benchmarks.run speed            # 100 timed steps per measurement, 5 rounds
    python -m benchmarks.run speed --quick    # 15 timed steps, 2 rounds: a smoke check
    BENCH_THREADS=1 python -m benchmarks.run speed   # only these intra-op thread counts (1,2)

For each model (the RNNLM of Mikolov et al., 1 x 200, and Zaremba's 2 x 200 LSTM; bptt 35,
batch 20, SGD lr 1, gradient clipping 0.25, dropout 0) on PTB-mini (train on PTB's valid split;
``../shared/data/ptb``; when that is absent, generated Zipf text, written out for both):

a. training tokens/s through the whole framework (LMDataModule's sentence-aligned columns,
   the LanguageModeling task with its float64 perplexity sums, Lightning's Trainer with our
   callbacks and CSV logging) against ``benchmarks/plain_loop.py``: pytorch/examples'
   word_language_model loop, which reads the text, builds its vocabulary and batchifies the
   stream itself and shares no code with the framework; on 1 and on 2 intra-op threads;
b. bf16-mixed (framework) against the plain loop's fp32 and its bf16 autocast, and the
   framework's validation perplexity after the same steps in each precision;
c. peak memory of each: resident-set growth during training on a CPU (sampled every 2 ms, one
   process per measurement), ``torch.cuda.max_memory_allocated`` on a GPU.

Both are timed the same way: the wall clock from the start of the first step after the warm-up
steps to the end of the last step (so everything between steps counts: data loading, Lightning's
loop and hooks), over the targets scored in those steps. Each (model, thread count) has one
process; each round runs the four (framework, plain) x (fp32, bf16) back to back in a rotating
order, so every ratio compares runs made under the same conditions (on a shared or virtual
machine, speeds drift by 5-20% over minutes); a ratio is the median of the rounds' ratios.
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

TITLE = "Training speed: the framework against a plain PyTorch loop, bf16-mixed, memory"
ROOT = Path(__file__).resolve().parents[1]
PTB = ROOT.parent / "shared" / "data" / "ptb"

SGD = ["model.optimizer._target_=torch.optim.SGD", "model.optimizer.lr=1.0"]  # both recipes
SIZES = ["model.embedding_dim=200", "model.hidden_dim=200", "model.dropout=0.0", *SGD]
MODELS = {  # name: (framework overrides, the plain loop's model)
    "RNNLM 1x200 (rnn_tanh)": (["model=rnnlm", *SIZES], {"cell": "rnn_tanh", "layers": 1}),
    "LSTM 2x200": (["model=lstm", *SIZES], {"cell": "lstm", "layers": 2}),
}
PRECISIONS = ("32-true", "bf16-mixed")
RUNNERS = ("framework", "plain")


def corpus(workdir: Path) -> tuple[str, Path, Path]:
    """(what it is, train file, evaluation file): PTB-mini, or generated text written out."""
    if (PTB / "valid.txt").is_file():
        return "PTB-mini (train: PTB valid, 74k tokens; evaluation: PTB test)", *(
            PTB / "valid.txt",
            PTB / "test.txt",
        )
    import numpy as np

    rng = np.random.default_rng(0)
    words = np.array([f"w{i}" for i in range(10_000)])
    p = 1.0 / np.arange(1, 10_001)
    paths = []
    for split, tokens in (("train", 70_000), ("test", 8_000)):
        lines, n = [], 0
        while n < tokens:
            length = int(rng.integers(5, 40))
            lines.append(" ".join(words[rng.choice(10_000, length, p=p / p.sum())]))
            n += length + 1
        paths.append(workdir / f"{split}.txt")
        paths[-1].write_text("\n".join(lines) + "\n")
    return "generated Zipf text (70k tokens, 10k types; ../shared/data/ptb is absent)", *paths


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


def framework_config(job: dict, precision: str, workdir: str):
    """The framework's run: one epoch cut at ``warmup + steps`` batches, no validation."""
    return _compose(
        [
            *job["overrides"],
            "dataset=text",
            f"dataset.train_path={job['train']}",
            f"dataset.valid_path={job['eval']}",
            f"dataset.test_path={job['eval']}",
            "callbacks=none",
            "~callbacks.model_checkpoint",  # no validation here, so nothing to monitor
            "model.scheduler=null",
            "logger=csv",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "trainer.devices=1",
            "trainer.max_epochs=1",
            f"trainer.limit_train_batches={job['warmup'] + job['steps']}",
            "+trainer.limit_val_batches=0",
            "dataset.batch_size=20",
            "dataset.bptt=35",
            f"trainer.precision={precision}",
            f"threads={job['threads']}",  # as the plain loop's (threads=auto would pick its own)
        ],
        workdir,
    )


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Window:
    """Tokens, wall time and CPU time of the training steps after the first ``warmup`` ones.

    CPU time (of the whole process) is what a step costs whatever else runs on the machine; wall
    time is what a user waits, and on a shared machine it includes waiting for a core.
    """

    def __init__(self, warmup: int, memory=None):
        self.warmup, self.memory, self.tokens = warmup, memory, 0
        self.started = self.cpu_started = None
        self.seconds = self.cpu_seconds = 0.0

    def step_start(self, index: int) -> None:
        if index == 0 and self.memory is not None:
            self.memory.start()
        if index == self.warmup:
            _sync()
            self.started, self.cpu_started = time.perf_counter(), time.process_time()

    def step_end(self, index: int, tokens: int) -> None:
        if index >= self.warmup:
            self.tokens += tokens
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


def _framework(cfg, init_state: dict, window: _Window, **trainer_options) -> dict:
    """``trainer.fit`` as train.py builds it, timed by a callback (``trainer_options``: e.g. a
    profiler, for ``profile_step.py``)."""
    import lightning as L

    from lm_experiments.data.vocab import IGNORE_INDEX
    from lm_experiments.train import _callbacks, build
    from lm_experiments.utils import instantiate, instantiate_group

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            window.step_start(batch_idx)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            window.step_end(batch_idx, int((batch[1] != IGNORE_INDEX).sum()))

    datamodule, model = build(cfg)
    model.load_state_dict(init_state)
    callbacks = [*_callbacks(cfg), Timer()]  # with IntraOpThreads: threads=N
    logger = instantiate_group(cfg.logger)
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger, **trainer_options)
    trainer.fit(model, datamodule=datamodule)
    return {**window.rates, "model": model, "datamodule": datamodule}


def _plain(plain_corpus, job: dict, precision: str, window: _Window) -> dict:
    from benchmarks.plain_loop import train

    steps = job["warmup"] + job["steps"]
    train(plain_corpus, **job["plain"], bf16="bf16" in precision, steps=steps, window=window)
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
    """One process: a (model, thread count) speed comparison, or one memory measurement."""
    import lightning as L
    import torch

    from benchmarks.plain_loop import Corpus
    from lm_experiments.train import build

    torch.set_num_threads(job["threads"])
    warmup = job["warmup"]
    with tempfile.TemporaryDirectory() as workdir:
        cfgs = {p: framework_config(job, p, workdir) for p in PRECISIONS}
        L.seed_everything(0, verbose=False)
        datamodule, model = build(cfgs["32-true"])
        init_state = copy.deepcopy(model.state_dict())
        plain_corpus = Corpus(job["train"], batch_size=20)
        out: dict = {
            "threads": torch.get_num_threads(),
            "vocab framework": len(datamodule.vocab),
            "vocab plain": plain_corpus.vocab_size,
        }

        def once(runner: str, precision: str, memory=None) -> dict:
            window = _Window(warmup, memory)
            if runner == "framework":
                return _framework(cfgs[precision], init_state, window)
            return _plain(plain_corpus, job, precision, window)

        if job["kind"] == "memory":
            memory = _PeakMemory()
            once(job["runner"], job["precision"], memory)
            out["peak_mib"] = memory.stop()
            return out
        # warm the process first (allocator pools, page faults, kernel selection), so that no
        # run pays for being first; then each round runs all four, in a rotating order
        for precision in PRECISIONS:
            _plain(plain_corpus, {**job, "steps": 0}, precision, _Window(warmup))
        combos = [(r, p) for r in RUNNERS for p in PRECISIONS]
        runs: dict[tuple, list[dict]] = {c: [] for c in combos}
        for repeat in range(job["repeats"]):
            for runner, precision in combos[repeat:] + combos[:repeat]:
                run = once(runner, precision)
                runs[runner, precision].append(run)
                if runner == "framework" and f"val_ppl {precision}" not in out:
                    out[f"val_ppl {precision}"] = _validate(run, precision, workdir)
        for (runner, precision), results in runs.items():  # the best round, by each clock
            out[f"{runner} {precision}"] = max(r["tokens_per_sec"] for r in results)
            out[f"{runner}_cpu {precision}"] = max(r["tokens_per_cpu_sec"] for r in results)

        # one round's runs follow each other under the same conditions: the median of the
        # rounds' ratios is steadier than a ratio of two bests taken minutes apart
        def paired(a: tuple, b: tuple, key: str = "tokens_per_sec") -> float:
            return statistics.median(x[key] / y[key] for x, y in zip(runs[a], runs[b], strict=True))

        for a, b in COMPARED:
            out[f"ratio {a}/{b}"] = paired(("framework", a), ("plain", b))
            out[f"ratio_cpu {a}/{b}"] = paired(("framework", a), ("plain", b), "tokens_per_cpu_sec")
        for runner in RUNNERS:
            out[f"bf16 speed-up {runner}"] = paired((runner, "bf16-mixed"), (runner, "32-true"))
        return out


#: (framework precision, plain loop precision) and the goal for framework / plain
COMPARED = (("32-true", "32-true"), ("bf16-mixed", "32-true"), ("bf16-mixed", "bf16-mixed"))
GOALS = {("32-true", "32-true"): 1.0, ("bf16-mixed", "32-true"): 1.5}


def _validate(run: dict, precision: str, workdir: str) -> float:
    """Validation perplexity of a framework run after its steps, evaluated in its own precision
    (its score files go to ``workdir``)."""
    import lightning as L

    evaluator = L.Trainer(
        default_root_dir=workdir,
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


def thread_counts() -> list[int]:
    return [int(t) for t in os.environ.get("BENCH_THREADS", "1,2").split(",")]


def run(quick: bool = False) -> str:
    steps, warmup, repeats = (15, 3, 2) if quick else (100, 5, 5)
    load_before = os.getloadavg()[0]
    speed, memory = {}, {}
    with tempfile.TemporaryDirectory() as workdir:
        what, train_path, eval_path = corpus(Path(workdir))
        for name, (overrides, plain) in MODELS.items():
            base = {"overrides": overrides, "plain": plain, "warmup": warmup}
            base |= {"train": str(train_path), "eval": str(eval_path)}
            for threads in thread_counts():
                print(f"  {name}: speed, {threads} thread(s)", file=sys.stderr, flush=True)
                job = {**base, "kind": "speed", "threads": threads, "steps": steps}
                speed[name, threads] = _child({**job, "repeats": repeats})
            for precision in PRECISIONS:
                for runner in RUNNERS:
                    job = {**base, "kind": "memory", "runner": runner, "precision": precision}
                    job |= {"threads": thread_counts()[0], "steps": 5 if quick else 20}
                    memory[name, precision, runner] = _child(job)["peak_mib"]
    return report(what, speed, memory, steps, warmup, repeats, load_before)


def report(what, speed, memory, steps, warmup, repeats, load_before) -> str:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    first = next(iter(speed.values()))
    lines = [
        f"{what}; vocabulary {first['vocab framework']:,} (framework, with its specials) and "
        f"{first['vocab plain']:,} (plain loop); batch 20 x bptt 35 = 700 tokens a step; "
        f"tokens/s over {steps} timed steps after {warmup} warm-up steps (excluded), from the "
        "start of the first timed step to the end of the last, for both; "
        f"{repeats} rounds, each running the framework and the plain loop in both precisions back "
        "to back, one process per model and thread count (tokens/s: the best round; ratios: "
        f"the median of the rounds' ratios); {device}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (other processes compete for the cores). Native bf16 "
        f"on this CPU: {cpu_bf16_support()}.",
        "",
        "**a. Framework against the plain loop** (`benchmarks/plain_loop.py`; training tokens/s)",
        "",
        "| model | threads | framework | plain loop | framework tok/s | plain tok/s "
        "| framework / plain | by CPU time | goal |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    for (name, threads), r in speed.items():
        for a, b in COMPARED:
            goal = GOALS.get((a, b))
            lines.append(
                f"| {name} | {threads} | {a} | {b} | {r[f'framework {a}']:,.0f} | "
                f"{r[f'plain {b}']:,.0f} | {r[f'ratio {a}/{b}']:.3f} | "
                f"{r[f'ratio_cpu {a}/{b}']:.3f} | {f'>= {goal:.1f}' if goal else ''} |"
            )
    lines += [
        "",
        "**b. bf16 against fp32** (validation perplexity of the framework after the same steps,"
        " each evaluated in its own precision)",
        "",
        "| model | threads | speed-up (framework) | speed-up (plain loop) | val ppl fp32 "
        "| val ppl bf16 | difference |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (name, threads), r in speed.items():
        fp32, bf16 = r["val_ppl 32-true"], r["val_ppl bf16-mixed"]
        lines.append(
            f"| {name} | {threads} | {r['bf16 speed-up framework']:.2f}x | "
            f"{r['bf16 speed-up plain']:.2f}x | {fp32:.2f} | {bf16:.2f} | "
            f"{100 * (bf16 / fp32 - 1):+.2f}% |"
        )
    kind = "CUDA allocations" if torch.cuda.is_available() else "resident-set growth"
    lines += [
        "",
        f"**c. Peak memory while training** (MiB, {kind} over the start of training, "
        f"{thread_counts()[0]} thread(s))",
        "",
        "| model | precision | framework | plain loop |",
        "|---|---|---:|---:|",
    ]
    for name in MODELS:
        for precision in PRECISIONS:
            lines.append(
                f"| {name} | {precision} | {memory[name, precision, 'framework']:,.1f} | "
                f"{memory[name, precision, 'plain']:,.1f} |"
            )
    met = [r[f"ratio {a}/{b}"] >= goal for r in speed.values() for (a, b), goal in GOALS.items()]
    lines += [
        "",
        f"Goals (framework / plain >= 1.0 in fp32, >= 1.5 with bf16-mixed against the plain "
        f"fp32): {sum(met)} of {len(met)} met. Per step the framework also keeps float64 corpus "
        "sums, checks the loss is finite, logs, runs the signal-checkpoint hook and Lightning's "
        "loop; `python -m benchmarks.profile_step` shows what each costs.",
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
