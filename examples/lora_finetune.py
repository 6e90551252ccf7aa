"""A LoRA fine-tune of a small MLP, watched by balance: plain and LoRA+ step sizes, from the usual B = 0 start.

A ReLU MLP (64 -> 256 -> 256 -> 8) is first trained on one generated regression task (a random teacher network),
then frozen; low-rank adapters (W x + (alpha / r) B A x, A small and random, B = 0) on its three layers learn a
second, related task.
Each adapter pair conserves A A^T - B^T B under gradient flow; with LoRA+'s larger step for B (eta_B = ratio *
eta_A) the conserved quantity is the eta-weighted A A^T / eta_A - B^T B / eta_B, and the watch predicts its drift
exactly for each ratio. Everything is generated; nothing is downloaded.

    python examples/lora_finetune.py                 # two runs: ratio 1 (plain LoRA) and ratio 16 (LoRA+)
    python examples/lora_finetune.py --ratio 4 --steps 500
    balance audit examples/lora_finetune.py:factory
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

import balance
from balance.engine.laws import column

IN, HIDDEN, OUT, SAMPLES, BATCH, RANK, ALPHA = 64, 256, 8, 2048, 128, 4, 8.0


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (alpha / r) B A; B starts at 0, so at first the
    adapted layer is the base layer."""

    def __init__(self, base: nn.Linear, rank: int = RANK, alpha: float = ALPHA) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.randn(rank, base.in_features, dtype=base.weight.dtype) / base.in_features**0.5)
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t() @ self.B.t()) * self.scale


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(IN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, OUT))


def task(seed: int, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and the outputs of a random teacher MLP; ``shift`` perturbs the teacher (the fine-tuning task)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(SAMPLES, IN, generator=g, dtype=torch.float64)
    W1 = torch.randn(HIDDEN, IN, generator=g, dtype=torch.float64) / IN**0.5
    W2 = torch.randn(OUT, HIDDEN, generator=g, dtype=torch.float64) / HIDDEN**0.5
    W1 = W1 + shift * torch.randn(HIDDEN, IN, generator=g, dtype=torch.float64) / IN**0.5
    return X, F.relu(X @ W1.T) @ W2.T


def pretrained(seed: int = 0, steps: int = 300) -> nn.Sequential:
    """The base model trained on the first task (not watched)."""
    torch.manual_seed(seed)
    model = mlp().double()
    X, Y = task(seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(model(X), Y).backward()
        opt.step()
    return model


def adapted(base: nn.Sequential, seed: int = 0) -> nn.Sequential:
    """A copy of ``base`` with every Linear wrapped in a LoRA adapter."""
    torch.manual_seed(seed + 1)
    layers = [LoRALinear(m) if isinstance(m, nn.Linear) else m for m in base]
    return nn.Sequential(*layers)


def factory(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The adapted model (float64) and an example input: what ``balance audit FILE:factory`` reads."""
    return adapted(pretrained(seed, steps=0), seed), task(seed)[0][:32]


def optimizer_for(model: nn.Module, lr: float, ratio: float) -> torch.optim.Optimizer:
    """SGD with momentum; the B matrices step ``ratio`` times larger (LoRA+), the A matrices with ``lr``."""
    A = [p for n, p in model.named_parameters() if n.endswith(".A")]
    B = [p for n, p in model.named_parameters() if n.endswith(".B")]
    return torch.optim.SGD([{"params": A, "lr": lr}, {"params": B, "lr": lr * ratio}], lr=lr, momentum=0.9)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, w=None, seed: int = 0) -> float:
    X, Y = task(seed + 7, shift=0.5)
    g = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        index = torch.randint(0, SAMPLES, (BATCH,), generator=g)
        optimizer.zero_grad()
        loss = F.mse_loss(model(X[index]), Y[index])
        loss.backward()
        if w is not None:
            w.loss(loss)
        optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--lr", type=float, default=0.01, help="step size of the A matrices")
    parser.add_argument("--ratio", type=float, action="append", help="eta_B / eta_A (repeat; default 1 and 16)")
    parser.add_argument("--every", type=int, default=10, help="log every n-th step")
    parser.add_argument("--no-store", action="store_true", help="keep the rows in memory (no dashboard)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: more threads only contend for the cores (several times slower here)
    base = pretrained()
    for ratio in args.ratio or [1.0, 16.0]:
        model = adapted(base)
        optimizer = optimizer_for(model, args.lr, ratio)
        name = f"LoRA eta_B/eta_A = {ratio:g}" + (" (LoRA+)" if ratio != 1 else " (plain)")
        store = False if args.no_store else None
        w = balance.watch(model, optimizer, name, every=args.every, example_input=task(0)[0][:32], store=store)
        if ratio == (args.ratio or [1.0])[0]:
            print(w.audit)
        print(f"\n{name}: run {w.run_id or '(memory only)'} {w.url()}")
        with w:
            loss = train(model, optimizer, args.steps, w)
        df = w.frame()
        print(f"final loss {loss:.5f}; drift of A A^T/eta_A - B^T B/eta_B (times eta_A) since step 0:")
        for _, law in w.laws().iterrows():
            j = law["law"]
            measured, predicted = df[column("gap_drift", j)].iloc[-1], df[column("pred_gap_drift", j)].iloc[-1]
            print(f"  {j}. {law['where']:32s} measured {measured: .6e}  predicted {predicted: .6e}")


if __name__ == "__main__":
    main()
