"""Tasks: one LightningModule each, owning what must be identical for every model of the task
(for language modeling: the float64 sums and token counts, their DDP reduction, the carried
state, checkpoint metadata, generation). A net (``models/``) is a plain ``nn.Module``."""
