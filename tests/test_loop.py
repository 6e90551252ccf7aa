"""The one loop (``balance.runs.loop``): what it does to an engine, the same whichever sink and control drive it, and
``replay``: a run read back from its record, live changes and all, trains again to the same numbers.

The replay test goes through the whole house: a background run in a worker process of the executor whose step size
is changed twice while it is paused mid-run, its record read back from the store, from an exported file and as
``balance runs show`` prints it, then trained again in this process.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import balance
from balance.cli import main
from balance.config import DataConfig, ModelConfig, OptimConfig, RunConfig
from balance.engine.engine import Engine
from balance.engine.status import RunStatus
from balance.runs.executor import Runner
from balance.runs.loop import (
    Advance,
    Control,
    Limit,
    MemorySink,
    Pause,
    Resume,
    Set,
    Stop,
    drive,
    replay,
    run,
    train,
)
from balance.runs.record import Change
from balance.runs.store import RunStore

MF = RunConfig(
    data=DataConfig(name="lowrank", d1=6, d2=5, rank=2),
    model=ModelConfig(name="mf", init_scale=0.1),
    optim=OptimConfig(name="gd", lr=0.05),
    steps=400,
    dtype="float64",
)
MLP = RunConfig(
    data=DataConfig(name="teacher", samples=16, input_dim=3),
    model=ModelConfig(name="mlp", depth=3, width=6, init_scale=0.5),
    optim=OptimConfig(name="momentum", lr=0.02, momentum=0.8),
    steps=300,
    dtype="float64",
)
WAIT = 60.0


class Script(Control):
    """Commands at given steps (before that step's update), as a page would send them."""

    every = 0.0

    def __init__(self, at: dict[int, Sequence]) -> None:
        self.at = dict(at)

    def poll(self, step: int, wait: float) -> Sequence:
        return self.at.pop(step, ())


def _drive(configs: list[RunConfig], control: Control | None = None, **kwargs) -> list:
    sink = MemorySink()
    drive(Engine(configs), sink, control, **kwargs)
    return sink.results()


# --- the loop --------------------------------------------------------------------------------------------------


def test_a_result_reads_as_the_pair_metrics_status() -> None:
    result = run(MF.replace(steps=5))
    df, status = result
    assert df is result.metrics and status == result[1] == RunStatus("finished", 5)
    assert df["step"].tolist() == [0, 1, 2, 3, 4, 5] and result.config == MF.replace(steps=5)


def test_every_run_keeps_neuron_snapshots_from_the_first_step_to_the_last() -> None:
    """Before, only runs of the background runner had snapshots; the loop takes them for every sink."""
    result = run(MF.replace(steps=1000))
    steps = [k for k, _ in result.neurons]
    assert steps[0] == 0 and steps[-1] == 1000 and 190 <= len(steps) <= 202
    assert np.all(np.diff(steps) > 0)
    first = dict(result.neurons)[0]
    np.testing.assert_array_equal(first["in_sqnorm"], Engine([MF]).neuron_table()["in_sqnorm"])
    assert [k for k, _ in train([MF.replace(steps=1000)], snapshots=0)[0].neurons] == [0, 1000]


def test_stopping_one_member_leaves_the_others_as_they_would_have_been() -> None:
    configs = [MF.replace(seed=s, **{"optim.lr": lr}) for s, lr in [(0, 0.05), (1, 0.08), (2, 0.03)]]
    alone = train(configs)
    results = _drive(configs, Script({37: [Stop(1, "stopped", "stopped at step {step}")]}))
    assert [r.status for r in results] == [
        RunStatus("finished", 400), RunStatus("stopped", 37, "stopped at step 37"), RunStatus("finished", 400)
    ]  # fmt: skip
    assert results[1].metrics["step"].tolist() == list(range(38))  # its rows up to where it stopped, that one too
    pd.testing.assert_frame_equal(results[1].metrics, alone[1].metrics.iloc[:38], check_exact=False, rtol=1e-12)
    for i in (0, 2):
        pd.testing.assert_frame_equal(results[i].metrics, alone[i].metrics, check_exact=False, rtol=1e-12)


def test_pause_advance_and_a_live_change_are_a_new_config_version() -> None:
    """Paused at 10 (a row there), 5 steps, then the step size from step 15 on: the row at 15 shows it, and the
    result records the change with the step it applies from."""
    script = Script({10: [Pause("a note"), Advance(5)], 15: [Set(0, "optim.lr", 0.02), Resume()]})
    (result,) = _drive([MF], script)
    assert result.status == RunStatus("finished", 400)
    assert result.changes == (Change(15, "optim.lr", 0.02),)
    lr = result.metrics.set_index("step")["lr"]
    assert lr.loc[14] == 0.05 and lr.loc[15] == 0.02 and lr.loc[400] == 0.02
    assert result.metrics["step"].tolist() == list(range(401))  # one row per step: a row taken again replaces


def test_the_wall_time_limit_and_a_failing_step() -> None:
    (slow,) = _drive([MF.replace(steps=10**8)], limit=Limit(0.1, "stopped at the wall-time limit of 0.1 s"))
    assert slow.status.state == "stopped" and slow.status.message == "stopped at the wall-time limit of 0.1 s"
    assert slow.metrics["step"].iloc[-1] == slow.status.step > 0

    class Broken(Engine):
        def step(self) -> dict:
            if self.step_index == 7:
                raise FloatingPointError("boom")
            return super().step()

    sink = MemorySink()
    statuses = drive(Broken([MF, MF.replace(seed=3)]), sink)
    assert statuses == [RunStatus("failed", 7, "failed at step 7: FloatingPointError: boom")] * 2
    assert [r.metrics["step"].tolist() for r in sink.results()] == [list(range(7))] * 2  # the rows so far


def test_a_member_the_sink_cannot_take_stops_and_the_others_go_on() -> None:
    class Forgetful(MemorySink):
        next_save = 0.0  # due at every step, as a store sink is once its flush interval has passed

        def tick(self, now: float, engine: Engine, state: str, note: str, force: bool = False) -> set[int]:
            return {0} if engine.step_index == 20 else set()

    sink = Forgetful()
    statuses = drive(Engine([MF, MF.replace(seed=1)]), sink)
    assert statuses[0].state == "stopped" and statuses[1] == RunStatus("finished", 400)
    assert sink.results()[0].status.state == "running"  # never told: the sink let it go


# --- replay ------------------------------------------------------------------------------------------------------


def _until(check, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value


# the settings added for issue 14.6: per-layer step sizes (a live change scales every layer's), drawn biases
MLP_NEW = MLP.replace(**{"optim.layer_lrs": (1.0, 2.0, 0.5), "model.bias": True, "model.bias_init": "weights"})


@pytest.mark.parametrize("config", [MF, MLP, MLP_NEW], ids=["mf-gd", "mlp-momentum", "mlp-layer-lrs"])
def test_a_run_whose_step_size_changed_twice_replays_to_the_same_numbers(
    config: RunConfig, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Requirement 13.4: changed twice while it trained in a worker process, recorded as config versions, read back
    from the store and from an exported file, trained again here: every metric of every step is the same float64."""
    with RunStore(tmp_path / "home") as store:
        runner = Runner(store, max_workers=1)
        try:
            run_id = runner.start(config)
            runner.pause(run_id)  # while it is queued or at its first steps: it starts paused, or pauses at once
            k0 = runner.wait(run_id, WAIT, states=("paused",)).step
            assert k0 < 100
            runner.step(run_id, 50)
            _until(lambda: runner.status(run_id).step == k0 + 50 and runner.status(run_id).state == "paused")
            assert runner.set_learning_rate(run_id, config.optim.lr * 2)
            runner.step(run_id, 40)
            _until(lambda: runner.status(run_id).step == k0 + 90 and runner.status(run_id).state == "paused")
            assert runner.set_learning_rate(run_id, config.optim.lr / 2)
            runner.resume(run_id)
            assert runner.wait(run_id, WAIT).state == "finished"
        finally:
            runner.shutdown()
        record = store.get_run(run_id)
        lr0 = config.optim.lr
        assert record.changes == (Change(k0 + 50, "optim.lr", 2 * lr0), Change(k0 + 90, "optim.lr", lr0 / 2))
        assert [(k, c.optim.lr) for k, c in record.versions] == [(0, lr0), (k0 + 50, 2 * lr0), (k0 + 90, lr0 / 2)]
        stored = store.metrics(run_id)
        lr = stored.set_index("step")["lr"]
        assert (lr.loc[k0 + 49], lr.loc[k0 + 50], lr.loc[k0 + 90]) == (lr0, 2 * lr0, lr0 / 2)

        again = replay(record)
        assert again.status == record.status and again.changes == record.changes
        pd.testing.assert_frame_equal(again.metrics, stored, check_exact=True)  # bit for bit
        assert balance.replay is replay
        with pytest.raises(AssertionError):  # the test can fail: without the changes the numbers differ
            pd.testing.assert_frame_equal(balance.run(config).metrics, stored, check_exact=True)

        store.export_run(run_id, tmp_path / "run.zip")  # the export carries the versions, and so does an import
        with RunStore(tmp_path / "other") as other:
            imported = other.get_run(other.import_run(tmp_path / "run.zip"))
            assert imported.changes == record.changes
            pd.testing.assert_frame_equal(replay(imported).metrics, stored, check_exact=True)

    assert main(["runs", "--home", str(tmp_path / "home"), "show", run_id]) == 0
    out = capsys.readouterr().out
    assert "# config: version 1 of 3, from step 0" in out
    assert f"# version 2, from step {k0 + 50}: optim.lr = {2 * lr0!r}" in out
    assert f"# version 3, from step {k0 + 90}: optim.lr = {lr0 / 2!r}" in out


def test_replay_stops_where_a_stopped_run_stopped() -> None:
    (stopped,) = _drive([MF], Script({123: [Stop(None, "stopped", "stopped at step {step}")]}))
    again = replay(stopped)
    assert again.status == stopped.status == RunStatus("stopped", 123, "stopped at step 123")
    pd.testing.assert_frame_equal(again.metrics, stopped.metrics, check_exact=True)
    diverging = MF.replace(**{"optim.lr": 50.0})
    first = run(diverging)
    assert first.status.state == "diverged"
    pd.testing.assert_frame_equal(replay(first).metrics, first.metrics, check_exact=True)


def test_a_bad_change_in_an_archive_is_refused(tmp_path: Path) -> None:
    with RunStore(tmp_path) as store:
        run_id = store.record(run(MF.replace(steps=3)))
        store.record_event(run_id, 2, "lr", -1.0)  # no config has it: the record is damaged, the file refused
        with pytest.raises(Exception, match="damaged"):
            store.get_run(run_id)
        store.export_run(run_id, tmp_path / "bad.zip")
        with pytest.raises(Exception, match="a change of settings makes an invalid config"):
            store.import_run(tmp_path / "bad.zip")
