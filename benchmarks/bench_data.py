"""Data set-up at WikiText-103 size: seconds from the command's start to the first training
batch, with a cold cache and a warm one, and the peak memory.

    python -m benchmarks.run data            # 16M and 100M tokens (WikiText-103: 103M)
    python -m benchmarks.run data --quick    # 1M tokens: a smoke check
    python -m benchmarks.bench_data 1000000  # one size, printed

The text is generated (i.i.d. Zipf(1.1) words over WikiText-103's 267,735 types, 5-40 words a
line) and written once, outside the timing. Each measurement is one real command,
``python -m lm_experiments dataset=text ...`` with a one-step RNNLM (embedding and hidden 16,
so the model costs little next to the data), timed from just before the process starts to the
first ``on_train_batch_start`` (a callback writes the time and the process's peak RSS so far):
interpreter start, imports, Hydra, reading the text, tokenizing, the vocabulary, the id streams
and the first batch all count.
*Cold*: an empty cache folder (``datasets`` reads the text into Arrow, the tokens are counted and
encoded, the streams written). *Warm*: the same command again, the streams memory-mapped. The
file system's page cache is warm in both (the text was just written). Peak memory is the
command's maximum resident set (``benchmarks.child``: its own, not this benchmark's); the
first training step of a 267k-word softmax adds its own logits to it, so the peak up to the first
batch is given too: that one is the data's.

Most of a warm start is not the data: ``python -c "import lightning"`` alone (torch, and the
torch._dynamo, torchmetrics, scipy.signal and matplotlib that Lightning's import pulls in) takes
seconds on this machine, and varies with it. So each warm measurement is paired with that bare
import, timed just before it, and the table gives both and their difference: what the framework
adds to the import every Lightning program pays.
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from benchmarks import child

TITLE = "Data set-up: command start to first training batch (cold and warm cache)"
ROOT = Path(__file__).resolve().parents[1]
WT103_TYPES = 267_735
STAMP = "BENCH_FIRST_BATCH_FILE"  # where FirstBatch writes the time
GOALS = {"cold": 60.0, "warm": 5.0}  # seconds at 100M tokens (issue 16.3)


class FirstBatch(L.Callback):
    """Writes the wall-clock time of the first training batch and the peak RSS so far (GB) to
    ``$BENCH_FIRST_BATCH_FILE``."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0 and os.environ.get(STAMP):
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GB
            Path(os.environ[STAMP]).write_text(f"{time.time()!r} {peak!r}")


