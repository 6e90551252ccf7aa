"""Dashboard benchmark: Start to first chart, training speed with the page open, click latency, refresh rate.

    .venv/bin/python benchmarks/bench_dashboard.py [--window 10] [--repeats 3]

Starts ``streamlit run app.py`` on loopback (a fresh BALANCE_HOME) and drives it with headless Chromium, the
recipe of tests/browser. Measures:

1. Start -> first chart: from the click on Start to a Plotly chart with data in the page (first run of the
   server, then later runs on a warm worker).
2. Throughput: steps per second of one run with the Explore page open and refreshing, against the same config
   trained by a ``Runner`` with no server and no browser (target: at least 0.7x); and with the charts frozen (the
   status line still polling), which separates the cost of the live charts from that of an open page.
3. Chart refresh: distinct chart updates per second seen in the browser while a run trains (target: >= 2).
4. Click latency while two runs train: click "log x" and wait until the chart's x axis is logarithmic; click
   Pause and wait for the status line to say so (target: under 1 s).

The browser, the server and the workers share this machine, so (2) also pays for Chromium drawing the charts.
Results go to stdout and benchmarks/results/dashboard.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "browser"))
sys.path.insert(0, str(ROOT))

from harness import CHROMIUM, LAUNCH_ARGS, Server, wait_idle  # noqa: E402

from balance.config import RunConfig  # noqa: E402
from balance.config.presets import preset  # noqa: E402

CONFIGS = {
    "mf 100x25 (fig1-small)": preset("fig1-small").replace(steps=10**7),
    "mlp 3x32 (mlp-relu)": preset("mlp-relu").replace(steps=10**7),
}
CHART_X = """() => {
    const plot = document.querySelector('div.balance-chart.js-plotly-plot');
    if (!plot || !plot._fullData || !plot._fullData.length) return null;
    const x = plot._fullData[0].x;
    return x && x.length ? Number(x[x.length - 1]) : null;
}"""
AXIS_TYPE = """() => {
    const plot = document.querySelector('div.balance-chart.js-plotly-plot');
    return plot && plot._fullLayout ? plot._fullLayout.xaxis.type : null;
}"""


def button(page, name: str):
    return page.get_by_test_id("stMainBlockContainer").get_by_role("button", name=name, exact=True)


def run_id_of(page) -> str:
    from urllib.parse import parse_qs, urlparse

    return parse_qs(urlparse(page.url).query).get("run", [""])[0]


def running(store) -> int:
    return int((store.list_runs()["state"] == "running").sum())


def _processes() -> dict[int, tuple[int, float, str]]:
    """pid -> (parent pid, CPU seconds so far, command line) for every process we may read."""
    out, tick = {}, os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        out[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick, cmd)
    return out


def cpu_split(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of the Streamlit server, its training workers, and Chromium (all its processes)."""
    procs = _processes()

    def tree(root: int) -> set[int]:
        found, todo = set(), [root]
        while todo:
            pid = todo.pop()
            found.add(pid)
            todo += [c for c, (parent, _, _) in procs.items() if parent == pid and c not in found]
        return found

    below = tree(server_pid)
    workers = {pid for pid in below if "multiprocessing" in procs[pid][2]}
    # this benchmark's browser only (Playwright's driver is our child), not another program's Chromium
    chromium = {pid for pid in tree(os.getpid()) - below if "chrom" in procs[pid][2]}
    total = lambda pids: sum(procs[pid][1] for pid in pids if pid in procs)  # noqa: E731
    return {"server": total(below - workers), "workers": total(workers), "chromium": total(chromium)}


def steps_per_second(step_of, window: float) -> float:
    """Steps per second over ``window`` seconds, from a function that reads the current step."""
    s0, t0 = step_of(), time.monotonic()
    time.sleep(window)
    return (step_of() - s0) / (time.monotonic() - t0)


def headless(config: RunConfig, window: float, home: Path) -> tuple[float, float]:
    """The same config in a Runner with no server and no browser: (steps/s, the worker's cores busy)."""
    from balance.runs.executor import Runner
    from balance.runs.store import RunStore

    runner = Runner(RunStore(home))
    try:
        run_id = runner.start(config)
        runner.wait(run_id, timeout=120, states=("running",))
        time.sleep(2)  # past the first steps' allocations
        cpu0 = cpu_split(os.getpid())["workers"]
        rate = steps_per_second(lambda: runner.status(run_id).step, window)
        cpu = (cpu_split(os.getpid())["workers"] - cpu0) / window
        runner.stop(run_id)
        return rate, max(cpu, 1e-9)
    finally:
        runner.shutdown()


def first_chart(page, url: str) -> float:
    page.goto(url)
    wait_idle(page)
    t0 = time.monotonic()
    button(page, "Start").click()
    page.wait_for_function(f"({CHART_X})() !== null", timeout=120_000)
    return time.monotonic() - t0


def refresh_rate(page, window: float) -> float:
    seen, t0 = [], time.monotonic()
    while time.monotonic() - t0 < window:
        x = page.evaluate(CHART_X)
        if x is not None and (not seen or x != seen[-1]):
            seen.append(x)
        page.wait_for_timeout(50)
    return (len(seen) - 1) / window


