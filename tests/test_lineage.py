"""Rerun and fork (issue 14): new runs made from a recorded one, on both stores.

A fork keeps the steps its source recorded before ``from_step`` was first scheduled: their
bodies never run again (counted), the run goes on with the current code, and it links back.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import ironflow
from ironflow import Engine, step
from ironflow.cli import cli
from ironflow.history.events import RunResumed, StepCompleted
from ironflow.testing import VirtualClock

CALLS: dict[str, int] = {}


def counted(name: str, value: object) -> object:
    CALLS[name] = CALLS.get(name, 0) + 1
    return value


def charge(amount: int) -> dict[str, int]:
    CALLS["charge"] = CALLS.get("charge", 0) + 1
    raise ironflow.NonRetryableError(f"card declined for {amount}")


@ironflow.function(id="order", on="order.created")
def order_v1(ctx):
    user = yield step.run("fetch-user", counted, "fetch-user", {"id": ctx.event.data["user"]})
    yield step.sleep("cool-off", "1h")
    price = yield step.run("price", counted, "price", 42)
    receipt = yield step.run("charge", charge, price)
    return {"user": user["id"], "receipt": receipt}


@ironflow.function(id="order", on="order.created")
def order_v2(ctx):  # the fix: charging works now
    user = yield step.run("fetch-user", counted, "fetch-user", {"id": ctx.event.data["user"]})
    yield step.sleep("cool-off", "1h")
    price = yield step.run("price", counted, "price", 42)
    receipt = yield step.run("charge", counted, "charge", {"paid": price})
    return {"user": user["id"], "receipt": receipt}


@pytest.fixture(autouse=True)
def _reset() -> None:
    CALLS.clear()


def _failed_source(engine: Engine, clock: VirtualClock) -> str:
    engine.register(order_v1)
    [run_id] = engine.emit("order.created", {"user": "u-1"})
    engine.run_until_idle()
    clock.advance("1h")
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "failed"
    assert CALLS == {"fetch-user": 1, "price": 1, "charge": 1}
    return run_id


def test_fork_keeps_the_steps_before_from_step_and_never_runs_them_again(
    store_url: str, clock: VirtualClock
) -> None:
    old = Engine(store_url, clock=clock)
    source = _failed_source(old, clock)
    old.close()
    fixed = Engine(store_url, clock=clock)
    fixed.register(order_v2)
    forked = fixed.fork(source, "charge")
    fixed.run_until_idle()
    run = fixed.get_run(forked)
    assert (run.status, run.source_run_id) == ("completed", source)
    assert run.output == {"user": "u-1", "receipt": {"paid": 42}}
    # fetch-user, the sleep and price were memoized: only the fixed charge ran.
    assert CALLS == {"fetch-user": 1, "price": 1, "charge": 2}
    history = fixed.history(forked)
    assert history[0].run_id == forked
    resumed = [event for event in history if type(event) is RunResumed]
    assert [event.reason for event in resumed] == [f"forked from run {source} before step charge"]
    kept = {event.id: event.result for event in history if type(event) is StepCompleted}
    assert kept["fetch-user"] == {"id": "u-1"} and kept["price"] == 42
    assert fixed.get_run(source).status == "failed"  # the source is left as it was
    fixed.close()


def test_fork_from_an_earlier_step_runs_that_step_and_the_rest_again(
    store_url: str, clock: VirtualClock
) -> None:
    engine = Engine(store_url, clock=clock)
    source = _failed_source(engine, clock)
    engine.close()
    fixed = Engine(store_url, clock=clock)
    fixed.register(order_v2)
    forked = fixed.fork(source, "cool-off")
    fixed.run_until_idle()
    # The sleep is scheduled anew, at the workflow's time after fetch-user (the source's,
    # replayed): it was due an hour later, which has passed, so it fires at once.
    assert fixed.get_run(forked).status == "completed"
    assert CALLS == {"fetch-user": 1, "price": 2, "charge": 2}
    kinds = [type(event).__name__ for event in fixed.history(forked)]
    assert kinds.count("TimerFired") == 1 and kinds.index("RunResumed") < kinds.index("TimerFired")
    fixed.close()


def test_fork_names_the_steps_when_from_step_is_unknown(
    engine: Engine, clock: VirtualClock
) -> None:
    source = _failed_source(engine, clock)
    with pytest.raises(ValueError, match=r"has no step 'nope'; its steps are 'fetch-user', "):
        engine.fork(source, "nope")
    with pytest.raises(KeyError, match="no run with id 'missing'"):
        engine.fork("missing", "price")
    assert len(engine.list_runs()) == 1  # nothing was made


def test_rerun_starts_the_same_trigger_from_scratch_and_links_back(
    engine: Engine, clock: VirtualClock
) -> None:
    source = _failed_source(engine, clock)
    again = engine.rerun(source)
    engine.run_until_idle()
    clock.advance("1h")
    engine.run_until_idle()
    run = engine.get_run(again)
    assert (run.status, run.source_run_id, run.function) == ("failed", source, "order")
    assert engine.history(again)[0].event.data == {"user": "u-1"}
    assert engine.history(again)[0].event == engine.history(source)[0].event
    assert CALLS == {"fetch-user": 2, "price": 2, "charge": 2}
    assert engine.get_run(source).source_run_id is None


def test_cli_rerun_and_fork(store_url: str, clock: VirtualClock) -> None:
    engine = Engine(store_url, clock=clock)
    source = _failed_source(engine, clock)
    engine.close()
    runner = CliRunner()
    forked = runner.invoke(
        cli, ["runs", "fork", source, "--from-step", "charge", "--db", store_url, "--json"]
    )
    assert forked.exit_code == 0, forked.output
    fork_id = json.loads(forked.stdout)["run_id"]
    rerun = runner.invoke(cli, ["runs", "rerun", source, "--db", store_url])
    assert rerun.exit_code == 0, rerun.output
    assert rerun.stdout.startswith("run ") and f"a rerun of {source}" in rerun.stdout
    shown = runner.invoke(cli, ["runs", "show", fork_id, "--db", store_url])
    assert f"source    {source}" in shown.stdout.splitlines()
    bad = runner.invoke(cli, ["runs", "fork", source, "--from-step", "nope", "--db", store_url])
    assert bad.exit_code == 2
    assert "has no step 'nope'" in bad.stderr and len(bad.stderr.splitlines()) == 1
    fixed = Engine(store_url, clock=clock)
    fixed.register(order_v2)
    fixed.run_until_idle()
    assert fixed.get_run(fork_id).status == "completed"
    assert CALLS["fetch-user"] == 2  # the source's once, the rerun's once; the fork's none
    fixed.close()


@ironflow.function(id="only-one", singleton=ironflow.Singleton(mode="skip"))
def only_one(ctx):
    yield step.sleep("nap", "1h")
    return "done"


def test_a_rerun_or_fork_a_singleton_skips_names_the_run_holding_it(engine: Engine) -> None:
    engine.register(only_one)
    holder = engine.start("only-one")
    engine.run_until_idle()
    assert engine.rerun(holder) == holder
    assert engine.fork(holder, "nap") == holder
    assert [run.id for run in engine.list_runs(function="only-one")] == [holder]
