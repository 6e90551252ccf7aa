"""How close ``balance.runs.limits.estimate`` is to real runs: peak memory and time per step, config by config.

Each config trains in a fresh process set up as a worker (one torch thread, the worker's imports, a warm-up step):
its peak resident size (VmHWM, from /proc) and its CPU seconds per step (``process_time``, so other load on a
shared machine does not count) over up to 200 steps or 6 s, every step logged as in a run's first 10,000 steps.
Printed: estimate, measurement and their ratio. The constants of ``balance.runs.limits`` were set from this table.

    python benchmarks/bench_limits.py [NAME_FILTER ...]
"""

from __future__ import annotations

import json
import subprocess
import sys

from balance.config import RunConfig
from balance.runs.limits import MIB, estimate

CHILD = r"""
import json, sys, time
import torch; torch.set_num_threads(1)
import balance.runs.store  # what a worker imports
from balance.config import RunConfig
from balance.engine.trainer import Trainer
Trainer(RunConfig(steps=2)).step()
trainer = Trainer(RunConfig.from_dict(json.loads(sys.argv[1])))
trainer.step()
start, n = time.process_time(), 0
while n < 200 and time.process_time() - start < 6 and trainer.status.state == "running":
    trainer.step()
    n += 1
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM"))
print(json.dumps({"peak": peak, "step": (time.process_time() - start) / max(n, 1), "n": n}))
"""

TEACHER = {"data.name": "teacher", "model.name": "mlp"}
CONFIGS = {
    "mf 100x25": {},
    "mf 2000x2000 r50": {"data.d1": 2000, "data.d2": 2000, "data.rank": 50},
    "mf 1000x500 r20 f32": {"data.d1": 1000, "data.d2": 500, "data.rank": 20, "dtype": "float32"},
    "mlp 3x100 N512 f32": {**TEACHER, "model.width": 100, "data.samples": 512, "dtype": "float32"},
    "mlp 3x100 N512": {**TEACHER, "model.width": 100, "data.samples": 512},
    "mlp 6x512 N512 f32": {**TEACHER, "model.width": 512, "model.depth": 6, "data.samples": 512, "dtype": "float32"},
    "mlp 4x1024 N10k D256 f32": {
        **TEACHER, "model.width": 1024, "model.depth": 4, "data.samples": 10_000, "data.input_dim": 256,
        "dtype": "float32",
    },
    "mlp 4x1024 N10k D256 adam": {
        **TEACHER, "model.width": 1024, "model.depth": 4, "data.samples": 10_000, "data.input_dim": 256,
        "optim.name": "adam",
    },
    "mlp bn 3x256 N20k": {**TEACHER, "model.width": 256, "model.batch_norm": True, "data.samples": 20_000,
                          "data.input_dim": 64},
    "linear 4x1024 N2000 D512": {
        "data.name": "teacher", "model.name": "linear", "model.width": 1024, "model.depth": 4,
        "data.samples": 2000, "data.input_dim": 512,
    },
    "sgd mlp 3x512 N50k b64": {
        **TEACHER, "model.width": 512, "data.samples": 50_000, "data.input_dim": 128, "optim.name": "sgd",
        "optim.batch_size": 64,
    },
    "cnn N256 s16 w16": {"data.name": "images", "model.name": "cnn", "model.width": 16, "data.samples": 256,
                         "data.image_size": 16},
    "cnn N2048 s32 w32 f32": {
        "data.name": "images", "model.name": "cnn", "model.width": 32, "data.samples": 2048, "data.image_size": 32,
        "dtype": "float32",
    },
    "flow mf 100x25": {"optim.name": "flow"},
    "flow mlp moons tanh": {"data.name": "moons", "model.name": "mlp", "optim.name": "flow",
                            "model.activation": "tanh"},
    "mlp moons": {"data.name": "moons", "model.name": "mlp"},
    "orthogonal mlp 2x4096 N256 D4096 f32": {
        **TEACHER, "model.width": 4096, "model.depth": 2, "data.samples": 256, "data.input_dim": 4096,
        "model.init": "orthogonal", "dtype": "float32",
    },
}  # fmt: skip


def main() -> None:
    wanted = sys.argv[1:]
    for name, changes in CONFIGS.items():
        if wanted and not any(w in name for w in wanted):
            continue
        config = RunConfig().replace(**{"optim.lr": 1e-4, **changes})  # a small step: nothing diverges meanwhile
        done = subprocess.run(
            [sys.executable, "-c", CHILD, json.dumps(config.to_dict())], capture_output=True, text=True
        )
        if done.returncode:
            print(f"{name}: failed\n{done.stderr[-1000:]}")
            continue
        got = json.loads(done.stdout.splitlines()[-1])
        cost = estimate(config.replace(steps=1000))
        step, peak = cost.seconds / 1000, got["peak"]
        memory = f"memory {cost.memory / MIB:6.0f} / {peak / MIB:6.0f} MiB = {cost.memory / peak:4.2f}"
        time = f"step {step * 1e3:9.3f} / {got['step'] * 1e3:9.3f} ms = {step / got['step']:4.2f}"
        print(f"{name:38s} {memory}   {time}   ({got['n']} steps)", flush=True)


if __name__ == "__main__":
    main()
