"""The test kit's fixtures, virtual clock, golden histories and step mocks."""

import time

import pytest

import ironflow
from ironflow import step
from ironflow.history import dumps
from ironflow.testing import VirtualClock, mock_steps, replay


def double(x):
    return x * 2


@ironflow.function(id="patient")
def patient(ctx):
    first = yield step.run("double", double, ctx.event.data)
    yield step.sleep("a-week", "7d")
    event = yield step.wait_for_event("ping", event="ping", timeout="1d")
    return {"first": first, "ping": event.data, "at": ctx.now().isoformat()}


def test_fixtures_give_an_engine_on_a_temporary_file_with_a_virtual_clock(
    ironflow_engine, ironflow_clock, store_kind
):
    assert ironflow_engine.clock is ironflow_clock
    if store_kind == "sqlite":  # conftest runs this on PostgreSQL too (a fresh schema)
        assert ironflow_engine.store.path.endswith("ironflow.db")
    ironflow_engine.register(patient)
    run_id = ironflow_engine.start("patient", 21)
    ironflow_engine.run_until_idle()
    assert ironflow_engine.get_run(run_id).status == "waiting"
    ironflow_clock.advance("6d")
    ironflow_engine.run_until_idle()
    assert ironflow_engine.get_run(run_id).status == "waiting"  # not due yet
    ironflow_clock.advance("1d")
    ironflow_engine.run_until_idle()
    ironflow_engine.emit("ping", {"n": 1})
    assert ironflow_engine.wait(run_id) == {
        "first": 42,
        "ping": {"n": 1},
        "at": "2026-01-08T00:00:00+00:00",
    }


def test_advancing_past_a_wait_timeout_fires_it(ironflow_engine, ironflow_clock):
    ironflow_engine.register(patient)
    run_id = ironflow_engine.start("patient", 1)
    ironflow_engine.run_until_idle()
    ironflow_clock.advance("7d")
    ironflow_engine.run_until_idle()
    ironflow_clock.advance("1d")
    ironflow_engine.run_until_idle()
    with pytest.raises(ironflow.WaitTimeoutError, match="waitForEvent timed out"):
        ironflow_engine.wait(run_id)


def test_with_a_virtual_clock_the_engine_never_reads_the_wall_clock(
    ironflow_engine, ironflow_clock, monkeypatch
):
    def forbidden(*args, **kwargs):
        raise AssertionError("the engine read the wall clock")

    from ironflow.runtime.clock import SystemClock

    # The engine's only route to the wall clock is SystemClock; time.time covers the rest.
    monkeypatch.setattr(SystemClock, "now", forbidden)
    monkeypatch.setattr(time, "time", forbidden)
    ironflow_engine.register(patient)
    run_id = ironflow_engine.start("patient", 5)
    ironflow_engine.run_until_idle()
    ironflow_clock.advance("7d")
    ironflow_engine.run_until_idle()
    ironflow_engine.emit("ping", None)
    ironflow_engine.run_until_idle()
    run = ironflow_engine.get_run(run_id)
    assert run.status == "completed", run.error


def test_virtual_clock_validates_and_never_goes_back():
    clock = VirtualClock("2026-03-01T00:00:00+00:00")
    assert clock.advance("90s").isoformat() == "2026-03-01T00:01:30+00:00"
    with pytest.raises(ValueError, match="'soon'"):
        clock.advance("soon")
    with pytest.raises(ValueError, match="cannot go back"):
        clock.set("2026-01-01T00:00:00+00:00")
    with pytest.raises(ValueError, match="naive"):
        VirtualClock("2026-01-01T00:00:00")


def test_golden_history_replays_from_an_exported_file(ironflow_engine, ironflow_clock, tmp_path):
    ironflow_engine.register(patient)
    run_id = ironflow_engine.start("patient", 3)
    ironflow_engine.run_until_idle()
    ironflow_clock.advance("7d")
    ironflow_engine.run_until_idle()
    ironflow_engine.emit("ping", "pong")
    ironflow_engine.run_until_idle()
    golden = tmp_path / "patient.json"
    golden.write_text(dumps(ironflow_engine.history(run_id)))
    decision = replay(patient, golden)
    assert decision.done and decision.output["ping"] == "pong"
    assert replay(patient, str(golden)) == decision
    assert replay(patient, golden.read_text()) == decision

    @ironflow.function(id="patient")
    def changed(ctx):
        yield step.sleep("a-week", "7d")  # the steps were reordered: old runs cannot replay
        return None

    with pytest.raises(ironflow.NonDeterminismError, match="recorded"):
        replay(changed, golden)


def test_mock_steps_replace_step_functions_by_name(ironflow_engine, ironflow_clock):
    ironflow_engine.register(patient)
    calls = []

    def fake_double(x):
        calls.append(x)
        return -1

    with mock_steps(ironflow_engine, {"double": fake_double}):
        run_id = ironflow_engine.start("patient", 4)
        ironflow_engine.run_until_idle()
    assert calls == [4]
    assert ironflow_engine.step_mocks == {}
    ironflow_clock.advance("7d")
    ironflow_engine.run_until_idle()
    ironflow_engine.emit("ping", None)
    assert ironflow_engine.wait(run_id)["first"] == -1
    with (
        pytest.raises(TypeError, match="must be callable"),
        mock_steps(ironflow_engine, {"double": 3}),
    ):
        pass
