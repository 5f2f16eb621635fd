"""The baseline ``bench_speed`` measures the framework against: pytorch/examples'
word_language_model training loop, written out here with none of ``lm_experiments``' code.

It reads the text itself (whitespace words, ``<eos>`` after every line), builds its own
vocabulary, and ``batchify``s the id stream as the example does: the stream cut into ``B``
equal columns (the tail that does not fill a column is dropped, nothing is padded), read
``bptt`` rows at a time, time first. The model is ``nn.Embedding -> nn.RNN/nn.LSTM ->
nn.Linear``; the loss ``F.cross_entropy`` on the flattened logits; then ``clip_grad_norm_`` and
plain SGD; the hidden state is detached between batches. Sharing nothing with the framework is
the point: a slow piece the two shared would not show in their ratio.

    python -m benchmarks.plain_loop PATH [--cell lstm --layers 2 --bf16 --steps 50]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def read_words(path: str | Path) -> list[str]:
    """Every line's words, then ``<eos>``, as word_language_model's ``Corpus.tokenize``."""
    words: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            words += line.split() + ["<eos>"]
    return words


def id_stream(words: list[str]) -> tuple[torch.Tensor, int]:
    """The words as ids of a vocabulary built from them (first-seen order): ([N], V)."""
    index: dict[str, int] = {}
    ids = [index.setdefault(w, len(index)) for w in words]
    return torch.tensor(ids, dtype=torch.long), len(index)


def batchify(data: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N] -> [N // B, B]: column b is the b-th contiguous share of the stream."""
    rows = data.size(0) // batch_size
    return data[: rows * batch_size].view(batch_size, rows).t().contiguous()


def get_batch(source: torch.Tensor, i: int, bptt: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs [T, B] from row i, and their next tokens flattened [T * B]."""
    seq_len = min(bptt, source.size(0) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


class RNNModel(nn.Module):
    """Embedding, a (stacked) RNN or LSTM, a linear decoder: word_language_model's ``RNNModel``
    with dropout 0 and untied weights."""

    def __init__(self, cell: str, vocab_size: int, embedding_dim: int, hidden_dim: int, layers):
        super().__init__()
        self.cell, self.layers, self.hidden_dim = cell, layers, hidden_dim
        self.encoder = nn.Embedding(vocab_size, embedding_dim)
        if cell == "lstm":
            self.rnn = nn.LSTM(embedding_dim, hidden_dim, layers)
        else:
            self.rnn = nn.RNN(embedding_dim, hidden_dim, layers, nonlinearity="tanh")
        self.decoder = nn.Linear(hidden_dim, vocab_size)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, inputs: torch.Tensor, hidden):
        output, hidden = self.rnn(self.encoder(inputs), hidden)  # [T, B, H]
        return self.decoder(output), hidden  # [T, B, V]

    def init_hidden(self, batch_size: int, device):
        h = torch.zeros(self.layers, batch_size, self.hidden_dim, device=device)
        return (h, h.clone()) if self.cell == "lstm" else h


def repackage(hidden):
    """The state without its graph: truncated BPTT."""
    return hidden.detach() if isinstance(hidden, torch.Tensor) else tuple(map(repackage, hidden))


class Corpus:
    """A training file read once, as ids batchified into [rows, B]."""

    def __init__(self, path: str | Path, batch_size: int):
        stream, self.vocab_size = id_stream(read_words(path))
        self.train = batchify(stream, batch_size)


def train(
    corpus: Corpus,
    cell: str = "rnn_tanh",
    layers: int = 1,
    embedding_dim: int = 200,
    hidden_dim: int = 200,
    bptt: int = 35,
    lr: float = 1.0,
    clip: float = 0.25,
    bf16: bool = False,
    steps: int | None = None,
    window=None,
    seed: int = 0,
) -> nn.Module:
    """``steps`` batches (None: one epoch) of truncated-BPTT SGD; ``window`` (optional) gets
    ``step_start(i)`` and ``step_end(i, tokens)`` around each batch, as the framework's timer."""
    torch.manual_seed(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = RNNModel(cell, corpus.vocab_size, embedding_dim, hidden_dim, layers).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    data = corpus.train.to(device)
    hidden = model.init_hidden(data.size(1), device)
    starts = range(0, data.size(0) - 1, bptt)
    for step, i in enumerate(starts[:steps] if steps is not None else starts):
        inputs, targets = get_batch(data, i, bptt)
        if window is not None:
            window.step_start(step)
        hidden = repackage(hidden)
        optimizer.zero_grad()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            output, hidden = model(inputs, hidden)
            loss = F.cross_entropy(output.view(-1, corpus.vocab_size), targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        if window is not None:
            window.step_end(step, targets.numel())
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="a training text file, one sentence a line")
    parser.add_argument("--cell", default="rnn_tanh", choices=("rnn_tanh", "lstm"))
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--steps", type=int, default=None, help="batches (default: one epoch)")
    args = parser.parse_args()
    corpus = Corpus(args.path, batch_size=20)
    started = time.perf_counter()
    train(corpus, args.cell, args.layers, bf16=args.bf16, steps=args.steps)
    seconds = time.perf_counter() - started
    print(f"V = {corpus.vocab_size}; {seconds:.2f} s (first batches included)")


if __name__ == "__main__":
    main()
