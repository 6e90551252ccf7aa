"""Throughput of ``balance.run`` (every metric at every step) against a plain PyTorch loop, in one process.

The plain loop is what one would write by hand: forward, backward, an in-place SGD update, and a record of the
loss and the layer norms each step. Both run the same model, data and step count; runs alternate and the median
of several repeats is reported. Times are CPU seconds of this process (the ratio of wall times in brackets): on the
shared 2-core machine wall-time ratios of identical code varied from 0.64 to 0.99 between runs while CPU times held.

    python benchmarks/bench_trainer.py [--repeats 5] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import balance
from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.engine.trainer import DTYPES, Trainer

CASES = {
    "mf 100x100 r5": (
        RunConfig(
            data=DataConfig(name="lowrank", d1=100, d2=100, rank=5),
            model=ModelConfig(name="mf", init_scale=0.01),
            optim=OptimConfig(name="gd", lr=0.01),
            steps=3000,
        )
    ),
    "mlp 3x100 n512": (
        RunConfig(
            data=DataConfig(name="teacher", samples=512, input_dim=100),
            model=ModelConfig(name="mlp", depth=3, width=100, init_scale=0.1),
            optim=OptimConfig(name="gd", lr=0.05),
            steps=600,
        )
    ),
}


def plain_loop(config: RunConfig) -> tuple[float, float]:
    """The hand-written loop on the same task and initial weights; (CPU, wall) seconds of its ``config.steps`` steps
    (its setup, a Trainer for identical data and weights, is not timed)."""
    trainer = Trainer(config)  # only to get identical data and initial weights
    task, model = trainer.task, trainer.model
    params = [p.detach().clone().requires_grad_(True) for p in model.params]
    lr = config.optim.lr
    record = []
    cpu, wall = time.process_time(), time.perf_counter()
    if config.model.name == "mf":
        W1, W2 = params
        M = task.targets
        for _ in range(config.steps):
            loss = 0.5 * ((W2 @ W1 - M) ** 2).sum()
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p -= lr * p.grad
                    p.grad = None
            record.append((loss.item(), W1.norm().item(), W2.norm().item()))
    else:
        x, y = task.inputs, task.targets
        for _ in range(config.steps):
            z = x
            for W in params[:-1]:
                z = torch.relu(z @ W.T)
            loss = 0.5 * ((z @ params[-1].T - y) ** 2).sum(dim=1).mean()
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p -= lr * p.grad
                    p.grad = None
            record.append((loss.item(), *(W.norm().item() for W in params)))
    return time.process_time() - cpu, time.perf_counter() - wall


def balance_run(config: RunConfig) -> tuple[float, float]:
    """(CPU, wall) seconds of ``balance.run(config)``, everything included (setup, rows, the DataFrame)."""
    cpu, wall = time.process_time(), time.perf_counter()
    df, status = balance.run(config)
    elapsed = time.process_time() - cpu, time.perf_counter() - wall
    assert status.state == "finished" and len(df) == config.steps + 1, status
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median of {args.repeats} alternating runs")
    print(f"{'case':<16} {'dtype':<8} {'plain steps/s':>14} {'balance steps/s':>16} {'ratio':>7} {'(wall)':>7}")
    for name, base in CASES.items():
        for dtype in DTYPES:
            config = base.replace(dtype=dtype)
            balance_run(config.replace(steps=20))  # warm-up: imports, first-call costs
            plain_loop(config.replace(steps=20))
            plain, ours = [], []
            for _ in range(args.repeats):
                plain.append(plain_loop(config))
                ours.append(balance_run(config))
            p, b = (config.steps / statistics.median(t[0] for t in times) for times in (plain, ours))
            wall = statistics.median(t[1] for t in plain) / statistics.median(t[1] for t in ours)
            print(f"{name:<16} {dtype:<8} {p:>14.0f} {b:>16.0f} {b / p:>7.2f} {wall:>7.2f}")


if __name__ == "__main__":
    main()