def write_text(path: Path, num_tokens: int, seed: int = 0, block: int = 5_000_000) -> int:
    """``num_tokens`` words of Zipf text, one sentence a line, written block by block with Arrow
    kernels (no Python loop over tokens). Returns the number of lines."""
    rng = np.random.default_rng(seed)
    p = np.arange(1, WT103_TYPES + 1, dtype=np.float64) ** -1.1
    cdf = np.cumsum(p / p.sum())
    names = pa.array([f"w{i}" for i in range(WT103_TYPES)])  # one Python string a type
    lines = 0
    with open(path, "wb") as f:
        for start in range(0, num_tokens, block):
            n = min(block, num_tokens - start)
            words = np.minimum(np.searchsorted(cdf, rng.random(n)), WT103_TYPES - 1)
            ends = np.cumsum(rng.integers(5, 41, size=n // 5 + 1))
            offsets = np.concatenate([[0], ends[ends < n], [n]]).astype(np.int32)
            sentences = pa.ListArray.from_arrays(pa.array(offsets), names.take(pa.array(words)))
            text = pc.binary_join_element_wise(pc.binary_join(sentences, " "), "", "\n")
            bounds = np.frombuffer(text.buffers()[1], np.int32)[text.offset :][[0, len(text)]]
            f.write(memoryview(text.buffers()[2])[bounds[0] : bounds[1]])  # the lines, as bytes
            lines += len(text)
    return lines


def first_batch_seconds(folder: Path, cache: Path, name: str) -> tuple[float, float, float]:
    """(seconds to the first training batch, peak RSS in GB up to it, the command's peak RSS
    in GB) of one real command (its run folder ``run_<name>``: a finished run's folder is never
    reused)."""
    stamp = folder / "first_batch.txt"
    stamp.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "lm_experiments",
        "dataset=text",
        f"dataset.data_dir={folder}",
        f"paths.cache_dir={cache}",
        f"hydra.run.dir={folder / f'run_{name}'}",
        "model=rnnlm",
        "model.embedding_dim=16",
        "model.hidden_dim=16",
        "trainer.max_steps=1",
        "++trainer.limit_val_batches=1",
        "test=false",
        "logger=none",
        "callbacks=none",
        "print_config=false",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "+callbacks.first_batch._target_=benchmarks.bench_data.FirstBatch",
    ]
    env = {**os.environ, STAMP: str(stamp), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    started = time.time()
    _, peak = child.measured(command, folder, env)  # its own peak RSS, not this benchmark's
    if not stamp.exists():
        raise RuntimeError("the run ended before its first training batch")
    at, peak_then = map(float, stamp.read_text().split())
    return at - started, peak_then, peak


def import_seconds(folder: Path) -> float:
    """Wall seconds of ``python -c "import lightning"``: the floor under any Lightning run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return child.measured([sys.executable, "-c", "import lightning"], folder, env)[0]


def warm_runs(folder: Path, repeats: int = 5) -> dict:
    """The warm start, each time right after the bare import: medians of each and of the
    pairs' differences."""
    pairs = []
    for i in range(repeats):
        floor = import_seconds(folder)
        pairs.append((first_batch_seconds(folder, folder / "cache", f"warm{i}"), floor))
    return {
        "seconds": statistics.median(run[0] for run, _ in pairs),
        "peak_first_batch": max(run[1] for run, _ in pairs),
        "peak": max(run[2] for run, _ in pairs),
        "import": statistics.median(floor for _, floor in pairs),
        "import_range": (min(floor for _, floor in pairs), max(floor for _, floor in pairs)),
        "added": statistics.median(run[0] - floor for run, floor in pairs),
    }


def measure(num_tokens: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        folder = Path(tmp)
        lines = write_text(folder / "train.txt", num_tokens)
        held_out = min(num_tokens // 100, 500_000)
        write_text(folder / "valid.txt", held_out, seed=1)
        write_text(folder / "test.txt", held_out, seed=2)
        text_mb = (folder / "train.txt").stat().st_size / 2**20
        cold = first_batch_seconds(folder, folder / "cache", "cold")
        warm = warm_runs(folder)
        streams = sum(f.stat().st_size for f in (folder / "cache").rglob("*.npy")) / 2**20
    return {
        "tokens": num_tokens,
        "lines": lines,
        "text_mb": text_mb,
        "cold": cold,
        "warm": warm,
        "streams_mb": streams,
    }


def run(quick: bool = False) -> str:
    sizes = [1_000_000] if quick else [16_000_000, 100_000_000]
    rows = [
        "| tokens | lines | text | cold: to first batch | cold: peak RSS to it | warm: to first "
        "batch | `import lightning` alone | warm minus the import | warm: peak RSS to first batch "
        "| warm: peak RSS, whole command | id streams on disk |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in sizes:
        m = measure(n)
        cold, warm = m["cold"], m["warm"]
        rows.append(
            f"| {n / 1e6:.0f}M | {m['lines']:,} | {m['text_mb']:.0f} MB | {cold[0]:.1f} s | "
            f"{cold[1]:.2f} GB | {warm['seconds']:.1f} s | {warm['import']:.1f} s "
            f"({warm['import_range'][0]:.1f}-{warm['import_range'][1]:.1f}) | "
            f"{warm['added']:.1f} s | {warm['peak_first_batch']:.2f} GB | {warm['peak']:.2f} GB | "
            f"{m['streams_mb']:.0f} MB |"
        )
    return "\n".join(
        [
            *rows,
            "",
            f"Goals at 100M tokens: cold at most {GOALS['cold']:.0f} s, warm at most "
            f"{GOALS['warm']:.0f} s, from the command's start (interpreter, imports and Hydra "
            "included) to the first training batch. Warm figures: the median of 5 runs, each "
            'right after a bare `python -c "import lightning"` (its median and range beside it, '
            "and the median of the pairs' differences, to be read against that spread). "
            "The id streams are int32 `.npy` files, "
            "memory-mapped on a warm start (4 bytes a token) and read in place: each batch is "
            "gathered from the map when the loader asks for it.",
        ]
    )


if __name__ == "__main__":
    tokens = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    print(measure(tokens))
