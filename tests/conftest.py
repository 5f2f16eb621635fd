"""Shared fixtures: real Hydra composition, small local corpora, a session-wide datasets cache."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict
from torch import nn

import lm_experiments  # noqa: F401  registers the config resolvers (paths: lm_home, lm_cache)

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = ROOT.parent / "shared"

# Tiny test models gain nothing from intra-op threads, and on a loaded 2-core machine OpenMP
# spin-waiting makes them 20x slower; subprocess runs (CLI, DDP ranks) inherit this too.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def shared_path(*parts: str) -> Path:
    """A file under ../shared, or skip the test saying why."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: the shared reference data sits beside the checkout in CI")
    return path


def toy_sentences(n: int, seed: int) -> list[str]:
    """A small language with a dependency an RNN can learn: the subject fixes the verb form."""
    rng = random.Random(seed)
    subjects = {"the cat": "sits", "the cats": "sit", "a dog": "runs", "dogs": "run"}
    adjectives = ["big", "small", "old", "red"]
    places = ["on the mat", "in the house", "by the door", "under the tree"]
    lines = []
    for _ in range(n):
        subject = rng.choice(list(subjects))
        det, _, noun = subject.rpartition(" ")
        adj = " ".join(rng.sample(adjectives, rng.randint(0, 2)))
        words = [det, adj, noun, subjects[subject], rng.choice(places)]
        lines.append(" ".join(w for w in words if w))
    return lines


@pytest.fixture(scope="session")
def toy_corpus(tmp_path_factory) -> dict[str, Path]:
    """train/valid/test text files of the toy language (one sentence a line)."""
    folder = tmp_path_factory.mktemp("toy")
    files = {}
    for split, n, seed in (("train", 600, 0), ("valid", 100, 1), ("test", 100, 2)):
        files[split] = folder / f"{split}.txt"
        files[split].write_text("\n".join(toy_sentences(n, seed)) + "\n")
    return files


def scored_tokens(path: Path) -> int:
    """The tokens every model scores in a text file: its words and one <eos> a non-empty line."""
    lines = path.read_text().splitlines()
    return sum(len(line.split()) + 1 for line in lines if line.strip())


# Module fixtures that train a model once for many tests: under pytest-xdist (``make test`` runs
# ``-n 2 --dist loadgroup``) the tests that share one stay on one worker, so it is trained once.
SHARED_RUNS = {
    "lstm_run",
    "trained_run",
    "trained_pair",
    "ddp_sweep",
    "uninterrupted",
    "cpu_runs",
    "sweep",
    "wandb_run",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        shared = sorted(SHARED_RUNS & set(getattr(item, "fixturenames", ())))
        if shared:
            item.add_marker(pytest.mark.xdist_group(f"{item.module.__name__}:{shared[0]}"))


@pytest.fixture(autouse=True)
def _run_in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own folder, so what a plain ``Trainer`` writes beside itself
    (``lightning_logs/``, ``scores/``) never lands in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("datasets_cache")


def toy_overrides(files: dict[str, Path]) -> list[str]:
    return [
        "dataset=text",
        f"dataset.train_path={files['train']}",
        f"dataset.valid_path={files['valid']}",
        f"dataset.test_path={files['test']}",
    ]


def compose_config(overrides: list[str], run_dir: Path, cache: Path) -> DictConfig:
    """Compose conf/ like the CLI does, with paths pointed into the test's folders."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # runtime.choices, as in a real run
    with open_dict(cfg):
        cfg.paths.root_dir = str(run_dir)
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.cache_dir = str(cache)
        cfg.print_config = False
        del cfg.hydra
    return cfg


FAST = [
    "callbacks=none",
    "logger=none",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
]


class TrainingSpy(L.Callback):
    """Records where training ran: the device of the parameters and the dtype each Linear layer
    produces in training steps (evaluation outside a step, e.g. the biRNN's epoch-end backward
    pass, runs without autocast). Add it with ``SPY``; read it after ``train()`` returns."""

    devices: set = set()  # class-level: Hydra instantiates the callback, the test reads these
    dtypes: set = set()
    rnn_dtypes: set = set()  # of the recurrent layers' outputs

    def on_train_start(self, trainer, pl_module):
        TrainingSpy.devices = {p.device.type for p in pl_module.parameters()}
        TrainingSpy.dtypes, TrainingSpy.rnn_dtypes = set(), set()
        for module in pl_module.modules():
            if isinstance(module, nn.Linear):
                module.register_forward_hook(
                    lambda m, i, out: TrainingSpy.dtypes.add(out.dtype) if m.training else None
                )
            elif isinstance(module, nn.RNNBase):  # output: (h [B, T, H], state)
                module.register_forward_hook(
                    lambda m, i, out: (
                        TrainingSpy.rnn_dtypes.add(out[0].dtype) if m.training else None
                    )
                )


SPY = ["+callbacks.spy._target_=tests.conftest.TrainingSpy"]


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess: this checkout first on the path, so that a run can
    instantiate a test's own callback (``tests.test_x.Class``) from any working directory."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def run_cli(
    args: list[str], cwd: Path, module: str = "lm_experiments", timeout: int = 240, python=()
):
    """Run ``python [python options] -m <module> ...`` in a subprocess, as a user would."""
    env = cli_env()
    env.setdefault("LM_EXPERIMENTS_HOME", str(cwd))  # default run dirs under the test's folder
    return subprocess.run(
        [sys.executable, *python, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def csv_steps(run_dir: Path) -> int:
    """The last training step a run's CSV logger has written (0: none yet)."""
    try:
        with open(run_dir / "csv" / "metrics.csv") as f:
            return max(
                (int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")), default=0
            )
    except (OSError, ValueError, KeyError):  # not written yet, or a row being written
        return 0


#: overrides that make a run log every step to CSV at once (what ``interrupt_cli`` watches)
LOG_EVERY_STEP = [
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "+logger.csv.flush_logs_every_n_steps=1",
]


def processes_with(marker: str) -> list[int]:
    """Pids of the running processes whose command line contains ``marker`` (Linux /proc)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                pids.append(int(entry.name))
        except (OSError, UnicodeDecodeError):  # ended meanwhile, or not ours to read
            continue
    return pids


def interrupt_cli(args: list[str], cwd: Path, run_dir: Path, after_steps: int) -> tuple[int, str]:
    """Start ``python -m lm_experiments ...`` (run directory ``run_dir``, logging with
    ``LOG_EVERY_STEP``), send it SIGTERM once it has logged ``after_steps`` training steps, as a
    scheduler or ``kill`` would; return its exit status and stderr once every process of the run
    (DDP ranks included) has ended."""
    marker = f"hydra.run.dir={run_dir}"
    with open(cwd / "stderr.txt", "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "lm_experiments", *args, marker],
            cwd=cwd,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,  # its own process group: killed whole if it hangs
        )
        try:
            deadline = time.monotonic() + 180
            while csv_steps(run_dir) < after_steps and proc.poll() is None:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)  # to the launched process only (rank 0 under DDP)
            returncode = proc.wait(timeout=120)
            deadline = time.monotonic() + 30
            while processes_with(marker) and time.monotonic() < deadline:
                time.sleep(0.1)  # the other ranks wind down
            assert not processes_with(marker), "a process of the interrupted run is still running"
        finally:
            if proc.poll() is None or processes_with(marker):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
    return returncode, (cwd / "stderr.txt").read_text()
