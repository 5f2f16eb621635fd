"""The stacked (deep) recurrent LM (Pascanu et al. 2014; Zaremba, Sutskever & Vinyals 2014).

    h^0_t = E[w_t]                                          projection: a lookup in a V x M matrix
    h^l_t = cell_l(dropout(h^{l-1}_t), h^l_{t-1})           l = 1..L: layer l reads layer l-1
    y_t   = softmax(W_y dropout(h^L_t) + b_y)               the distribution of w_{t+1}

``cell`` is rnn_tanh (h = tanh(W_x x + W_h h + b)), lstm or gru. Dropout sits only between the
non-recurrent connections (the input of each layer and the output), never on the recurrence,
as in Zaremba et al.; the state carried from batch to batch holds every layer's hidden state.

This is the RNNLM with ``num_layers`` >= 2: torch's fused multi-layer ``nn.RNN``/``nn.LSTM``/
``nn.GRU`` (``encoders.make_rnn``) compute exactly the equations above, so the family is a thin
subclass that only fixes the depth.
"""

from __future__ import annotations

from lm_experiments.errors import UserError
from lm_experiments.models.rnnlm import RNNLM


class StackedRNNLM(RNNLM):
    #: the fewest layers the family accepts (a one-layer stack is the plain ``model=rnnlm``)
    min_layers = 2

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        hidden_dim: int = 128,
        cell: str = "rnn_tanh",
        num_layers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = False,
        **options,  # any other RNNLM option (softmax, cutoffs)
    ):
        if not isinstance(num_layers, int) or num_layers < self.min_layers:
            raise UserError(
                f"model.num_layers must be an integer >= {self.min_layers} for a stacked RNN, "
                f"got {num_layers!r}; for one layer use model=rnnlm"
            )
        super().__init__(
            vocab_size,
            embedding_dim=embedding_dim,
            hidden_dim=hidden_dim,
            cell=cell,
            num_layers=num_layers,
            dropout=dropout,
            tie_weights=tie_weights,
            **options,
        )
