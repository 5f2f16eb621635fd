"""Does pretraining an LM on the unlabelled text help a tagger or a classifier, and by how much?

    python -m benchmarks.run pretraining            # 100, 1,000, 10,000 labelled sentences
    python -m benchmarks.run pretraining --quick    # a smoke check (under a minute)

On the embedded corpus (its exact word classes and sentence labels, ``dataset=synthetic``): one
LSTM LM trained on all the train text, as text; then, for each budget of labelled train
sentences (``task.limit_train``), the same encoder trained on the labels from a random start and
from the LM's weights (``task.encoder_ckpt``, fine-tuned), forward-only so the LM initialises all
of it. The figure is test accuracy with a 95% bootstrap interval over test sentences (the runs'
score files); the gain's interval is paired (the same resamples for both). One seed per cell: the
intervals are over sentences, not over training runs. The ELMo measurement, here.
"""

from __future__ import annotations

import datetime as dt
import math
import shutil
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

from benchmarks.bench_sweep import FIGURES
from lm_experiments.compare import bootstrap
from lm_experiments.compare.scores import read_scores, scores_path
from lm_experiments.locations import conf_dir
from lm_experiments.train import train

TITLE = "Pretraining: accuracy against labelled sentences, random vs LM-initialised encoder"
ROOT = Path(__file__).resolve().parent.parent
MODEL = ["model=lstm", "model.embedding_dim=64", "model.hidden_dim=128", "threads=1"]
TASKS = {"word class (tag)": ["task=tag"], "verb class": ["task=classify", "task.label=verb_class"]}
FULL = {"sizes": (100, 1_000, 10_000), "tasks": TASKS, "lm_epochs": 6, "steps": 1500, "corpus": []}
QUICK = {
    "sizes": (30, 120),
    "tasks": {"word class (tag)": ["task=tag"]},
    "lm_epochs": 1,
    "steps": 0,  # two epochs each
    "corpus": ["dataset.train_tokens=3000", "dataset.valid_tokens=800", "dataset.test_tokens=800"],
}
QUIET = ["logger=none", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def configured(overrides: list[str], run_dir: Path):
    """conf/ composed as the CLI does (its own datasets cache), written into ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        cfg.print_config = False
        del cfg.hydra
    return cfg


def epochs_for(sentences: int, steps: int, batch: int = 32) -> int:
    """About ``steps`` updates whatever the budget (between 5 and 100 epochs); 2 when quick."""
    return 2 if not steps else max(5, min(100, math.ceil(steps * batch / sentences)))


def accuracy(run_dir: Path) -> np.ndarray:
    """[n, 2] per test sentence: right predictions and labels (a classifier's: 1 each)."""
    scores = read_scores(scores_path(run_dir, "test"))
    return np.stack([scores["correct"], scores.get("labels", np.ones_like(scores["correct"]))], 1)


def fine_tune(base: list[str], n: int, ckpt: str | None, run_dir: Path, steps: int):
    epochs = epochs_for(n, steps)
    overrides = [*base, f"task.limit_train={n}", "task.bidirectional=false"]
    overrides += [
        f"trainer.max_epochs={epochs}",
        f"callbacks.early_stopping.patience={max(3, epochs // 5)}",
    ]
    overrides += [f"task.encoder_ckpt={ckpt}"] if ckpt else []
    train(configured(overrides, run_dir))
    return accuracy(run_dir)


def cell(replicates: np.ndarray, point: float) -> str:
    lo, hi = bootstrap.interval(replicates)
    return f"{point:.3f} [{lo:.3f}, {hi:.3f}]"


def row(task: str, n: int, random_init: np.ndarray, pretrained: np.ndarray) -> tuple[str, dict]:
    both = np.stack([random_init, pretrained], axis=1)  # [n, model, (correct, labels)]
    replicates = bootstrap.ratio_of_sums(both[..., 0], both[..., 1])  # [R, 2], paired
    point = both[..., 0].sum(0) / both[..., 1].sum(0)
    gain = replicates[:, 1] - replicates[:, 0]
    figures = {"point": point, "lo_hi": [bootstrap.interval(replicates[:, m]) for m in (0, 1)]}
    line = f"| {task} | {n:,} | {cell(replicates[:, 0], point[0])} | "
    line += f"{cell(replicates[:, 1], point[1])} | {cell(gain, point[1] - point[0])} |"
    return line, figures


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 4), squeeze=False)
    for ax, (task, by_size) in zip(axes[0], results.items(), strict=True):
        sizes = sorted(by_size)
        for m, name in enumerate(("random init", "LM-pretrained")):
            acc = np.array([by_size[n]["point"][m] for n in sizes])
            lo = np.array([by_size[n]["lo_hi"][m][0] for n in sizes])
            hi = np.array([by_size[n]["lo_hi"][m][1] for n in sizes])
            ax.errorbar(sizes, acc, yerr=[acc - lo, hi - acc], marker="o", capsize=3, label=name)
        ax.set(xscale="log", xlabel="labelled train sentences", ylabel="test accuracy", title=task)
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(quick: bool = False) -> str:
    plan = QUICK if quick else FULL
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out = ROOT / "logs" / "bench_pretraining" / f"{stamp}{'_quick' if quick else ''}"
    corpus = ["dataset=synthetic", *plan["corpus"], *MODEL, *QUIET, "seed=0"]
    lm = configured([*corpus, f"trainer.max_epochs={plan['lm_epochs']}"], out / "lm")
    ckpt = train(lm)["best_checkpoint"]
    lines = [
        "| task | labelled sentences | random init: acc [95% CI] | LM-pretrained | gain |",
        "|---|---:|---:|---:|---:|",
    ]
    results: dict = {}
    for task, options in plan["tasks"].items():
        for n in plan["sizes"]:
            where = out / task.split()[0] / str(n)
            scratch = fine_tune([*corpus, *options], n, None, where / "random", plan["steps"])
            warm = fine_tune([*corpus, *options], n, ckpt, where / "pretrained", plan["steps"])
            line, results.setdefault(task, {})[n] = row(task, n, scratch, warm)
            lines.append(line)
    plot(results, out / "pretraining.png")
    figure = f"{out.relative_to(ROOT)}/pretraining.png"
    if not quick:  # a committed copy beside RESULTS.md (logs/ is not committed)
        FIGURES.mkdir(exist_ok=True)
        shutil.copyfile(out / "pretraining.png", FIGURES / "pretraining.png")
        figure = "benchmarks/figures/pretraining.png"
    size = "a 3k-token corpus, 1-2 epochs (--quick)" if quick else "the default synthetic corpus"
    return (
        f"The LSTM encoder (embedding 64, hidden 128, 2 layers) on {size}: the LM trained on all "
        f"train text, then each labelled budget trained from a random start and from the LM "
        f"(fine-tuned). Test accuracy, 95% bootstrap intervals over test sentences (the gain's "
        f"paired); one seed each. Plot: `{figure}`.\n\n" + "\n".join(lines) + "\n"
    )


if __name__ == "__main__":
    print(run(quick="--quick" in sys.argv))
