"""The W&B logger the ``logger=wandb`` config instantiates."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger

from lm_experiments.runtime.compat import drop_wandb_anonymous


class QuietWandbLogger(WandbLogger):
    """Lightning's WandbLogger without the ``anonymous=None`` it hands ``wandb.init`` (wandb warns
    about any value of that deprecated setting; ``runtime/compat.py`` touches the private part)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        drop_wandb_anonymous(self)
