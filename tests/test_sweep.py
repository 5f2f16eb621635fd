"""Sweeps: the comparison report of a multirun (also when a job fails), its rebuild from disk,
the Optuna search and its resumption, the architecture-comparison experiment, and the SLURM
launcher's composition."""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lm_experiments import compare
from tests.conftest import CONF, FAST, ROOT, run_cli, toy_overrides
from tests.test_wandb import offline_runs

TINY = ["model.embedding_dim=8", "model.hidden_dim=16", "trainer.max_epochs=1"]
# metrics.json key -> comparison.csv column: the report must carry the run's own numbers
SAME_NUMBERS = {
    "params": "params",
    "val/ppl_best": "val_ppl_best",
    "test/ppl": "test_ppl",
    "test/tokens": "test_tokens",
    "train_seconds": "train_seconds",
    "train/tokens_per_sec": "tokens_per_sec",
    "epochs": "epochs",
}


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, toy_corpus):
    """One real ``-m`` run of three jobs: a tanh RNN and a GRU that train, and a job with a bad
    option that raises UserError. Logged to CSV (curves) and W&B offline (groups)."""
    root = tmp_path_factory.mktemp("sweep")
    sweep_dir = root / "multirun"
    result = run_cli(
        [
            "-m",
            "model=rnnlm",
            "model.cell=rnn_tanh,gru,no_such_cell",
            *toy_overrides(toy_corpus),
            *[o for o in FAST if not o.startswith("logger=")],
            "logger=[csv,wandb]",
            *TINY,
            "print_config=false",
            f"hydra.sweep.dir={sweep_dir}",
            f"paths.cache_dir={root}/cache",
        ],
        cwd=root,
    )
    return sweep_dir, result


