"""W&B logging, read back from the offline run's own files (no network, no mocks).

In offline mode wandb 0.31 writes no ``wandb-summary.json`` or ``config.yaml``: everything goes
into the run's transaction log ``run-<id>.wandb``, the file ``wandb sync`` uploads later, and
wandb no longer ships a Python reader for it. :func:`read_offline_run` reads it with wandb's own
record schema (``wandb_internal_pb2.Record``) -- the file is a LevelDB-style log: a 7-byte
header, then 32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data``.
"""

from __future__ import annotations

import csv
import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lm_experiments.train import train
from lm_experiments.wandb_extras import NUM_SAMPLES
from tests.conftest import FAST, compose_config, toy_overrides

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path):
    """The protobuf records of a ``.wandb`` transaction log, in order."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a chunk header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if len(chunk) < length:  # read while wandb-core is writing it: the rest comes later
            return
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending + chunk)
            pending = b""
            yield record
        elif kind in (FIRST, MIDDLE):
            pending += chunk


@dataclass
class OfflineRun:
    """What an offline run recorded: its run record, config, summary, history, artifacts."""

    dir: Path
    run_id: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    artifacts: list = field(default_factory=list)  # ArtifactRecord protos
    finished: bool = False


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def finished_records(log_file: Path, timeout: float = 30.0) -> list:
    """The records once the run's ``exit`` record is on disk: ``wandb.finish()`` returns when
    wandb-core has handled the exit, and its writer gets the log to disk a moment later."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(wandb_records(log_file))
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        if time.monotonic() > deadline:
            return records  # read_offline_run reports it as not finished
        time.sleep(0.2)


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Replay ``run_dir/run-*.wandb`` into the state the W&B server would show after a sync."""
    (log_file,) = run_dir.glob("run-*.wandb")
    run = OfflineRun(dir=run_dir)
    for record in finished_records(log_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":  # sent at init and again on every change (tags, config)
            run.run_id, run.group = record.run.run_id, record.run.run_group
            run.tags = list(record.run.tags)
            for item in record.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "artifact":
            run.artifacts.append(record.artifact)
        elif kind == "exit":
            run.finished = True
    return run


def offline_runs(run_dir: Path) -> list[OfflineRun]:
    return [read_offline_run(d) for d in sorted((run_dir / "wandb").glob("offline-run-*"))]


@pytest.fixture(scope="module")
def wandb_run(tmp_path_factory, toy_corpus, cache_dir):
    """One real training run logged to W&B offline, with the best checkpoint as an artifact."""
    run_dir = tmp_path_factory.mktemp("wandb_run")
    overrides = [
        *toy_overrides(toy_corpus),
        *[o for o in FAST if not o.startswith(("logger=", "callbacks="))],
        "callbacks=none",
        "logger=wandb",
        "logger.wandb.log_model=true",
        "model.embedding_dim=16",
        "model.hidden_dim=32",
        "trainer.max_epochs=2",
        "trainer.log_every_n_steps=1",
        "tags=[mine]",
    ]
    cfg = compose_config(overrides, run_dir, cache_dir)
    metrics = train(cfg)
    (run,) = offline_runs(run_dir)
    return run_dir, metrics, run


def test_summary_holds_the_figures_of_metrics_json(wandb_run):
    run_dir, metrics, run = wandb_run
    assert run.finished  # train() finished the run: the next job of a sweep gets a new one
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    for key in ("test/ppl", "test/tokens", "val/ppl_best", "params", "train/tokens_per_sec"):
        assert run.summary[key] == on_disk[key], key
    assert run.summary["model"] == "rnnlm" and run.summary["dataset"] == "text"


def test_step_and_epoch_metrics_are_in_the_history(wandb_run):
    _, metrics, run = wandb_run
    steps = [row["trainer/global_step"] for row in run.history if "train/loss" in row]
    assert len(steps) >= 4 and steps == list(range(len(steps)))  # every step (log_every_n_steps=1)
    val = [(row["epoch"], row["val/ppl"]) for row in run.history if "val/ppl" in row]
    assert [epoch for epoch, _ in val] == [0, 1]
    assert val[-1][1] == pytest.approx(metrics["val/ppl"], rel=1e-6)  # float32 on the wire


def test_config_tags_and_group(wandb_run):
    _, _, run = wandb_run
    assert run.config["model"]["hidden_dim"] == 32  # the whole resolved Hydra config
    assert run.config["params"] > 0
    assert run.config["model_name"] == "rnnlm" and run.config["dataset_name"] == "text"
    assert run.tags == ["mine", "rnnlm", "text"]  # the user's tags, then family and dataset
    assert run.group.startswith("train_")  # ${task_name}_${now:...}: one group per invocation


def test_samples_table_comes_from_the_model_and_its_vocabulary(wandb_run):
    run_dir, _, run = wandb_run
    (table_file,) = run.dir.glob("files/media/table/samples_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["sample", "tokens", "text"]
    assert len(table["data"]) == NUM_SAMPLES
    vocab = set((run_dir / "vocab.txt").read_text().split())
    for _, length, text in table["data"]:
        assert len(text.split()) == length and set(text.split()) <= vocab - {"<eos>"}
    assert run.summary["samples/_type"] == "table-file"  # nested keys read as a/b


def test_best_checkpoint_is_logged_as_an_artifact(wandb_run):
    _, metrics, run = wandb_run
    models = [a for a in run.artifacts if a.type == "model"]
    best = [a for a in models if "best" in a.aliases]
    assert len(best) == 1
    metadata = json.loads(best[0].metadata)
    assert metadata["original_filename"] == Path(metrics["best_checkpoint"]).name
    assert metadata["score"] == pytest.approx(metrics["val/ppl_best"], rel=1e-6)
    assert [c.path for c in best[0].manifest.contents] == ["model.ckpt"]


def test_intervals_and_the_distance_table_reach_the_run(tmp_path):
    """A real offline run gets the interval and the by-distance table of a run directory's score
    file: the same numbers as the sweep report's."""
    import wandb

    from lm_experiments import compare
    from lm_experiments.compare.scores import BUCKETS
    from lm_experiments.wandb_extras import log_scores
    from tests.test_compare import make_run, read_csv, simulated_scores, with_buckets

    scores = with_buckets(simulated_scores(2.7, 1), excess_near=0.02, excess_far=0.4, seed=1)
    run_dir = make_run(tmp_path / "sweep", "0", ["model=ngram"], scores)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    run = wandb.init(project="lm-experiments", dir=str(tmp_path), mode="offline")
    log_scores(run, run_dir, metrics)
    wandb.finish()
    (recorded,) = [read_offline_run(d) for d in (tmp_path / "wandb").glob("offline-run-*")]

    compare.main([str(tmp_path / "sweep"), "--quiet"])  # the same resamples: the same numbers
    row = read_csv(tmp_path / "sweep" / "comparison.csv")["ngram"]
    assert recorded.summary["test/ppl_lo"] == float(row["test_ppl_lo"])
    assert recorded.summary["test/ppl_hi"] == float(row["test_ppl_hi"])
    assert recorded.summary["test/ppl_lo"] < metrics["test/ppl"] < recorded.summary["test/ppl_hi"]
    (table_file,) = recorded.dir.glob("files/media/table/by_distance_*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["distance", "tokens", "excess_nll", "lo", "hi"]
    assert [r[0] for r in table["data"]] == list(BUCKETS)
    with (tmp_path / "sweep" / "comparison_by_distance.csv").open() as f:
        expected = {r["bucket"]: r for r in csv.DictReader(f)}
    for bucket, tokens, excess, lo, hi in table["data"]:
        assert tokens == int(expected[bucket]["tokens"])
        assert excess == pytest.approx(float(expected[bucket]["excess"]), rel=1e-12)
        assert (lo, hi) == (float(expected[bucket]["lo"]), float(expected[bucket]["hi"]))


def test_trained_run_summary_holds_its_interval(wandb_run):
    run_dir, metrics, run = wandb_run
    if not (run_dir / "scores" / "test.parquet").is_file():
        pytest.skip("score files not written yet (the LM task's evaluation writes them)")
    assert run.summary["test/ppl_lo"] < metrics["test/ppl"] < run.summary["test/ppl_hi"]
