"""A small transformer block (attention + a ReLU MLP) learning a synthetic sequence task, watched by balance.

The task: read a sequence of 12 random tokens (16 symbols) and, at every position, output the token one place
before it (a copy shifted by one: attention has to learn to look back). Everything is generated; nothing is
downloaded.

    python examples/transformer_block.py             # trains 1,500 steps; open the printed link to watch it live
    python examples/transformer_block.py --steps 300 --every 5 --name my-block
    balance audit examples/transformer_block.py:factory

The audit finds the per-head attention laws (W_Q^T W_Q - W_K^T W_K and W_V^T W_V - W_O W_O^T), the MLP's
per-neuron law (fc1 -> ReLU -> fc2) and the LayerNorm affines against the layers they feed; the residual additions
and the embedding are reported as "no law here". SGD with momentum: every law has an exact prediction.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import balance
from balance.engine.laws import column

VOCAB, LENGTH, WIDTH, HEADS, HIDDEN, BATCH = 16, 12, 32, 4, 64, 64


class Block(nn.Module):
    """Token and position embeddings, one pre-LayerNorm transformer block, a LayerNorm and a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.position = nn.Parameter(0.1 * torch.randn(LENGTH, WIDTH))
        self.ln1 = nn.LayerNorm(WIDTH)
        self.attn = nn.MultiheadAttention(WIDTH, HEADS, batch_first=True)
        self.ln2 = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, WIDTH)
        self.ln_out = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, VOCAB)
        self.register_buffer("mask", torch.triu(torch.ones(LENGTH, LENGTH, dtype=torch.bool), diagonal=1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # tokens [B, T] -> logits [B, T, VOCAB]
        x = self.embed(tokens) + self.position
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=self.mask, need_weights=False)[0]
        x = x + self.fc2(F.relu(self.fc1(self.ln2(x))))
        return self.head(self.ln_out(x))


def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    tokens = torch.randint(0, VOCAB, (BATCH, LENGTH), generator=generator)
    target = torch.roll(tokens, 1, dims=1)
    target[:, 0] = tokens[:, 0]  # the first position copies itself
    return tokens, target


def factory(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model (float64) and an example input: what ``balance audit FILE:factory`` reads."""
    torch.manual_seed(seed)
    return Block().double(), batch(torch.Generator().manual_seed(seed))[0]


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, w=None, seed: int = 0) -> float:
    """``steps`` SGD steps on fresh batches; reports each loss to the watch ``w`` (if any). Returns the last loss."""
    generator = torch.Generator().manual_seed(seed + 1)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        tokens, target = batch(generator)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(tokens).reshape(-1, VOCAB), target.reshape(-1))
        loss.backward()
        if w is not None:
            w.loss(loss)
        optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--every", type=int, default=10, help="log every n-th step")
    parser.add_argument("--name", default="transformer block")
    parser.add_argument("--no-store", action="store_true", help="keep the rows in memory (no dashboard)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: more threads only contend for the cores (several times slower here)
    model, example = factory()
    optimizer = optimizer_for(model)
    store = False if args.no_store else None  # None: the run store of $BALANCE_HOME, which the dashboard reads
    w = balance.watch(model, optimizer, args.name, every=args.every, example_input=example, store=store)
    print(w.audit)
    if w.run_id:
        print(f"\nwatching as run {w.run_id}: open {w.url()} (the dashboard: make run) to see it live\n")
    with w:
        loss = train(model, optimizer, args.steps, w)
    summary(w, loss)


def summary(w, loss: float) -> None:
    """The last row's drift against its prediction, per law."""
    df = w.frame()
    print(f"final loss {loss:.4f} after {w.step} steps; drift of each law since step 0, measured vs predicted:")
    for _, law in w.laws().iterrows():
        measured, predicted = (
            df[column("gap_drift", law["law"])].iloc[-1],
            df[column("pred_gap_drift", law["law"])].iloc[-1],
        )
        print(f"  {law['law']}. {law['where']:42s} {measured: .6e}  {predicted: .6e}")


if __name__ == "__main__":
    main()
