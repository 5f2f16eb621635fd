"""The CUDA paths: run ``pytest tests/test_gpu.py`` on a machine with a GPU. CI has none, so there
every test here skips, and nothing else in the suite needs one.

On one GPU, every neural family trains in 32-true, bf16-mixed and 16-mixed, on the GPU, scoring
the same tokens as on the CPU, to the CPU's perplexity within rounding; a checkpoint trained on
the GPU evaluates to the same perplexity on the CPU; a run stopped mid-epoch on the GPU resumes
on the GPU and on the CPU; greedy generation on the GPU writes the CPU's sentences; the n-gram
runs under ``trainer=gpu`` to the CPU's perplexity exactly. With two or more GPUs,
``trainer=ddp`` (NCCL) evaluates a checkpoint to one GPU's perplexity.

Dropout is off (CUDA draws other masks than the CPU) and so is TF32 in cuDNN (on by default for
float32 RNNs): only then is a GPU run the CPU's run up to rounding.

``LM_TEST_ACCELERATOR=cpu`` runs the same checks with the CPU in the GPU's place (``trainer=cpu``,
``ddp_cpu``; Lightning turns 16-mixed into bf16-mixed there): that is how these tests were tested
on a machine without a GPU.
"""

from __future__ import annotations

import os

import pytest
import torch

from lm_experiments.data.vocab import EOS_ID
from lm_experiments.generate import load_model
from lm_experiments.runtime.signals import RunInterrupted
from lm_experiments.train import train
from tests.conftest import FAST, SPY, TrainingSpy, compose_config, toy_overrides
from tests.test_ddp import assert_two_processes_evaluate_as_one
from tests.test_fault_tolerance import SignalAt
from tests.test_precision import NEURAL, SMALL

ACCELERATOR = os.environ.get("LM_TEST_ACCELERATOR", "gpu")
pytestmark = pytest.mark.skipif(
    ACCELERATOR == "gpu" and not torch.cuda.is_available(),
    reason="needs a CUDA GPU (LM_TEST_ACCELERATOR=cpu runs these checks on the CPU)",
)
DEVICE_TYPE = "cuda" if ACCELERATOR == "gpu" else "cpu"
ON_DEVICE = ["trainer=gpu" if ACCELERATOR == "gpu" else "trainer=cpu"]
ON_CPU = ["trainer=cpu"]
QUIET = [o for o in FAST if not o.startswith("trainer.accelerator")]  # the trainer config's
# every neural family, and the adaptive softmax (its own autocast path: float32 log-softmax)
VARIANTS = {model: [f"model={model}"] for model in NEURAL}
VARIANTS["rnnlm_adaptive"] = ["model=rnnlm", "model.softmax=adaptive"]
# what autocast makes of a Linear layer's output: fp16 AMP does not exist on the CPU
LOWER = {
    "32-true": torch.float32,
    "bf16-mixed": torch.bfloat16,
    "16-mixed": torch.float16 if DEVICE_TYPE == "cuda" else torch.bfloat16,
}
# and of a recurrent layer's: under bf16 autocast on CUDA the recurrence runs in float32
# (models/encoders.py, ``recurrence``: CUDA autocast would run cuDNN RNNs in fp16)
RECURRENT = {
    **LOWER,
    "bf16-mixed": torch.float32 if DEVICE_TYPE == "cuda" else torch.bfloat16,
}
SMALL = [*SMALL, "model.dropout=0.0"]
MODEL_SIZE = [o for o in SMALL if o.startswith("model.")]  # to load a checkpoint of these
STOP = [f"+callbacks.interrupt._target_={SignalAt.__module__}.SignalAt"]


@pytest.fixture(scope="module", autouse=True)
def no_tf32():
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # float32 RNNs in float32
    yield
    torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module")
