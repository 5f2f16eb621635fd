"""``python -m lm_experiments.ngram export ckpt_path=RUN/checkpoints/last.ckpt out=model.arpa``:
write an n-gram checkpoint as a standard ARPA file (``.gz`` for gzipped), which KenLM's ``kenlm``
module loads and scores identically. The reverse direction is ``model=ngram
model.arpa_path=FILE``: an ARPA file (from KenLM's lmplz on a web-scale corpus, say) joins the
comparison like any trained model."""

from __future__ import annotations

import sys

from lm_experiments.errors import UserError

USAGE = "usage: python -m lm_experiments.ngram export ckpt_path=PATH out=PATH.arpa[.gz]"


def export(ckpt_path: str, out: str) -> str:
    """Read the checkpoint once (memory-mapped: its tables are not copied onto the heap) and
    stream its tables to the ARPA file; no LightningModule is built."""
    from lm_experiments.models.ngram import NGramModel, NGramNet, export_arpa
    from lm_experiments.runtime.checkpoints import model_class, read_checkpoint

    checkpoint = read_checkpoint(ckpt_path, mmap=True)
    if not issubclass(model_class(checkpoint), NGramNet) or "ngram" not in checkpoint:
        name = model_class(checkpoint).__name__
        raise UserError(f"'{ckpt_path}' holds a {name}, not a counted n-gram model")
    if "vocabulary" not in checkpoint:
        raise UserError(f"'{ckpt_path}' has no vocabulary: the ARPA file needs the words")
    tables = NGramModel.from_state_dict(checkpoint.pop("ngram"))
    return str(export_arpa(tables, out, checkpoint["vocabulary"]))


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "export":
        print(USAGE, file=sys.stderr)
        return 2
    options = dict(arg.split("=", 1) for arg in argv[1:] if "=" in arg)
    missing = [key for key in ("ckpt_path", "out") if key not in options]
    try:
        if missing or len(options) != len(argv) - 1:
            raise UserError(f"{USAGE} (missing or malformed: {missing or argv[1:]})")
        print(f"wrote {export(options['ckpt_path'], options['out'])}")
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
