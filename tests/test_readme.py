"""The README's commands, as a new user copies them, in short form: every
``python -m lm_experiments ...`` line composes (each override names a real key and choice), every
other entry point answers ``--help``, every ``make`` target exists, and the facts the README
states about defaults match the configs."""

from __future__ import annotations

import re
import shlex

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONF, ROOT, run_cli

README = (ROOT / "README.md").read_text()


def code_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", README, flags=re.S)


def commands(prefix: str) -> list[list[str]]:
    """Every command of the README's bash blocks that starts with ``prefix``, continuation lines
    joined and comments dropped, as argv lists."""
    found = []
    for block in code_blocks():
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line.startswith(prefix):
                found.append(shlex.split(line))
    return found


def short_form(args: list[str]) -> list[str]:
    """Overrides a compose() accepts: flags dropped, a sweep's first value, placeholders filled."""
    out = []
    for arg in args:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, _, value = arg.partition("=")
        if "," in value and not value.startswith(("[", "(", "'", '"')):
            value = value.split(",")[0]
        out.append(f"{key}={value.replace('<', '').replace('>', '')}")
    return out


APP = commands("python -m lm_experiments ")
MAKE = [c for c in commands("make ")]


def test_the_readme_names_the_main_commands():
    assert len(APP) >= 8 and any("-m" in c for c in APP)
    assert {"train", "test", "sweep"} <= {c[1] for c in MAKE}


@pytest.mark.parametrize("argv", APP, ids=lambda a: " ".join(a[3:])[:60])
def test_every_readme_run_composes(argv, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=short_form(argv[3:]), return_hydra_config=True)
    assert cfg.model._target_ and cfg.dataset._target_


def test_every_make_target_the_readme_names_exists():
    makefile = (ROOT / "Makefile").read_text()
    for argv in MAKE:
        assert re.search(rf"^{re.escape(argv[1])}:", makefile, flags=re.M), argv


@pytest.mark.parametrize("module", ["lm_experiments.generate", "lm_experiments.eval"])
def test_the_other_entry_points_answer_help(module, tmp_path):
    named = commands(f"python -m {module} ")
    assert named, f"the README shows no {module} command"
    result = run_cli(["--help"], cwd=tmp_path, module=module)
    assert result.returncode == 0
    for argv in named:  # every key the README passes is one of the command's keys
        for override in short_form(argv[3:]):
            key = override.split("=")[0].split(".")[0]
            assert f"\n{key}:" in result.stdout or key in ("dataset", "trainer"), (key, module)


def test_the_readme_states_the_defaults_of_the_configs():
    config = (CONF / "config.yaml").read_text()
    for key in ("seed", "train", "test", "validate", "ckpt_path", "threads", "print_config"):
        assert f"\n{key}:" in config and f"`{key}`" in README, key
    assert "threads: auto" in config and "threads=auto" in README
    assert "about about" not in README
    assert "logs/compare_architectures/multiruns/" in README  # make sweep's own task_name
    assert "logs/train/optuna/<study>/" in README
