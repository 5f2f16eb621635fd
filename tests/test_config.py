"""Every combination of the config groups composes, and names resolve to real classes."""

from __future__ import annotations

import itertools

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
# so their product with the others adds nothing but minutes: they get a product of their own
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


def test_every_combination_composes_and_resolves(tmp_path, cache_dir):
    combos = [
        *(zip(CORE, c, strict=True) for c in itertools.product(*(options(g) for g in CORE))),
        *(zip(OUTPUTS, c, strict=True) for c in itertools.product(*(options(g) for g in OUTPUTS))),
    ]
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
