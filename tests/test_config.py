"""Every combination of the config groups composes, and names resolve to real classes."""

from __future__ import annotations

import itertools
import os

import hydra
import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import CONF, FAST, compose_config, toy_overrides

GROUPS = ("dataset", "model", "trainer", "logger", "callbacks")
# logger and callbacks read only paths/task_name/tags, never the dataset, model or trainer nodes,
# so their combinations with the others add nothing but minutes: they get pairs of their own
CORE, OUTPUTS = GROUPS[:3], GROUPS[3:]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_the_named_options_exist():
    assert {"synthetic", "text", "ptb", "wikitext2", "wikitext103", "shakespeare"} <= set(
        options("dataset")
    )
    assert {"default", "cpu", "gpu", "ddp", "ddp_cpu"} <= set(options("trainer"))
    assert {"csv", "tensorboard", "wandb", "none"} <= set(options("logger"))
    assert "rnnlm" in options("model")


def all_pairs(groups) -> list[list[tuple[str, str]]]:
    """Combinations of ``groups``' options in which every option of each group meets every option
    of each other group at least once (a pairwise covering: 91 composes instead of the full
    product's 455; the groups interact in pairs, e.g. a dataset's vocabulary with a model's
    softmax, a model's precision with a trainer)."""
    first, second, *rest = [options(g) for g in groups]
    combos = []
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            # option (i + j) mod n of each later group: with a fixed, j runs over every residue
            combos.append([a, b, *(r[(i + j + k) % len(r)] for k, r in enumerate(rest))])
    return [list(zip(groups, c, strict=True)) for c in combos]


def test_the_pairwise_combinations_cover_every_pair_of_options():
    combos = all_pairs(CORE)
    for g, h in itertools.combinations(range(len(CORE)), 2):
        seen = {(c[g][1], c[h][1]) for c in combos}
        assert seen == set(itertools.product(options(CORE[g]), options(CORE[h])))


def test_every_pair_of_options_composes_and_resolves(tmp_path, cache_dir):
    combos = [*all_pairs(CORE), *all_pairs(OUTPUTS)]
    assert len(combos) >= 30
    compose_config([], tmp_path, cache_dir)  # sets the Hydra runtime config once
    GlobalHydra.instance().clear()
    paths = [f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for combo in combos:
            overrides = [f"{g}={o}" for g, o in combo]
            cfg = compose("config", overrides=overrides + paths)
            check_resolves(cfg, overrides)


def check_resolves(cfg, overrides):
    resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    for group in ("dataset", "model", "trainer"):
        assert "_target_" in resolved[group], overrides
        hydra.utils.get_class(resolved[group]["_target_"])  # the target exists
    assert cfg.trainer.use_distributed_sampler is False  # we shard the stream ourselves


@pytest.mark.parametrize("experiment", options("experiment"))
def test_experiments_compose(tmp_path, cache_dir, experiment):
    cfg = compose_config([f"experiment={experiment}"], tmp_path, cache_dir)
    assert cfg.model._target_ and cfg.dataset._target_


class ThreadsDuringTraining(L.Callback):
    seen: list = []

    def on_train_start(self, trainer, pl_module):
        ThreadsDuringTraining.seen.append(torch.get_num_threads())


def test_threads_sets_the_intra_op_threads_for_the_run_only(tmp_path, cache_dir, toy_corpus):
    from lm_experiments.train import train

    spy = "+callbacks.spy._target_=tests.test_config.ThreadsDuringTraining"
    overrides = [*toy_overrides(toy_corpus), *FAST, "threads=2", "trainer.max_epochs=1", spy]
    train(compose_config([*overrides, "trainer.limit_train_batches=2"], tmp_path, cache_dir))
    assert ThreadsDuringTraining.seen == [2]
    assert torch.get_num_threads() == 1  # restored: the session's setting (conftest)


@pytest.mark.parametrize("debug", options("debug"))
def test_debug_choices_compose(tmp_path, cache_dir, debug):
    cfg = compose_config([f"debug={debug}"], tmp_path, cache_dir)
    assert cfg.task_name == "debug" and cfg.trainer.accelerator == "cpu"
    assert cfg.logger is None


def test_busy_cores_are_read_from_two_samples_of_proc_stat():
    from lm_experiments import threads

    # cpu user nice system idle iowait irq softirq steal: 100 jiffies pass on 2 CPUs
    before = "cpu  1000 0 200 5000 100 0 0 0 0 0\ncpu0 ...\n"
    one_busy = "cpu  1040 0 210 5048 102 0 0 0 0 0\n"  # 50 of 100 jiffies busy
    steal = "cpu  1000 0 200 5050 100 0 0 50 0 0\n"  # another VM ran on one: busy for us
    assert threads.busy_between(before, one_busy, cpus=2) == pytest.approx(1.0)
    assert threads.busy_between(before, steal, cpus=2) == pytest.approx(1.0)
    assert threads.busy_between(before, before, cpus=2) == 0.0
    assert 0.0 <= threads.busy_cores() <= (os.cpu_count() or 1) + 1e-9  # the real file parses


def test_threads_auto_never_gives_a_small_model_more_than_one_thread(monkeypatch):
    from lm_experiments import threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads.auto_threads(100_000, free=8) == 1  # small: threads only cost
    big = 16 * threads.PARAMS_PER_THREAD
    assert threads.auto_threads(big, free=1) == 1  # a busy machine: no spin-waiting threads
    assert threads.auto_threads(big, free=4) == 4
    assert threads.auto_threads(big, processes=2, free=4) == 2  # DDP ranks share the node
    monkeypatch.setattr(threads, "busy_cores", lambda: 1.0)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    assert threads.free_cores() == 1  # one of two cores is taken by another process
    assert threads.auto_threads(big) == 1
    assert threads.auto_threads(2 * threads.PARAMS_PER_THREAD, free=2) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.auto_threads(big, free=1) == 3  # the user's explicit choice
    assert threads.resolve(2, 10) == 2
    assert compose_default_threads() == "auto"


def compose_default_threads():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config").threads


def test_runs_go_under_the_project_root_or_lm_experiments_home(tmp_path, monkeypatch):
    from lm_experiments import locations

    assert locations.conf_dir() == str(CONF)
    monkeypatch.delenv("LM_EXPERIMENTS_HOME", raising=False)
    assert locations.home() == str(CONF.parent)  # a checkout: its root, not the cwd
    assert locations.cache_home() == str(CONF.parent / ".cache")
    monkeypatch.setenv("LM_EXPERIMENTS_HOME", str(tmp_path))
    assert locations.home() == str(tmp_path)
    assert locations.cache_home() == str(tmp_path / ".cache")
