"""Every row of issue 18's table, measured in one run: times, or ratios of two things measured side by side.

    .venv/bin/python benchmarks/run_all.py [--quick] [--no-browser] [--suite]      (make bench)

Each row prints what was measured and the load average at that moment (the machine is shared: compare ratios, and
times only between runs at a similar load). Command-line rows run ``python -m balance`` in fresh processes, as a
person would; CPU seconds are the children's (``RUSAGE_CHILDREN``), which other load on the machine does not inflate.

Rows: the command line (--help, presets, runs list: wall time and whether torch was imported); ``balance run`` (a
1000-step MF run, its torch threads against one thread); ``balance sweep`` of 64 MF configs against the same configs
trained one after another in plain PyTorch, both whole processes; a 256-member sweep on 2 workers against 1 (and
whether any child outlives the command); the batched MLP against its FLOP floor and the measured matmul peak; the
dashboard (Start -> first chart on a fresh and a warm server, Pause while two runs train, page loads) unless
--no-browser; the test suite's duration (recorded in the README; --suite runs ``make test`` and times it).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
PY = sys.executable


def load() -> str:
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def row(what: str, result: str) -> None:
    print(f"{what:<46} {result}  [{load()}]", flush=True)


def timed(argv: list[str], env: dict[str, str] | None = None, check: bool = True) -> tuple[float, float, str]:
    """(wall, CPU seconds, stdout) of one child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr[-1000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall, cpu, done.stdout


def median_of(n: int, argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    runs = [timed(argv, env) for _ in range(n)]
    return statistics.median(w for w, _, _ in runs), statistics.median(c for _, c, _ in runs)


# --- the command line ---------------------------------------------------------------------------------------------

_PROBE = (
    "import sys\nsys.argv = ['balance', *sys.argv[1:]]\n"
    "try:\n    from balance.cli.core import main\n    main()\nexcept SystemExit:\n    pass\n"
    "print('torch' in sys.modules, file=sys.stderr)\n"
)


def cli_rows(home: str, repeats: int) -> None:
    env = {"BALANCE_HOME": home}
    for argv in (["--help"], ["presets"], ["runs", "list"]):
        wall, cpu = median_of(repeats, [PY, "-m", "balance", *argv], env)
        probe = subprocess.run([PY, "-c", _PROBE, *argv], capture_output=True, text=True, env={**os.environ, **env})
        torch = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "?"
        row(f"balance {' '.join(argv)}", f"{wall:.2f} s wall, {cpu:.2f} CPU s; torch imported: {torch}")


def run_rows(home: str, repeats: int) -> None:
    argv = [PY, "-m", "balance", "run", "--preset", "fig1-small", "--steps", "1000", "--no-store"]
    default = median_of(repeats, argv, {"BALANCE_HOME": home})
    one = median_of(repeats, argv, {"BALANCE_HOME": home, "OMP_NUM_THREADS": "1"})
    row(
        "balance run, 1000-step MF: as shipped / 1 thread",
        f"{default[0] / one[0]:.2f}x the wall ({default[0]:.2f} s), {default[1] / one[1]:.2f}x the CPU "
        f"({default[1]:.2f} s)",
    )


# --- sweeps -------------------------------------------------------------------------------------------------------

_PLAIN = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    n, steps = int(sys.argv[1]), int(sys.argv[2])
    for i in range(n):  # what one would write by hand: an MF 50x50 rank 5 under GD, the loss logged every 10 steps
        g = torch.Generator().manual_seed(i)
        M = torch.randn(50, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 50, generator=g, dtype=torch.float64)
        U = (0.1 * torch.randn(50, 5, generator=g, dtype=torch.float64)).requires_grad_()
        V = (0.1 * torch.randn(50, 5, generator=g, dtype=torch.float64)).requires_grad_()
        lr, losses = 0.002 * (1 + i % 8), []
        for k in range(steps):
            loss = 0.5 * ((U @ V.T - M) ** 2).sum()
            U.grad = V.grad = None
            loss.backward()
            with torch.no_grad():
                U -= lr * U.grad
                V -= lr * V.grad
            if k % 10 == 0:
                losses.append(loss.item())
    """
)


def sweep_argv(home: str, out: str, n: int, steps: int, workers: int) -> list[str]:
    lrs = ",".join(f"{0.002 * (1 + i % 8):g}" for i in range(8))
    return [PY, "-m", "balance", "sweep", "--home", home, "--out", out, "--d1", "50", "--d2", "50", "--rank", "5",
            "--init-scale", "0.1", "--lr", lrs, "--seeds", f"0-{n // 8 - 1}", "--steps", str(steps),
            "--log-every", "10", "--workers", str(workers), "--dtype", "float64"]  # fmt: skip


def sweep_rows(home: str, quick: bool) -> None:
    n, steps = (64, 500) if quick else (64, 2000)
    with tempfile.TemporaryDirectory() as tmp:
        sweep = timed(sweep_argv(home, f"{tmp}/a", n, steps, 1))
        plain = timed([PY, "-c", _PLAIN, str(n), str(steps)])
        row(
            f"balance sweep {n} MF x {steps} vs plain torch",
            f"{plain[1] / sweep[1]:.1f}x by CPU ({sweep[1]:.2f} vs {plain[1]:.2f} s), "
            f"{plain[0] / sweep[0]:.1f}x by wall",
        )
        n = 256
        one = timed(sweep_argv(home, f"{tmp}/b", n, steps // 2, 1))
        two = timed(sweep_argv(home, f"{tmp}/c", n, steps // 2, 2))
        left = subprocess.run(["pgrep", "-f", "multiprocessing.spawn"], capture_output=True, text=True).stdout.split()
        row(
            f"balance sweep {n} MF, --workers 2 vs 1",
            f"{two[1] / one[1]:.2f}x the CPU, {two[0] / one[0]:.2f}x the wall; spawn children alive after: {len(left)}",
        )


def batched_mlp_row(quick: bool) -> None:
    import bench_sweep as bs
    import torch

    torch.set_num_threads(1)
    bs.tune_allocator()
    configs = bs.members(bs.MLP, 8, steps=100 if quick else None)
    seq, bat, _, _ = bs.compare(configs, 1 if quick else 3)
    peak = bs.matmul_peak()
    floor = 8 * bs.mlp_flops(configs[0]) * configs[0].steps / (peak * 1e9)
    row(
        "batched MLP (depth 3, width 64, K = 8), 1 thread",
        f"{seq / bat:.2f}x sequential, {bat / floor:.2f}x the FLOP floor ({100 * floor / bat:.0f}% of the measured "
        f"matmul peak, {peak:.0f} GFLOP/s)",
    )


# --- the dashboard ------------------------------------------------------------------------------------------------


def _query(name: str) -> str:
    from balance.config.presets import preset

    return "&".join(f"{k}={v}" for k, v in preset(name).replace(steps=10**7).to_query().items())


def browser_rows(repeats: int) -> None:
    import bench_dashboard as bd
    from playwright.sync_api import sync_playwright

    if not bd.CHROMIUM.exists():
        row("dashboard rows", "skipped: no /usr/bin/chromium")
        return
    with tempfile.TemporaryDirectory() as tmp:
        server = bd.Server(Path(tmp) / "home", Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(bd.CHROMIUM), args=bd.LAUNCH_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                fresh = bd.first_chart(page, f"{server.url}/?{_query('fig1-small')}")
                bd.button(page, "Stop").click()
                row("Start -> first chart, fresh server (mf)", f"{fresh:.2f} s")
                for name in ("fig1-small", "mlp-relu", "linear-deep", "cnn"):
                    warm = []
                    for _ in range(repeats):
                        warm.append(bd.first_chart(page, f"{server.url}/?{_query(name)}"))
                        bd.button(page, "Stop").click()
                        page.get_by_text("stopped at step").first.wait_for(timeout=30_000)
                    row(f"Start -> first chart, warm server ({name})", f"median {statistics.median(warm):.2f} s, "
                        f"max {max(warm):.2f} s")  # fmt: skip
                page.goto(f"{server.url}/?{_query('fig1-small')}")
                bd.wait_idle(page)
                for _ in range(2):
                    bd.button(page, "Start").click()
                    page.wait_for_function(f"({bd.CHART_X})() !== null", timeout=120_000)
                time.sleep(2)
                try:
                    pause = bd.click_latency(page, repeats)["pause"]
                    pauses = f"median {statistics.median(pause):.2f} s, max {max(pause):.2f} s"
                except Exception as exc:  # a row that cannot be measured says so; the others go on
                    pauses = f"not measured: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"
                row("Pause click while 2 runs train", pauses)
                for path in ("/", "/runs", "/lecture"):
                    times = []
                    for _ in range(repeats):
                        start = time.monotonic()
                        page.goto(server.url + path)
                        bd.wait_idle(page)
                        times.append(time.monotonic() - start)
                    row(f"page load {path} (warm)", f"median {statistics.median(times):.2f} s, max {max(times):.2f} s")
                browser.close()
        finally:
            server.stop()


def suite_row(run: bool) -> None:
    if not run:
        readme = (ROOT / "README.md").read_text()
        line = next((s.strip() for s in readme.splitlines() if "make test" in s and " min" in s), "not recorded")
        row("make test", f"recorded in the README: {line[:120]}")
        return
    wall, _, _ = timed(["make", "test"], check=False)
    row("make test", f"{wall / 60:.1f} min")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and steps (a smoke run)")
    parser.add_argument("--no-browser", action="store_true", help="skip the dashboard rows")
    parser.add_argument("--suite", action="store_true", help="also run make test and time it")
    args = parser.parse_args()
    repeats = 2 if args.quick else 5
    print(f"balance benchmarks, {os.cpu_count()} cores, {load()}")
    with tempfile.TemporaryDirectory() as home:
        cli_rows(home, repeats)
        run_rows(home, repeats)
        sweep_rows(home, args.quick)
    batched_mlp_row(args.quick)
    if not args.no_browser:
        browser_rows(2 if args.quick else 3)
    row("Claims page, first run", "timed by tests/browser/test_claims_page.py::test_cold_page_within_budget")
    suite_row(args.suite)


if __name__ == "__main__":
    main()
