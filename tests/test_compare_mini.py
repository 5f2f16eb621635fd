"""experiment=compare_ptb_mini / compare_wt2_mini: one sweep over every family, each with its own
settings for the corpus (conf/tuned/<experiment>/<model>.yaml), composed as the CLI composes."""

from __future__ import annotations

import datetime

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from lm_experiments.train import build_net
from tests.conftest import CONF

EXPERIMENTS = {"compare_ptb_mini": "ptb_mini", "compare_wt2_mini": "wt2_mini"}
FAMILIES = {"ngram", "nnlm", "rnnlm", "lstm", "birnn", "transformer"}


def composed(*overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def leaves(node, prefix=""):
    """{dotted key: value} of every leaf of a config."""
    out = {}
    for key, value in node.items():
        if OmegaConf.is_dict(value):
            out |= leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_sweep_runs_every_family_on_its_corpus_within_the_budget(experiment):
    cfg = composed(f"experiment={experiment}")
    assert set(cfg.hydra.sweeper.params.model.split(",")) == FAMILIES
    assert cfg.dataset.name == EXPERIMENTS[experiment]
    hours, minutes, seconds = map(int, cfg.trainer.max_time.split(":")[1:])  # DD:HH:MM:SS
    assert datetime.timedelta(hours=hours, minutes=minutes, seconds=seconds).seconds <= 15 * 60
    # every choice is made on validation: early stopping, the schedule, the tested checkpoint
    assert cfg.callbacks.early_stopping.monitor == "val/ppl"
    assert cfg.callbacks.model_checkpoint.monitor == "val/ppl"


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_each_family_gets_its_own_settings_for_the_corpus(experiment):
    for family in sorted(FAMILIES):
        cfg = composed(f"experiment={experiment}", f"model={family}")
        assert cfg.hydra.runtime.choices["tuned@_global_"] == f"{experiment}/{family}"
        tuned = OmegaConf.load(CONF / "tuned" / experiment / f"{family}.yaml")
        expected = leaves(tuned)
        assert expected, family  # the file sets something
        for key, value in expected.items():  # over conf/model and the experiment's own values
            assert OmegaConf.select(cfg, key) == value, (family, key)
        if family != "ngram":  # every key is one the family's constructor takes
            net = build_net(cfg.model, 50)
            assert sum(p.numel() for p in net.parameters()) > 0
        if family == "nnlm":
            assert net.train_batch_size == cfg.model.train_batch_size


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_lstm_is_the_regularised_one(experiment):
    lstm = composed(f"experiment={experiment}", "model=lstm").model
    assert lstm.tie_weights and lstm.embedding_dim == lstm.hidden_dim >= 200
    assert lstm.num_layers == 2 and lstm.dropout >= 0.3  # Zaremba et al.'s medium: 0.5


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_networks_train_in_bf16_and_the_counted_5gram_in_float32(experiment):
    for family in sorted(FAMILIES):
        precision = composed(f"experiment={experiment}", f"model={family}").trainer.precision
        assert precision == ("32-true" if family == "ngram" else "bf16-mixed"), family


def test_tuned_settings_apply_only_inside_their_experiment_and_yield_to_the_command_line():
    plain = composed("model=lstm")
    assert plain.model.hidden_dim == 128 and plain.model.tie_weights is False  # conf/model/lstm
    stacked = composed("experiment=compare_wt2_mini", "model=stacked_rnn")  # no tuned file
    assert stacked.model.hidden_dim == 128
    override = composed("experiment=compare_wt2_mini", "model=lstm", "model.dropout=0.1")
    assert override.model.dropout == 0.1 and override.model.tie_weights is True


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_the_mini_lstm_search_tunes_the_tuned_lstm_on_validation(experiment):
    cfg = composed(f"experiment={experiment}", "hparams_search=lstm_mini_optuna")
    sweeper = cfg.hydra.sweeper
    assert sweeper.direction == "minimize" and sweeper.params.model == "lstm"  # one family
    assert not any("test" in key for key in sweeper.params)
    assert cfg.model.tie_weights and cfg.model.embedding_dim == cfg.model.hidden_dim
    wider = composed(
        f"experiment={experiment}", "hparams_search=lstm_mini_optuna", "model.hidden_dim=400"
    )
    assert wider.model.embedding_dim == 400  # a trial's width reaches the tied embedding
    from lm_experiments.train import objective

    assert objective({"val/ppl_best": 150.0, "test/ppl": 1.0}) == 150.0