def test_failed_job_fails_the_sweep_but_the_report_is_written(sweep):
    sweep_dir, result = sweep
    assert result.returncode == 1, result.stderr[-3000:]  # Hydra re-raises the failed job
    for name in ("comparison.csv", "comparison.md", "comparison.png"):
        assert (sweep_dir / name).is_file(), name
    assert (sweep_dir / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {row["label"]: row for row in read_csv(sweep_dir / "comparison.csv")}
    assert set(rows) == {"model.cell=rnn_tanh", "model.cell=gru", "model.cell=no_such_cell"}
    failed = rows["model.cell=no_such_cell"]
    assert failed["status"] == "failed" and failed["test_ppl"] == ""
    assert "model.cell must be one of" in failed["error"]
    error_file = Path(failed["run_dir"]) / "error.txt"  # written by the Hydra callback
    assert error_file.read_text().startswith("model.cell must be one of")
    assert "Traceback" in error_file.read_text()
    # the table is printed at the end of the sweep, the failure spelled out below it
    assert "model.cell=gru" in result.stdout
    assert "failed dir 2 (model.cell=no_such_cell): model.cell must be one of" in result.stdout


def test_report_rows_carry_each_runs_own_numbers(sweep):
    sweep_dir, _ = sweep
    rows = read_csv(sweep_dir / "comparison.csv")
    finished = [row for row in rows if row["status"] == "ok"]
    assert len(finished) == 2
    for row in finished:
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert row["model"] == "rnnlm" and row["dataset"] == "text"
        for key, column in SAME_NUMBERS.items():
            assert float(row[column]) == metrics[key], (row["label"], key)
        assert row["test_oracle_ppl"] == ""  # text files: no oracle, no ratio
    # best test perplexity first, the failed run last
    ppl = [float(row["test_ppl"]) for row in finished]
    assert ppl == sorted(ppl) and rows[-1]["status"] == "failed"
    markdown = (sweep_dir / "comparison.md").read_text()
    for row in finished:
        assert f"| {row['label']} | {int(row['params']):,} |" in markdown
        assert f"{float(row['test_ppl']):,.2f}" in markdown
    assert "2 runs finished, 1 failed." in markdown


def test_report_intervals_come_from_the_runs_score_files(sweep):
    sweep_dir, _ = sweep
    rows = [row for row in read_csv(sweep_dir / "comparison.csv") if row["status"] == "ok"]
    if not all((Path(row["run_dir"]) / "scores" / "test.parquet").is_file() for row in rows):
        pytest.skip("score files not written yet (the LM task's evaluation writes them)")
    for row in rows:
        assert float(row["test_ppl_lo"]) < float(row["test_ppl"]) < float(row["test_ppl_hi"])
        assert float(row["ratio_lo"]) <= float(row["ratio_to_best"]) <= float(row["ratio_hi"])
        assert row["note"] == ""  # the files add up to metrics.json


def test_report_curves_are_the_csv_logger_validation_perplexities(sweep):
    sweep_dir, _ = sweep
    runs = {run.job: run for run in compare.find_runs(sweep_dir)}
    assert sorted(runs) == ["0", "1", "2"]
    for job in ("0", "1"):
        metrics = runs[job].metrics
        assert runs[job].curve == [(0, pytest.approx(metrics["val/ppl"], rel=1e-6))]
    assert runs["2"].curve == [] and not runs["2"].ok


def test_jobs_of_one_sweep_share_a_wandb_group(sweep):
    sweep_dir, _ = sweep
    runs = [run for job in ("0", "1") for run in offline_runs(sweep_dir / job)]
    assert len(runs) == 2 and all(run.finished for run in runs)
    assert runs[0].run_id != runs[1].run_id  # job 1 did not log into job 0's run
    assert runs[0].group == runs[1].group and runs[0].group.startswith("train_")
    assert [run.config["model"]["cell"] for run in runs] == ["rnn_tanh", "gru"]


def test_compare_rebuilds_the_report_and_marks_a_killed_run(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    original = (sweep_dir / "comparison.md").read_text()
    copy = tmp_path / sweep_dir.name  # the same folder name: the same report
    shutil.copytree(sweep_dir, copy)
    for name in ("comparison.csv", "comparison.md", "comparison.png"):
        (copy / name).unlink()
    compare.main([str(copy)])
    assert (copy / "comparison.png").is_file()
    rebuilt = (copy / "comparison.md").read_text()
    assert rebuilt.replace(str(copy), str(sweep_dir)) == original
    assert "model.cell=gru" in capsys.readouterr().out

    # a job killed mid-run leaves no metrics.json and no error.txt: its row says so
    (copy / "1" / "metrics.json").unlink()
    compare.main([str(copy), "--quiet"])
    rows = {row["job"]: row for row in read_csv(copy / "comparison.csv")}
    assert rows["1"]["status"] == "failed" and "no metrics.json" in rows["1"]["error"]
    assert rows["0"]["status"] == "ok" and rows["2"]["status"] == "failed"


def test_compare_on_a_folder_without_runs_is_a_user_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        compare.main([str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no run directories" in capsys.readouterr().err


def test_optuna_search_resumes_and_reports_its_best_trial(tmp_path, toy_corpus):
    import sqlalchemy

    assert int(sqlalchemy.__version__.split(".")[0]) < 2, (
        "optuna 2.10's SQLite storage needs sqlalchemy<2 (and alembic<1.14): pin them"
    )
    args = [
        "hparams_search=rnnlm_optuna",  # sets hydra.mode=MULTIRUN: no -m
        *toy_overrides(toy_corpus),
        *FAST,
        *TINY,
        "dataset.bptt=20",  # fixed on the command line: Optuna searches lr and dropout only
        "print_config=false",
        f"paths.cache_dir={tmp_path}/cache",
    ]
    for n_trials in (2, 1):  # the second invocation continues the first one's study
        result = run_cli([*args, f"hydra.sweeper.n_trials={n_trials}"], cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    study_dir = tmp_path / "logs" / "train" / "optuna" / "rnnlm_text"
    assert (study_dir / "optuna.db").is_file()
    first, second = sorted(p for p in study_dir.iterdir() if p.is_dir())
    trials = [p.parent for p in sorted(study_dir.glob("*/*/metrics.json"))]
    assert [t.parent for t in trials] == [first, first, second]
    values = {t: json.loads((t / "metrics.json").read_text())["val/ppl_best"] for t in trials}
    learning_rates = [
        next(o for o in yaml.safe_load((t / ".hydra" / "overrides.yaml").read_text()) if "lr=" in o)
        for t in trials
    ]
    assert len(set(learning_rates)) == 3  # the resumed search did not replay the first trials

    best = yaml.safe_load((second / "optimization_results.yaml").read_text())
    best_trial = min(values, key=values.get)
    assert best["best_value"] == values[best_trial]  # over both invocations' trials
    overrides = yaml.safe_load((best_trial / ".hydra" / "overrides.yaml").read_text())
    for key, value in best["best_params"].items():
        assert f"{key}={value}" in overrides
    assert all(math.isfinite(v) for v in values.values())
    # each invocation's sweep directory gets its comparison too
    assert len(read_csv(second / "comparison.csv")) == 1


def compose_with_hydra(overrides: list[str], tmp_path: Path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_compare_architectures_sweeps_every_family_on_the_embedded_corpus(tmp_path):
    cfg = compose_with_hydra(["experiment=compare_architectures"], tmp_path)
    assert cfg.hydra.sweeper.params.model.split(",") == [
        "ngram",
        "nnlm",
        "rnnlm",
        "stacked_rnn",
        "lstm",
        "birnn",
    ]
    # every model named in the sweep has a config (a typo would fail only at run time)
    assert all(
        (CONF / "model" / f"{m}.yaml").is_file() for m in cfg.hydra.sweeper.params.model.split(",")
    )
    assert cfg.dataset.name == "synthetic" and cfg.task_name == "compare_architectures"
    assert "csv" in cfg.logger  # the per-epoch curves of comparison.png
    assert (
        cfg.hydra.callbacks.comparison_report._target_
        == "lm_experiments.runtime.hydra_callbacks.ComparisonReport"
    )


@pytest.mark.parametrize(
    ("search", "model", "keys"),
    [
        ("rnnlm_optuna", "rnnlm", {"model.optimizer.lr", "model.hidden_dim", "dataset.bptt"}),
        ("lstm_optuna", "lstm", {"model.optimizer.lr", "model.hidden_dim", "dataset.bptt"}),
        ("nnlm_optuna", "nnlm", {"model.optimizer.lr", "model.hidden_dim", "model.window"}),
    ],
)
def test_hparams_searches_store_their_study_beside_the_sweeps(tmp_path, search, model, keys):
    if not (CONF / "model" / f"{model}.yaml").exists():
        pytest.skip(f"conf/model/{model}.yaml is not there yet")
    cfg = compose_with_hydra([f"hparams_search={search}", f"paths.root_dir={tmp_path}"], tmp_path)
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    assert sweeper["_target_"].endswith("OptunaSweeper") and sweeper["direction"] == "minimize"
    assert sweeper["study_name"] == f"{model}_synthetic"  # fixed: a rerun finds the study
    sweep_dir = Path(OmegaConf.select(cfg, "hydra.sweep.dir"))
    assert sweeper["storage"] == f"sqlite:///{sweep_dir.parent}/optuna.db"
    assert keys <= set(sweeper["params"])
    assert cfg.hydra.runtime.choices.model == model


def test_slurm_launcher_starts_one_task_per_gpu_on_every_node(tmp_path, monkeypatch):
    import hydra
    from submitit.slurm.slurm import _make_sbatch_string

    cfg = compose_with_hydra(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.num_nodes=2",
            "trainer.devices=4",
            "hydra.launcher.partition=gpu",
            f"hydra.sweep.dir={tmp_path}",
        ],
        tmp_path,
    )
    launcher = hydra.utils.instantiate(cfg.hydra.launcher)  # the real submitit plugin
    assert type(launcher).__name__ == "SlurmLauncher"
    params = launcher.params
    assert (params["nodes"], params["tasks_per_node"], params["gpus_per_node"]) == (2, 4, 4)
    sbatch = _make_sbatch_string(  # what submitit hands to sbatch for these parameters
        command="python -u -m submitit.core._submit",
        folder=params["submitit_folder"],
        partition=params["partition"],
        time=params["timeout_min"],
        nodes=params["nodes"],
        ntasks_per_node=params["tasks_per_node"],
        gpus_per_node=params["gpus_per_node"],
        cpus_per_task=params["cpus_per_task"],
    )
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu"):
        assert f"#SBATCH {line}" in sbatch

    # inside that allocation, Lightning's SLURM environment sees 8 ranks, as DDP expects
    import lightning as L

    for var, value in {
        "SLURM_NTASKS": "8",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NAME": "lm",
        "SLURM_JOB_ID": "1",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_JOB_NODELIST": "node[1-2]",
    }.items():
        monkeypatch.setenv(var, value)
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_cfg.update(accelerator="cpu", default_root_dir=str(tmp_path), logger=False)
    trainer = hydra.utils.instantiate(trainer_cfg)
    assert isinstance(trainer, L.Trainer)
    assert type(trainer.strategy.cluster_environment).__name__ == "SLURMEnvironment"
    assert trainer.world_size == params["nodes"] * params["tasks_per_node"]


def agent_command(sweep: dict, values: dict) -> list[str]:
    """The command a W&B agent runs for one trial (wandb_agent.Agent._command_run, here with
    the agent's own helper for the argument macros), ``python`` being this interpreter."""
    from wandb.sdk.launch.sweeps import utils as sweep_utils

    macros = sweep_utils.create_sweep_command_args(
        {"args": {k: {"value": v} for k, v in values.items()}}
    )
    macros.update(env=["/usr/bin/env"], interpreter=[sys.executable], program=[sweep["program"]])
    command = []
    for chunk in sweep_utils.create_sweep_command(list(sweep["command"])):
        chunk = str(chunk)
        is_macro = chunk.startswith("${") and chunk.endswith("}")
        command += macros.get(chunk[2:-1], []) if is_macro else [chunk]
    return command


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "wandb_sweep").glob("*.yaml")))
def test_wandb_sweep_config_drives_the_app_with_hydra_overrides(name, tmp_path, toy_corpus):
    sweep = yaml.safe_load((CONF / "wandb_sweep" / f"{name}.yaml").read_text())
    assert sweep["method"] in {"grid", "random", "bayes"}
    assert sweep["metric"]["name"].startswith("val/")  # selection never looks at test
    assert (ROOT / sweep["program"]).is_file()
    command = sweep["command"]
    assert command[:4] == ["${env}", "${interpreter}", "-m", "lm_experiments"]
    assert command[-1] == "${args_no_hyphens}"
    # one trial: the first value of each parameter, as the agent would pass it
    values = {
        key: spec["values"][0] if "values" in spec else spec.get("value", spec.get("min"))
        for key, spec in sweep["parameters"].items()
    }
    args = agent_command(sweep, values)
    assert args[:3] == ["/usr/bin/env", sys.executable, "-m"]
    assert [f"{k}={v}" for k, v in values.items()] == args[-len(values) :]  # key=value, no --
    # every parameter is a key of the composed config (a typo fails here, not in a trial)
    fixed = args[4 : -len(values)]
    cfg = compose_with_hydra([*fixed, *args[-len(values) :]], tmp_path)
    for key, value in values.items():
        assert OmegaConf.select(cfg, key) == value, key
    # and the trial runs: the app trains with the sampled values (W&B offline, a tiny corpus)
    run_dir = tmp_path / "trial"
    extra = [
        *toy_overrides(toy_corpus),
        *[o for o in FAST if not o.startswith("logger=")],
        "model.embedding_dim=8",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        "print_config=false",
        f"hydra.run.dir={run_dir}",
        f"paths.cache_dir={tmp_path}/cache",
    ]
    result = subprocess.run(
        [*args[1:], *extra], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    config = yaml.safe_load((run_dir / ".hydra" / "config.yaml").read_text())
    for key, value in values.items():
        assert OmegaConf.select(OmegaConf.create(config), key) == value, key
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics[sweep["metric"]["name"]])
    (offline,) = offline_runs(run_dir)
    assert offline.summary[sweep["metric"]["name"]] == metrics[sweep["metric"]["name"]]
