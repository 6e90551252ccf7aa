"""Thread or process for background runs? Training throughput and page latency, measured together.

For each backend of ``balance.runs.executor.Runner`` ("process": spawned workers with one torch thread; "thread":
threads of this process, torch set to one thread too) and each model:

- solo: one run alone, steps/s;
- 2 runs: two runs at once (the machine has 2 cores), steps/s of each;
- 2 runs + page: the same while a Streamlit page is re-run back to back in this process (``AppTest``: the script
  runs in a thread of this process, as in the server), reading each run's metrics from the store and building a
  plotly figure of them; steps/s of each run and the page's median and 90th-percentile time.

The page alone (no runs) is the latency baseline. Throughput is read from the runner's status over a window.

    python benchmarks/bench_backends.py [--window 4] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.runs.executor import Runner
from balance.runs.store import RunStore

MODELS = {
    "mf 100x100 r5": RunConfig(
        data=DataConfig(name="lowrank", d1=100, d2=100, rank=5),
        model=ModelConfig(name="mf", init_scale=0.01),
        optim=OptimConfig(name="gd", lr=0.01),
        steps=10**8,
    ),
    "mlp 3x100 n512": RunConfig(
        data=DataConfig(name="teacher", samples=512, input_dim=100),
        model=ModelConfig(name="mlp", depth=3, width=100, init_scale=0.1),
        optim=OptimConfig(name="gd", lr=0.01),
        steps=10**8,
    ),
}


def page(home: str, run_ids: list[str]) -> None:
    """A dashboard-like page: every run's metrics from the store, decimated, as one plotly chart."""
    import plotly.graph_objects as go
    import streamlit as st

    from balance.runs.store import RunStore

    with RunStore(home) as store:
        fig = go.Figure()
        for run_id in run_ids:
            df = store.metrics(run_id, columns=["loss", "gap_1", "sqnorm_1", "sqnorm_2"])
            df = df.iloc[:: max(1, len(df) // 2000)]
            for column in ("loss", "gap_1", "sqnorm_1", "sqnorm_2"):
                fig.add_scatter(x=df["step"].to_numpy(), y=df[column].to_numpy(), name=f"{run_id} {column}")
            st.metric(run_id, f"{len(df)} rows")
        st.plotly_chart(fig)


def page_times(home: str, run_ids: list[str], seconds: float) -> list[float]:
    from streamlit.testing.v1 import AppTest

    app = AppTest.from_function(page, args=(home, run_ids), default_timeout=120)
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end or len(times) < 3:
        start = time.perf_counter()
        app.run()
        assert not app.exception, app.exception
        times.append(time.perf_counter() - start)
    return times


def rates(runner: Runner, run_ids: list[str], seconds: float, home: str | None = None) -> tuple[list[float], list]:
    """Steps/s of each run over ``seconds`` (re-running the page meanwhile if ``home`` is given)."""
    before = [(time.monotonic(), runner.status(i).step) for i in run_ids]
    if home is None:
        time.sleep(seconds)
        times: list[float] = []
    else:
        times = page_times(home, run_ids, seconds)
    after = [(time.monotonic(), runner.status(i).step) for i in run_ids]
    return [(s1 - s0) / (t1 - t0) for (t0, s0), (t1, s1) in zip(before, after)], times


def start(runner: Runner, config: RunConfig, n: int) -> list[str]:
    ids = [runner.start(config.replace(seed=s)) for s in range(n)]
    for i in ids:
        assert runner.wait(i, 120, states=("running",)).state == "running"
    time.sleep(0.5)  # past the first rows
    return ids


def stop(runner: Runner, ids: list[str]) -> None:
    for i in ids:
        runner.stop(i)
    for i in ids:
        runner.wait(i, 60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; backends alternate within each")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the thread backend's best case; workers set it themselves
    w = args.window
    results: dict[tuple[str, ...], list[float]] = {}

    def add(key: tuple[str, ...], values: list[float]) -> None:
        results.setdefault(key, []).extend(values)

    with tempfile.TemporaryDirectory() as home, RunStore(home) as store:
        runners = {"process": Runner(store, max_workers=2), "thread": Runner(store, max_workers=2, backend="thread")}
        try:
            drawn = start(runners["process"], MODELS["mf 100x100 r5"].replace(steps=2000), 2)  # warms both workers
            for i in drawn:
                runners["process"].wait(i, 120)
            for r in range(args.repeats):
                add(("page alone",), page_times(home, drawn, w))
                for name, config in MODELS.items():
                    for backend in ("process", "thread") if r % 2 == 0 else ("thread", "process"):
                        runner = runners[backend]
                        ids = start(runner, config, 1)
                        add((name, backend, "solo"), rates(runner, ids, w)[0])
                        stop(runner, ids)
                        ids = start(runner, config, 2)
                        add((name, backend, "2 runs"), rates(runner, ids, w)[0])
                        speeds, times = rates(runner, ids, w, home)
                        add((name, backend, "2 runs + page"), speeds)
                        add((name, backend, "page"), times)
                        stop(runner, ids)
        finally:
            for runner in runners.values():
                runner.shutdown()
    page = results.pop(("page alone",))
    print(f"page alone (no runs): {fmt(page)}")
    print(f"{'model':<15} {'backend':<8} {'solo':>7} {'2 runs':>7} {'+ page':>7} (steps/s of one run)  page time")
    for name in MODELS:
        for backend in ("process", "thread"):
            cells = [statistics.median(results[(name, backend, c)]) for c in ("solo", "2 runs", "2 runs + page")]
            print(
                f"{name:<15} {backend:<8} "
                + " ".join(f"{c:>7.0f}" for c in cells)
                + f"  {fmt(results[(name, backend, 'page')])}"
            )


def fmt(times: list[float]) -> str:
    q = statistics.quantiles(times, n=10) if len(times) > 1 else times
    return f"{1e3 * statistics.median(times):5.0f} ms median, {1e3 * q[-1]:5.0f} ms p90 ({len(times)} page runs)"


if __name__ == "__main__":
    main()
