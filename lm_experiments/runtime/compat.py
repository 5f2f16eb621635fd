"""The one place that touches Lightning's and Hydra's private internals, and the versions it was
written against.

Exact resumes and DDP under Hydra need a few things neither framework exposes publicly. Each is
one short function here, named for what it does, so that a new Lightning or Hydra release breaks
in one file and :func:`check_versions` says so in one line before a run starts (instead of a
resume that is silently off by a batch). The tests run on the upper end of each range.

What is relied upon, and where it lives upstream (Lightning 2.6, Hydra 1.3):

* ``trainer.fit_loop.epoch_loop.batch_progress.current.processed``: the training batches of this
  epoch that are done; what Lightning's own fit loop resumes from (:func:`batches_done`);
* ``trainer._signal_connector.received_sigterm``: Lightning's "stop after this batch" flag, which
  makes every rank raise ``SIGTERMException`` once the batch (and a validation due after it) is
  done (:func:`stop_after_this_batch`);
* ``trainer.fit_loop.restarting``: while true, Lightning skips plateau schedulers at the end of
  the resumed epoch (:func:`end_resumed_epoch_normally`);
* ``JobReturn._return_value``: the exception of a failed Hydra job (``return_value`` re-raises it;
  :func:`job_exception`);
* how Lightning's subprocess launcher starts DDP ranks 1..N-1 under Hydra
  (``lightning/fabric/strategies/launchers/subprocess_script.py``, ``_hydra_subprocess_cmd``):
  it reruns ``sys.argv`` plus ``hydra.run.dir=...`` with ``LOCAL_RANK`` set, and leaves
  :data:`LAUNCHER_ENV` in the environment after the job (``runtime/ddp.py`` works around both);
* the text of the warning Lightning prints on every mid-epoch resume of a non-stateful loader
  (:data:`MID_EPOCH_RESUME_WARNING`);
* ``WandbLogger._wandb_init``: the keyword arguments it will pass ``wandb.init``, where it always
  puts ``anonymous=None`` (:func:`drop_wandb_anonymous`).
"""

from __future__ import annotations

import os
from importlib.metadata import PackageNotFoundError, version

from lm_experiments.errors import UserError

#: package -> (lowest supported version, first unsupported version): the minor ranges the tests
#: ran on (pyproject.toml pins the same)
SUPPORTED = {"lightning": ((2, 6), (2, 7)), "hydra-core": ((1, 3), (1, 4))}

#: the variables Lightning's launcher sets for its ranks and leaves behind after a job
LAUNCHER_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")

MID_EPOCH_RESUME_WARNING = "You're resuming from a checkpoint that ended before"


def _release(text: str) -> tuple[int, ...]:
    parts = []
    for part in text.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def _dotted(numbers: tuple[int, ...]) -> str:
    return ".".join(map(str, numbers))


def check_versions(installed: dict[str, str] | None = None) -> None:
    """Raise a one-line UserError unless every package of :data:`SUPPORTED` is in its range.

    ``installed`` (package -> version) defaults to what is installed."""
    for package, (low, high) in SUPPORTED.items():
        try:
            found = (installed or {}).get(package) or version(package)
        except PackageNotFoundError:
            continue  # not installed as a distribution (a source checkout): nothing to check
        if not low <= _release(found)[: len(low)] < high:
            raise UserError(
                f"{package} {found} is not supported: lm_experiments needs {package}>="
                f"{_dotted(low)},<{_dotted(high)} (it relies on internals that change between "
                f"minor releases; lm_experiments/runtime/compat.py): "
                f"pip install '{package}>={_dotted(low)},<{_dotted(high)}'"
            )


# --- Lightning ---------------------------------------------------------------------------------
def batches_done(trainer) -> int:
    """Training batches of the current epoch that are done (those a resume must not repeat)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def stop_after_this_batch(trainer) -> None:
    """Lightning's own graceful stop: ``SIGTERMException`` on every rank once this batch (and a
    validation due after it) is done, and ``on_exception`` hooks before it leaves ``fit``."""
    trainer._signal_connector.received_sigterm = True


def end_resumed_epoch_normally(trainer) -> None:
    """Let the epoch a run resumed in end like any other (its plateau schedulers step)."""
    trainer.fit_loop.restarting = False


def drop_wandb_anonymous(logger) -> None:
    """Take the ``anonymous=None`` out of what ``logger`` (a ``WandbLogger``) will pass
    ``wandb.init``: wandb warns about any value of that deprecated setting."""
    init = getattr(logger, "_wandb_init", {})
    if init.get("anonymous", False) is None:
        del init["anonymous"]


# --- Hydra -------------------------------------------------------------------------------------
def job_exception(job_return) -> BaseException | None:
    """The exception a failed Hydra job raised (``job_return.return_value`` would re-raise it)."""
    error = getattr(job_return, "_return_value", None)
    return error if isinstance(error, BaseException) else None


def launched_by_lightning() -> bool:
    """True in a rank > 0 process (Lightning's launcher sets LOCAL_RANK for it)."""
    return os.environ.get("LOCAL_RANK", "0") != "0"
