"""Batched sweeps against sequential single runs, in one process, one torch thread; ratios measured in one run.

Cases (float64, metrics every 10 steps, every metric column the single trainer logs):

- MF: 64 configurations, d1 = d2 = 50, rank 5, 2,000 steps (step sizes, init scales and seeds all differ):
  ``batching.train_batched`` (one engine of K = 64) against 64 single runs one after the other (engines of K = 1,
  in the same subspace coordinates) (target: 20x);
- MLP: depth 3, width 64, teacher data with 256 samples, 8 configurations, 500 steps (target: 2x), with its FLOP
  floor (the matmul FLOPs of forward and backward at the measured peak);
- saturation: MF per-model step time as K grows (1, 8, 64, 256; one batch each), and the share of the measured
  float64 matmul peak (1024^3, one thread) that each case reaches.

Both sides run through the one loop (``balance.runs.loop``) with a sweep's neuron snapshots (``sweep.SNAPSHOTS``
per member). Runs alternate and the median of ``--repeats`` is reported. Times are CPU seconds of this process
(wall seconds in brackets): on a shared machine wall times of identical runs varied 2x while CPU times held. Both
sides run with ``batching.tune_allocator()`` (glibc keeps freed memory: no page faults for large stacked tensors).

Then the fixed cost around the training: ``balance sweep`` of the 64 MF configs as a whole process (one worker),
profiled: imports, set-up (specs, configs, the members' rows in the store), training (of which metric rows and
neuron snapshots), result assembly, the store's writes, the summary and the output files, and start-up plus exit
(the whole process's wall time less all of the above).

    python benchmarks/bench_sweep.py [--repeats 3] [--json benchmarks/results/sweep.json] [--breakdown-only]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.runs.batching import train_batched, tune_allocator
from balance.runs.loop import train
from balance.runs.sweep import SNAPSHOTS

MF = RunConfig(
    data=DataConfig(name="lowrank", d1=50, d2=50, rank=5),
    model=ModelConfig(name="mf", init_scale=0.1),
    optim=OptimConfig(name="gd", lr=0.01),
    steps=2000,
    log_every=10,
)
MLP = RunConfig(
    data=DataConfig(name="teacher", samples=256, input_dim=10),
    model=ModelConfig(name="mlp", depth=3, width=64, init_scale=64**-0.5),
    optim=OptimConfig(name="gd", lr=0.05),
    steps=500,
    log_every=10,
)


def members(base: RunConfig, k: int, steps: int | None = None) -> list[RunConfig]:
    """K members: step sizes over a decade, two init scales, a seed each."""
    lrs = np.geomspace(0.2, 2.0, max(k, 2))[:k] * base.optim.lr
    scales = (base.model.init_scale, base.model.init_scale * 3)
    out = []
    for i in range(k):
        change = {"optim.lr": float(lrs[i]), "model.init_scale": scales[i % 2], "seed": i}
        if steps is not None:
            change["steps"] = steps
        out.append(base.replace(**change))
    return out


WALL: list[float] = []


def seconds(f) -> float:
    """CPU seconds of ``f()`` in this process (its wall seconds are appended to WALL)."""
    start, wall = time.process_time(), time.perf_counter()
    f()
    WALL.append(time.perf_counter() - wall)
    return time.process_time() - start


def sequential(configs: list[RunConfig]) -> None:
    for c in configs:
        train([c], snapshots=SNAPSHOTS)


def batched(configs: list[RunConfig]) -> None:
    train_batched(configs, snapshots=SNAPSHOTS)


def compare(configs: list[RunConfig], repeats: int) -> tuple[float, float, float, float]:
    """Median CPU and wall seconds of (sequential single runs, one batched run), alternating."""
    seq, bat, seq_wall, bat_wall = [], [], [], []
    batched(configs[:2])  # warm-up: first calls of each kernel
    for _ in range(repeats):
        seq.append(seconds(lambda: sequential(configs)))
        seq_wall.append(WALL[-1])
        bat.append(seconds(lambda: batched(configs)))
        bat_wall.append(WALL[-1])
    return tuple(statistics.median(v) for v in (seq, bat, seq_wall, bat_wall))  # type: ignore[return-value]


def matmul_peak(n: int = 1024, repeats: int = 3) -> float:
    """float64 GFLOP/s of an n^3 matmul on this thread (best of ``repeats``)."""
    a, b = torch.randn(n, n, dtype=torch.float64), torch.randn(n, n, dtype=torch.float64)
    a @ b
    best = min(seconds(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def mf_flops(config: RunConfig) -> tuple[float, float]:
    """Matmul FLOPs per member-step: (the dense problem: U V^T, R V, U^T R in d1 x d2; what the engine computes, for
    a single run and a batch alike: the same three products in the subspace coordinates, p = min(d1, r + r*),
    q = min(d2, r + r*))."""
    d1, d2, r, rs = config.data.d1, config.data.d2, config.data.rank, config.data.rank
    p, q = min(d1, r + rs), min(d2, r + rs)
    return 3 * 2 * d1 * d2 * r, 3 * 2 * p * q * r


def mlp_flops(config: RunConfig) -> float:
    """Matmul FLOPs per member-step of forward and backward (weight and input gradients; none for the data)."""
    dims = [config.data.input_dim, *config.model.hidden_widths(), config.data.output_dim]
    n = config.data.samples
    pairs = list(itertools.pairwise(dims))
    forward = sum(2 * n * a * b for a, b in pairs)
    weight_grads = forward
    input_grads = sum(2 * n * a * b for a, b in pairs[1:])
    return forward + weight_grads + input_grads


_BREAKDOWN = r"""
import cProfile, json, os, pstats, sys, time
start = time.perf_counter()
import torch
import balance.cli.core, balance.cli.sweep, balance.runs.loop, balance.runs.store, balance.runs.sweep, pandas
imported = time.perf_counter() - start
profile = cProfile.Profile()
profile.enable()
code = balance.cli.core.main(sys.argv[1:])
profile.disable()
ran = time.perf_counter() - start - imported
stats = pstats.Stats(profile).stats
def cum(file, name):
    return sum(v[3] for (f, _, n), v in stats.items() if f.endswith(file) and n == name)
