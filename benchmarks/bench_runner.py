"""Throughput of a background run (a worker process of ``balance.runs.executor``, with a reader polling the store every
0.5 s as the dashboard does) against the foreground ``balance.run`` of the same config, in one process and run.

Both are timed end to end: foreground from ``balance.run(config)`` to its return (it builds the trainer too);
background from ``Runner.start(config)`` to the run's end as the runner sees it (dispatch, trainer, every row
written to SQLite). The worker is warm (started and used once), as in the app. Foreground runs use torch's
default threads (as ``balance run`` does) and one thread (as workers do): on a busy 2-core machine two threads
can collapse under oversubscription. Repeats alternate; medians are reported.

Two ratios (background throughput over the row's, >= 0.9x is the target): by wall time, and by CPU time (the
worker's from /proc, the foreground's ``process_time``), which a shared machine's other load does not distort.

Then Start -> first row on a warm executor: ``Runner.start`` of a page's run until the store holds its first row, as
a page polling the store would find it (``--starts`` times, each stopped after; median and max).

    python benchmarks/bench_runner.py [--repeats 5] [--threads 0,1] [--starts 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time

import torch

import balance
from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.runs.executor import Runner
from balance.runs.store import RunStore

CASES = {
    "mf 100x100 r5": RunConfig(
        data=DataConfig(name="lowrank", d1=100, d2=100, rank=5),
        model=ModelConfig(name="mf", init_scale=0.01),
        optim=OptimConfig(name="gd", lr=0.01),
        steps=8000,
    ),
    "mlp 3x100 n512": RunConfig(
        data=DataConfig(name="teacher", samples=512, input_dim=100),
        model=ModelConfig(name="mlp", depth=3, width=100, init_scale=0.1),
        optim=OptimConfig(name="gd", lr=0.05),
        steps=800,
    ),
}
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def foreground(config: RunConfig) -> tuple[float, float]:
    """(wall, CPU) seconds of ``balance.run(config)`` in this process."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = balance.run(config)
    assert result.status.state == "finished", result.status
    return time.perf_counter() - wall, time.process_time() - cpu


def background(runner: Runner, store: RunStore, config: RunConfig, worker: int) -> tuple[float, float]:
    """(wall, worker CPU) seconds from start() to the end, while a reader asks for new rows every 0.5 s."""
    wall, cpu = time.perf_counter(), cpu_seconds(worker)
    run_id = runner.start(config)
    done = threading.Event()

    def poll() -> None:
        cursor = -1
        while not done.is_set():
            rows = store.metrics(run_id, after=cursor)
            if len(rows):
                cursor = int(rows["step"].iloc[-1])
            done.wait(0.5)

    reader = threading.Thread(target=poll)
    reader.start()
    view = runner.wait(run_id)
    seconds = time.perf_counter() - wall
    done.set()
    reader.join()
    assert view.state == "finished", view
    return seconds, cpu_seconds(worker) - cpu


def first_rows(runner: Runner, store: RunStore, config: RunConfig, starts: int) -> list[float]:
    """Seconds from ``start`` to the store holding the run's first row, for ``starts`` runs one after another."""
    out = []
    for _ in range(starts):
        began = time.perf_counter()
        run_id = runner.start(config)
        while not len(store.metrics(run_id)):
            time.sleep(0.0005)
        out.append(time.perf_counter() - began)
        runner.stop(run_id)
        runner.wait(run_id)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--starts", type=int, default=20, help="starts timed to their first row")
    parser.add_argument(
        "--threads", default="0,1", help="torch threads of the foreground runs, comma-separated (0: torch's default)"
    )
    args = parser.parse_args()
    default = torch.get_num_threads()
    variants = [int(t) or default for t in args.threads.split(",")]
    print(f"foreground torch threads: {', '.join(map(str, variants))} (torch default {default}); worker threads: 1")
    with tempfile.TemporaryDirectory() as home, RunStore(home) as store:
        runner = Runner(store, max_workers=1)
        try:
            for config in CASES.values():  # warm up: worker start, first-call costs on both sides
                runner.wait(runner.start(config.replace(steps=20)))
                foreground(config.replace(steps=20))
            worker = runner._workers[0].proc.pid
            head = ("case", "steps", "run", "wall s", "steps/s", "bg/this", "CPU s", "bg/this")
            print("{:<15} {:>5} {:>15} {:>7} {:>7} {:>7} {:>7} {:>7}".format(*head))
            for name, config in CASES.items():
                times: dict[str, list[tuple[float, float]]] = {}
                for r in range(args.repeats):  # alternate, so a busy spell of the machine hits every kind
                    if r % 2:
                        times.setdefault("bg + 0.5 s poll", []).append(background(runner, store, config, worker))
                    for threads in variants:
                        torch.set_num_threads(threads)
                        times.setdefault(f"fg {threads} thread(s)", []).append(foreground(config))
                    if r % 2 == 0:
                        times.setdefault("bg + 0.5 s poll", []).append(background(runner, store, config, worker))
                bg_wall = statistics.median(w for w, _ in times["bg + 0.5 s poll"])
                bg_cpu = statistics.median(c for _, c in times["bg + 0.5 s poll"])
                for label in sorted(times):
                    wall = statistics.median(w for w, _ in times[label])
                    cpu = statistics.median(c for _, c in times[label])
                    speed = f"{config.steps / wall:.0f}"
                    row = (name, config.steps, label, f"{wall:.3f}", speed, f"{wall / bg_wall:.2f}x", f"{cpu:.3f}")
                    row += (f"{cpu / bg_cpu:.2f}x",)
                    print("{:<15} {:>5} {:>15} {:>7} {:>7} {:>7} {:>7} {:>7}".format(*row))
            forever = CASES["mf 100x100 r5"].replace(steps=10**8)
            times = first_rows(runner, store, forever, args.starts)
            print(f"Start -> first row in the store, warm executor ({args.starts} starts, mf 100x100 r5): median "
                  f"{statistics.median(times) * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms")  # fmt: skip
            print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        finally:
            runner.shutdown()


if __name__ == "__main__":
    main()
