"""Sequence classification (many-to-one): one label per sentence, read from a pooled state
(``task.pooling=last|mean|max``) and trained end to end on the label's cross-entropy alone."""

from __future__ import annotations

from lm_experiments.errors import UserError
from lm_experiments.models.heads import SentenceClassifier
from lm_experiments.models.window_encoder import WindowEncoder
from lm_experiments.tasks.supervised import SupervisedTask


class Classification(SupervisedTask):
    kind = "classify"

    def make_head(self, encoder, num_labels: int, pooling: str = "last", bag_of_words=False):
        if isinstance(encoder, WindowEncoder):
            raise UserError("model=nnlm's window encoder tags (task=tag); classify with an RNN")
        if bag_of_words:  # the order-blind baseline: average (or max) embedding
            return SentenceClassifier(None, num_labels, pooling, embedding=encoder.embedding)
        return SentenceClassifier(encoder, num_labels, pooling)

    @property
    def encoder(self):
        return self.model.encoder if self.model.encoder is not None else self.model.embedding