parts = {
    "training": cum("runs/sweep.py", "train_chunk"),
    "  metric rows": cum("engine/engine.py", "rows"),
    "  neuron snapshots": cum("engine/engine.py", "neuron_tables"),
    "  result assembly": cum("runs/loop.py", "results"),
    "set-up (configs, members stored)": cum("runs/sweep.py", "configs") + cum("runs/store.py", "create_run"),
    "store writes (results)": cum("runs/store.py", "save_result"),
    "summary": cum("runs/sweep.py", "summary"),
    "outputs (csv, parquet, toml)": cum("cli/sweep.py", "_write_outputs"),
}
print(json.dumps({"code": code, "imports": imported, "main": ran, "parts": parts}), flush=True)
os._exit(0)  # as the balance command ends: no interpreter teardown
"""


def breakdown(n: int = 64, steps: int = 2000) -> None:
    """Where the time of a whole ``balance sweep`` process goes (wall seconds; see the module's docstring)."""
    import subprocess
    import sys
    import tempfile

    lrs = ",".join(f"{0.002 * (1 + i % 8):g}" for i in range(8))
    with tempfile.TemporaryDirectory() as tmp:
        argv = ["sweep", "--home", f"{tmp}/home", "--out", f"{tmp}/out", "--d1", "50", "--d2", "50", "--rank", "5",
                "--init-scale", "0.1", "--lr", lrs, "--seeds", f"0-{n // 8 - 1}", "--steps", str(steps),
                "--log-every", "10", "--workers", "1", "--dtype", "float64"]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", _BREAKDOWN, *argv], capture_output=True, text=True)
        total = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    got = json.loads(done.stdout.splitlines()[-1])
    print(f"\nbalance sweep, {n} MF configs x {steps} steps, one worker, as a whole process: {total:.2f} s wall")
    rows = {"imports (torch, pandas, balance)": got["imports"], **got["parts"]}
    rows["start-up and exit (the rest)"] = total - got["imports"] - got["main"]
    counted = sum(v for k, v in rows.items() if not k.startswith("  "))
    rows["other (argument parsing, unaccounted)"] = total - counted
    for name, seconds in rows.items():
        print(f"  {name:<40} {seconds:7.3f} s  {seconds / total:5.1%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    parser.add_argument("--breakdown-only", action="store_true", help="only the whole-process breakdown")
    args = parser.parse_args()
    if args.breakdown_only:
        breakdown()
        return
    torch.set_num_threads(1)
    print(f"allocator tuned: {tune_allocator()}")
    peak = matmul_peak()
    print(f"float64 matmul peak (1024^3, 1 thread): {peak:.1f} GFLOP/s")
    out: dict[str, object] = {"peak_gflops": peak}

    configs = members(MF, 64)
    seq, bat, seq_wall, bat_wall = compare(configs, args.repeats)
    steps = 64 * MF.steps
    single_f, batched_f = mf_flops(MF)
    print(f"\nMF 64 x (50x50 r5, 2000 steps, log every 10): sequential {seq:.2f} s ({seq_wall:.2f}), batched "
          f"{bat:.2f} s ({bat_wall:.2f}), speed-up {seq / bat:.1f}x ({seq_wall / bat_wall:.1f}x wall; "
          "target 20x)")  # fmt: skip
    rate_single, rate_dense = single_f * steps / seq / 1e9, single_f * steps / bat / 1e9
    print(f"  per model-step: sequential {seq / steps * 1e6:.1f} us, batched {bat / steps * 1e6:.2f} us; "
          f"matmul work {single_f / 1e3:.0f} kFLOP dense, {batched_f / 1e3:.1f} kFLOP in the subspace; dense-"
          f"equivalent rate {rate_single:.2f} GFLOP/s sequential ({rate_single / peak:.1%} of peak), "
          f"{rate_dense:.2f} batched ({rate_dense / peak:.0%}): both far from peak, bound by per-op "
          "overhead")  # fmt: skip
    out["mf"] = {"sequential_s": seq, "batched_s": bat, "speedup": seq / bat}

    configs = members(MLP, 8)
    seq, bat, seq_wall, bat_wall = compare(configs, args.repeats)
    steps = 8 * MLP.steps
    flops = mlp_flops(MLP)
    floor = flops * steps / (peak * 1e9)
    print(f"\nMLP 8 x (depth 3, width 64, 256 samples, 500 steps): sequential {seq:.2f} s ({seq_wall:.2f}), "
          f"batched {bat:.2f} s ({bat_wall:.2f}), speed-up {seq / bat:.2f}x ({seq_wall / bat_wall:.2f}x wall; "
          "target 2x)")  # fmt: skip
    print(f"  FLOP floor {floor:.2f} s ({flops / 1e6:.2f} MFLOP per model-step at {peak:.0f} GFLOP/s): batched is "
          f"{bat / floor:.1f}x the floor ({flops * steps / bat / 1e9 / peak:.0%} of peak), sequential "
          f"{seq / floor:.1f}x ({flops * steps / seq / 1e9 / peak:.0%})")  # fmt: skip
    out["mlp"] = {"sequential_s": seq, "batched_s": bat, "speedup": seq / bat, "floor_s": floor}
    if (os.cpu_count() or 1) >= 2:  # the machine's two cores: wall seconds now (CPU seconds count both threads)
        torch.set_num_threads(2)
        _, _, seq2, bat2 = compare(configs, args.repeats)
        torch.set_num_threads(1)
        print(f"  with 2 torch threads each (wall): sequential {seq2:.2f} s, batched {bat2:.2f} s, speed-up "
              f"{seq2 / bat2:.2f}x; best against best (sequential is fastest on one thread: small matmuls do not "
              f"split) {min(seq_wall, seq2) / min(bat_wall, bat2):.2f}x")  # fmt: skip
        out["mlp"]["two_threads"] = {"sequential_s": seq2, "batched_s": bat2, "speedup": seq2 / bat2}

    print("\nMF saturation (500 steps; per model-step; speed-up against one single run per model):")
    single = statistics.median(seconds(lambda: sequential(members(MF, 1, 500))) for _ in range(args.repeats)) / 500
    out["saturation"] = {}
    for k in (1, 8, 64, 256):
        configs = members(MF, k, 500)
        t = statistics.median(seconds(lambda c=configs: batched(c)) for _ in range(args.repeats)) / (500 * k)
        rate = single_f / t / 1e9
        print(f"  K = {k:3d}: {t * 1e6:7.2f} us per model-step, speed-up {single / t:5.1f}x, "
              f"dense-equivalent {rate:.2f} GFLOP/s = {rate / peak:.1%} of peak")  # fmt: skip
        out["saturation"][k] = {"us_per_model_step": t * 1e6, "speedup": single / t}
    print(f"  (one single run: {single * 1e6:.1f} us per step)")
    breakdown()
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