def click_latency(page, repeats: int) -> dict[str, list[float]]:
    """With the page's run and a second run training: toggle log x, and Pause / Resume.

    Each click waits for the page to be idle first (a click on an element being redrawn can be lost); a click that
    gets no answer within 30 s counts as infinity.
    """
    from playwright.sync_api import TimeoutError as Timeout

    out: dict[str, list[float]] = {"log x": [], "pause": []}
    toggle = page.get_by_test_id("stMainBlockContainer").get_by_text("log x", exact=True)

    def timed(click, answered) -> float:
        wait_idle(page)
        t0 = time.monotonic()
        click()
        try:
            answered()
        except Timeout:
            return math.inf
        return time.monotonic() - t0

    for _ in range(repeats):
        want = "linear" if page.evaluate(AXIS_TYPE) == "log" else "log"
        done = f"({AXIS_TYPE})() === '{want}'"
        out["log x"].append(timed(toggle.click, lambda done=done: page.wait_for_function(done, timeout=30_000)))
        page.wait_for_timeout(500)
    for _ in range(repeats):
        resume = button(page, "Resume")
        out["pause"].append(timed(button(page, "Pause").click, lambda r=resume: r.wait_for(timeout=30_000)))
        if resume.is_visible():
            wait_idle(page)
            resume.click()
            button(page, "Pause").wait_for(timeout=30_000)
        page.wait_for_timeout(500)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, default=10.0, help="seconds per throughput sample")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not CHROMIUM.exists():
        sys.exit("needs /usr/bin/chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    from balance.runs.store import RunStore

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        server = Server(home, Path(tmp) / "streamlit.log")
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                store = RunStore(home)
                starts, throughput = [], {}
                for name, config in CONFIGS.items():
                    query = "&".join(f"{k}={v}" for k, v in config.to_query().items())
                    starts.append(first_chart(page, f"{server.url}/?{query}"))
                    run_id = run_id_of(page)
                    time.sleep(2)
                    cpu0, load = cpu_split(server.proc.pid), os.getloadavg()[0]
                    with_page = steps_per_second(lambda run_id=run_id: store.get_run(run_id).step, args.window)
                    cpu = {k: (v - cpu0[k]) / args.window for k, v in cpu_split(server.proc.pid).items()}
                    rate = refresh_rate(page, args.window / 2)
                    page.get_by_role("switch", name="freeze charts").check(force=True)  # status line only
                    wait_idle(page)
                    frozen = steps_per_second(lambda run_id=run_id: store.get_run(run_id).step, args.window)
                    page.get_by_role("switch", name="freeze charts").uncheck(force=True)
                    button(page, "Stop").click()
                    page.get_by_text("stopped at step").first.wait_for(timeout=30_000)
                    alone, alone_cpu = headless(config, args.window, Path(tmp) / f"alone-{len(throughput)}")
                    throughput[name] = {
                        "page_open": with_page,
                        "page_open_charts_frozen": frozen,
                        "headless": alone,
                        "ratio": with_page / alone,
                        "chart_updates_per_s": rate,
                        # cores busy during the page-open window; the worker's steps per CPU-second against
                        # headless separates what the page costs the run from what other load on the machine does
                        "cores": cpu,
                        "load_average": load,
                        "ratio_per_cpu_second": (with_page / max(cpu["workers"], 1e-9)) / (alone / alone_cpu),
                    }
                for _ in range(args.repeats - 1):  # later starts: a warm worker
                    query = "&".join(f"{k}={v}" for k, v in CONFIGS[next(iter(CONFIGS))].to_query().items())
                    starts.append(first_chart(page, f"{server.url}/?{query}"))
                    button(page, "Stop").click()
                    page.get_by_text("stopped at step").first.wait_for(timeout=30_000)
                # two runs training: start one, then another from the same page (the first keeps going)
                page.goto(f"{server.url}/?{query}")
                wait_idle(page)
                for _ in range(2):
                    button(page, "Start").click()
                    page.wait_for_function(f"({CHART_X})() !== null", timeout=120_000)
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and (active := running(store)) < 2:
                    time.sleep(0.2)
                time.sleep(2)
                clicks = click_latency(page, args.repeats)
                browser.close()
        finally:
            server.stop()
    results = {
        "start_to_first_chart_s": starts,
        "throughput_steps_per_s": throughput,
        "runs_training_during_clicks": active,
        "click_latency_s": clicks,
    }
    print(f"Start -> first chart: first {starts[0]:.2f} s, then {', '.join(f'{s:.2f}' for s in starts[1:])} s")
    for name, r in throughput.items():
        print(
            f"{name}: {r['page_open']:,.0f} steps/s with the page open, {r['headless']:,.0f} headless "
            f"({r['ratio']:.2f}x), {r['page_open_charts_frozen']:,.0f} with the charts frozen; "
            f"charts updated {r['chart_updates_per_s']:.1f} times/s"
        )
        c = r["cores"]
        print(
            f"    cores while the page is open: server {c['server']:.2f}, Chromium {c['chromium']:.2f}, training "
            f"worker {c['workers']:.2f} (load average {r['load_average']:.1f}); steps per worker CPU-second vs "
            f"headless: {r['ratio_per_cpu_second']:.2f}x"
        )
    for what, times in clicks.items():
        print(f"click '{what}' with {active} runs training: median {statistics.median(times):.2f} s, "
              f"max {max(times):.2f} s")  # fmt: skip
    out = ROOT / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    (out / "dashboard.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