def cpu_runs(tmp_path_factory, toy_corpus):
    """Each family trained on the CPU in 32-true: the reference the device runs must match."""
    root, cache = tmp_path_factory.mktemp("cpu_runs"), tmp_path_factory.mktemp("cache")
    runs = {}
    for name, variant in VARIANTS.items():
        overrides = [*variant, *toy_overrides(toy_corpus), *QUIET, *SMALL, *ON_CPU]
        runs[name] = train(compose_config(overrides, root / name, cache))
    return runs, cache


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("name", VARIANTS)
def test_every_neural_family_trains_on_the_device_in_every_precision(
    name, precision, cpu_runs, tmp_path, toy_corpus
):
    reference, cache = cpu_runs
    variant = VARIANTS[name]
    overrides = [*variant, *toy_overrides(toy_corpus), *QUIET, *SMALL, *ON_DEVICE, *SPY]
    metrics = train(compose_config([*overrides, f"trainer.precision={precision}"], tmp_path, cache))
    assert TrainingSpy.devices == {DEVICE_TYPE}
    assert TrainingSpy.dtypes == {LOWER[precision]}  # autocast ran the layers in that precision
    recurrent = variant[0] not in ("model=nnlm", "model=transformer")
    assert TrainingSpy.rnn_dtypes == ({RECURRENT[precision]} if recurrent else set())
    cpu = reference[name]
    for key in ("train/tokens", "val/tokens", "test/tokens"):
        assert metrics[key] == cpu[key], key  # the same tokens scored
    # the same steps from the same initial weights: only rounding differs, except that fp16's
    # GradScaler skips the first steps whose scaled gradients overflow while it finds its scale
    drift = 0.1 if LOWER[precision] == torch.float16 else 0.03
    for key in ("val/ppl", "test/ppl"):
        assert metrics[key] == pytest.approx(cpu[key], rel=drift), key
    vocab_size = len((tmp_path / "vocab.txt").read_text().split())
    assert metrics["test/ppl"] < 0.9 * vocab_size  # it learned: better than a uniform guess

    # the checkpoint the device wrote evaluates on the CPU to what the device measured
    evaluate = [
        *variant,
        *toy_overrides(toy_corpus),
        *QUIET,
        *MODEL_SIZE,
        *ON_CPU,
        "train=false",
        f"ckpt_path={metrics['best_checkpoint']}",
    ]
    on_cpu = train(compose_config(evaluate, tmp_path / "cpu", cache))
    tolerance = 1e-3 if precision == "32-true" else 0.02  # the device's number was autocast's
    for key in ("val/ppl", "test/ppl"):
        assert on_cpu[key] == pytest.approx(metrics[key], rel=tolerance), key


def test_a_run_stopped_mid_epoch_on_the_device_resumes_on_the_device_and_on_the_cpu(
    cpu_runs, tmp_path, toy_corpus
):
    """The carried LSTM state in the checkpoint is restored before Lightning moves the model to
    the device; it must follow the model there (and stay usable on the CPU)."""
    _, cache = cpu_runs
    run = ["model=lstm", *toy_overrides(toy_corpus), *QUIET, *SMALL, "trainer.max_epochs=2"]
    whole = train(compose_config([*run, *ON_DEVICE], tmp_path / "whole", cache))
    stop_in_epoch_1 = [*STOP, "+callbacks.interrupt.steps=[80]"]  # 60 steps an epoch
    with pytest.raises(RunInterrupted) as stopped:
        train(compose_config([*run, *ON_DEVICE, *stop_in_epoch_1], tmp_path / "cut", cache))
    ckpt = stopped.value.ckpt_path
    for i, where in enumerate((ON_DEVICE, ON_CPU)):  # (the same with LM_TEST_ACCELERATOR=cpu)
        folder = tmp_path / f"{i}_{where[0].replace('=', '_')}"  # a finished run is not rewritten
        resumed = train(compose_config([*run, *where, f"ckpt_path={ckpt}"], folder, cache))
        assert resumed["train/tokens"] == whole["train/tokens"]
        for key in ("val/ppl", "test/ppl"):  # rounding only (CUDA kernels are not bitwise stable)
            assert resumed[key] == pytest.approx(whole[key], rel=5e-3), (where, key)


def test_greedy_generation_on_the_device_writes_the_cpus_sentences(cpu_runs):
    reference, _ = cpu_runs
    for model in ("rnnlm", "nnlm"):
        lm, _ = load_model(reference[model]["best_checkpoint"])
        on_cpu = lm.generate(4, max_length=30, temperature=0)
        on_device = lm.to(DEVICE_TYPE).generate(4, max_length=30, temperature=0)
        assert on_device == on_cpu, model
        assert all(EOS_ID not in ids and 0 < len(ids) <= 30 for ids in on_device)


def test_the_ngram_runs_under_the_device_trainer_to_the_cpus_perplexity(
    tmp_path, cpu_runs, toy_corpus
):
    _, cache = cpu_runs
    run = ["model=ngram", "model.order=4", *toy_overrides(toy_corpus), *QUIET]
    on_cpu = train(compose_config([*run, *ON_CPU], tmp_path / "cpu", cache))
    on_device = train(compose_config([*run, *ON_DEVICE], tmp_path / "device", cache))
    for key in ("params", "train/ppl", "val/ppl", "test/ppl", "test/tokens"):
        assert on_device[key] == pytest.approx(on_cpu[key], rel=1e-9), key


@pytest.mark.skipif(ACCELERATOR == "gpu" and torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_ddp_on_two_devices_evaluates_a_checkpoint_as_one(cpu_runs, tmp_path, toy_corpus):
    reference, cache = cpu_runs
    ddp = ["trainer=ddp" if ACCELERATOR == "gpu" else "trainer=ddp_cpu", "trainer.devices=2"]
    for model in ("rnnlm", "nnlm"):
        assert_two_processes_evaluate_as_one(
            model,
            reference[model]["best_checkpoint"],
            [*QUIET, *MODEL_SIZE],
            ON_DEVICE,
            ddp,
            tmp_path / model,
            cache,
            toy_corpus,
        )
