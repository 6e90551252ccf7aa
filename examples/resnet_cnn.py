"""A small ResNet-style CNN with BatchNorm classifying generated images, watched by balance.

The images (3 x 16 x 16) are noisy stripes at one of four orientations; the label is the orientation. Everything
is generated; nothing is downloaded. The network: a stem convolution with BatchNorm, one residual block
(conv-BN-ReLU-conv-BN plus the skip), a strided convolution with BatchNorm, global average pooling and a linear
read-out, trained by SGD with momentum and weight decay (the usual ResNet recipe).

    python examples/resnet_cnn.py                    # trains 600 steps; open the printed link to watch it live
    balance audit examples/resnet_cnn.py:factory

The audit finds the scale symmetry of every convolution followed by BatchNorm (its incoming weights' norms only
grow: approximate, since BatchNorm's eps = 1e-5 breaks it by about 1e-6), the per-channel rescaling between a
BatchNorm's affine and the convolution or linear layer it feeds through ReLU (exact), and reports the residual
addition as "no law here".
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F
from torch import nn

import balance
from balance.engine.laws import column

SIZE, CLASSES, BATCH, WIDTH = 16, 4, 64, 16


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, WIDTH, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(WIDTH)
        self.block = Residual(WIDTH)
        self.down = nn.Conv2d(WIDTH, 2 * WIDTH, 3, stride=2, padding=1, bias=False)
        self.bn_down = nn.BatchNorm2d(2 * WIDTH)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * WIDTH, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, 3, 16, 16] -> logits [B, 4]
        x = self.block(F.relu(self.bn(self.stem(x))))
        x = F.relu(self.bn_down(self.down(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def batch(generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stripes at angle label * 45 degrees with a random phase and colour, plus noise."""
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    angle = labels.double() * math.pi / CLASSES
    y, x = torch.meshgrid(torch.arange(SIZE).double(), torch.arange(SIZE).double(), indexing="ij")
    phase = torch.rand(BATCH, 1, 1, generator=generator, dtype=torch.float64) * 2 * math.pi
    along = x * torch.cos(angle)[:, None, None] + y * torch.sin(angle)[:, None, None]
    stripes = torch.sin(along * 1.3 + phase)
    colour = torch.rand(BATCH, 3, 1, 1, generator=generator, dtype=torch.float64) + 0.5
    noise = 0.3 * torch.randn(BATCH, 3, SIZE, SIZE, generator=generator, dtype=torch.float64)
    return stripes[:, None] * colour + noise, labels


def factory(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """The model (float64, train mode) and an example input: what ``balance audit FILE:factory`` reads."""
    torch.manual_seed(seed)
    return Net().double(), batch(torch.Generator().manual_seed(seed))[0]


def optimizer_for(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, w=None, seed: int = 0) -> float:
    generator = torch.Generator().manual_seed(seed + 1)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        images, labels = batch(generator)
        images = images.to(next(model.parameters()).dtype)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        if w is not None:
            w.loss(loss)
        optimizer.step()
    return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--every", type=int, default=10, help="log every n-th step")
    parser.add_argument("--name", default="resnet cnn")
    parser.add_argument("--no-store", action="store_true", help="keep the rows in memory (no dashboard)")
    parser.add_argument("--float64", action="store_true", help="train in float64 (exact to ~1e-12; 5x slower)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small tensors: more threads only contend for the cores (several times slower here)
    model, example = factory()
    if not args.float64:  # float32 convolutions are ~5x faster on a CPU; the laws then hold to ~1e-6 relative
        model, example = model.float(), example.float()
    optimizer = optimizer_for(model)
    store = False if args.no_store else None
    w = balance.watch(model, optimizer, args.name, every=args.every, example_input=example, store=store)
    print(w.audit)
    if w.run_id:
        print(f"\nwatching as run {w.run_id}: open {w.url()} (the dashboard: make run) to see it live\n")
    with w:
        loss = train(model, optimizer, args.steps, w)
    df = w.frame()
    print(f"final loss {loss:.4f} after {w.step} steps; drift of each law since step 0, measured vs predicted:")
    for _, law in w.laws().iterrows():
        j = law["law"]
        measured, predicted = df[column("gap_drift", j)].iloc[-1], df[column("pred_gap_drift", j)].iloc[-1]
        print(f"  {j}. {law['where']:40s} {measured: .6e}  {predicted: .6e}")


if __name__ == "__main__":
    main()
