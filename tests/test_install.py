"""``pip install .`` (not editable) gives a working tool: the wheel carries conf/ and the tool
runs from any directory, writing where an installed tool should (not into the cwd)."""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.conftest import ROOT


def test_the_wheel_installs_into_a_fresh_venv_and_runs_a_smoke_job(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(wheels), str(ROOT)],
        check=True, capture_output=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    (wheel,) = wheels.glob("lm_experiments-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lm_experiments/conf/config.yaml" in names
    assert "lm_experiments/conf/model/rnnlm.yaml" in names
    assert "lm_experiments/conf/hydra/default.yaml" in names

    # a fresh venv that sees the shared site-packages (torch is not downloaded again)
    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    shared = [p for p in site.getsitepackages() if Path(p).is_dir()]
    (purelib / "shared.pth").write_text("\n".join(shared) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(purelib),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LM_EXPERIMENTS_HOME")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    python = venv / "bin" / "python"
    where = subprocess.run(
        [python, "-c", "import lm_experiments; print(lm_experiments.__file__)"],
        capture_output=True, text=True, env=env, cwd=elsewhere, check=True,
    )  # fmt: skip
    assert where.stdout.startswith(str(purelib)), where.stdout  # the wheel, not the checkout
    result = subprocess.run(
        [python, "-m", "lm_experiments", "experiment=smoke", "trainer.accelerator=cpu",
         "trainer.enable_progress_bar=false", "print_config=false"],
        capture_output=True, text=True, env=env, cwd=elsewhere, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "test perplexity:" in result.stdout
    (metrics,) = (tmp_path / "data" / "lm-experiments" / "logs" / "train" / "runs").glob(
        "*/metrics.json"
    )
    assert json.loads(metrics.read_text())["test/ppl"] > 1
    assert (tmp_path / "cache" / "lm-experiments" / "datasets").is_dir()
    assert list(elsewhere.iterdir()) == []
