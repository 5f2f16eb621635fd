"""Ship ``conf/`` inside the wheel as ``lm_experiments/conf`` without moving it out of the repo
root (where Hydra users look for it): setuptools maps the folder onto a package directory, and
``lm_experiments/locations.py`` finds whichever copy exists. Everything else is pyproject.toml."""

from pathlib import Path

from setuptools import find_namespace_packages, setup

CONF = Path(__file__).parent / "conf"
conf_packages = ["lm_experiments.conf"] + [
    "lm_experiments.conf." + ".".join(d.relative_to(CONF).parts)
    for d in sorted(CONF.rglob("*"))
    if d.is_dir()
]

setup(
    # namespace packages too: lm_experiments/models has no __init__.py
    packages=find_namespace_packages(include=["lm_experiments*"], exclude=["*.__pycache__"])
    + conf_packages,
    package_dir={name: "conf/" + "/".join(name.split(".")[2:]) for name in conf_packages},
    package_data={name: ["*.yaml"] for name in conf_packages},
)
