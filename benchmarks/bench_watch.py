"""What watching costs: the training step of each example in ``examples/`` with and without ``balance.watch``.

For each example a watched loop (default interval, rows written to a temporary run store as the dashboard reads
them) is timed, and the time spent inside the watch's hooks (the optimiser's pre- and post-step hooks: reading the
row, advancing every prediction, writing to the store) is clocked in the same run. The overhead ratio is that time
over the rest of the step: measured in one run, so a machine shared with other work slows both sides alike. A plain
loop on a fresh model is timed too (best of the repeats) for the comparison across runs, which that sharing makes
noisier. The audit, done once before the loop, is timed apart. The ratio should stay at or below 10%.

    python benchmarks/bench_watch.py [--steps 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import runpy
import sys
import tempfile
import time
from pathlib import Path

import torch

import balance
from balance.runs.store import RunStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str) -> dict:
    argv, sys.argv = sys.argv, [name]
    try:
        return runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name="bench")
    finally:
        sys.argv = argv


def setups() -> dict:
    """Per example: a function making (model, optimizer, example input, train(model, optimizer, steps, w))."""
    block, lora, cnn = load("transformer_block"), load("lora_finetune"), load("resnet_cnn")

    def transformer():
        model, x = block["factory"]()
        return model, block["optimizer_for"](model), x, block["train"]

    def lora_plus():
        model = lora["adapted"](lora["pretrained"](steps=0))
        return model, lora["optimizer_for"](model, 0.01, 16.0), lora["task"](0)[0][:32], lora["train"]

    def resnet():
        model, x = cnn["factory"]()
        model, x = model.float(), x.float()
        return model, cnn["optimizer_for"](model), x, cnn["train"]

    return {"transformer block (float64)": transformer, "LoRA+ fine-tune (float64)": lora_plus,
            "ResNet CNN with BatchNorm (float32)": resnet}  # fmt: skip


def timed(make, steps: int, home: str | None) -> tuple[float, float, float]:
    """(seconds per step, of which in the watch's hooks, seconds of the audit) for one fresh model."""
    model, optimizer, x, train = make()
    train(model, optimizer, 3)  # warm up the kernels
    audit_s, w, store = 0.0, None, None
    inside = [0.0]
    if home is not None:
        start = time.perf_counter()
        store = RunStore(home)
        w = balance.watch(model, optimizer, "bench", example_input=x, store=store)
        audit_s = time.perf_counter() - start
        for name in ("_before", "_after"):
            setattr(w, name, clocked(getattr(w, name), inside))  # the hooks look the method up on the watch
    start = time.perf_counter()
    train(model, optimizer, steps, w)
    seconds = (time.perf_counter() - start) / steps
    if w is not None:
        w.close()
        store.close()
    return seconds, inside[0] / steps, audit_s


def clocked(method, total: list[float]):
    def run() -> None:
        start = time.perf_counter()
        method()
        total[0] += time.perf_counter() - start

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, {args.steps} steps, best of {args.repeats}, default interval 10")
    with tempfile.TemporaryDirectory() as home:
        for name, make in setups().items():
            plain, ratios, watched, audits = [], [], [], []
            for _ in range(args.repeats):
                plain.append(timed(make, args.steps, None)[0])
                seconds, hooks, audit_s = timed(make, args.steps, home)
                ratios.append(hooks / (seconds - hooks))
                watched.append(seconds)
                audits.append(audit_s)
            ratio = sorted(ratios)[len(ratios) // 2]
            print(f"{name:36s} overhead {ratio:6.1%} of the step (median of {args.repeats}; in one run: hooks / rest)"
                  f" | plain {min(plain) * 1e3:6.2f} ms/step, watched {min(watched) * 1e3:6.2f} ms/step"
                  f" | audit once {min(audits):.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
