"""The engine's API end to end on real SQLite files: inspection, history, cancel, resume,
blocked runs, scale, bad input and several engines sharing one database.

Concurrency is proved with barriers and events that time out, never with sleeps.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sqlite3
import threading
import time

import pytest
from engine_kit import idle

import ironflow
from ironflow import (
    CancelledError,
    Engine,
    NonDeterminismError,
    NonRetryableError,
    RetryPolicy,
    step,
)
from ironflow.history import (
    RunCancelled,
    RunResumed,
    RunStarted,
    StepCompleted,
    dumps,
    encode_error,
    event_to_dict,
    loads,
)
from ironflow.interpreter import Interpreter, replay
from ironflow.runtime import StoreError
from ironflow.testing import VirtualClock

NO_RETRY = RetryPolicy(max_attempts=1)


class PaymentError(Exception):
    """A user-defined error: its type is stored module-qualified."""


def table_count(engine: Engine, table: str) -> int:
    return engine.store.query(f"SELECT COUNT(*) FROM {table}")[0][0]


# --- get_run ------------------------------------------------------------------------------------


def test_get_run_of_a_completed_run(engine, clock):
    @ironflow.function(id="greet")
    def flow(ctx):
        yield step.sleep("pause", "1h")
        return {"hello": ctx.event.data["name"]}

    engine.register(flow)
    t0 = clock.now()
    rid = engine.start("greet", {"name": "ada"})
    run = engine.get_run(rid)
    assert (run.id, run.function, run.status) == (rid, "greet", "pending")
    assert run.output is None and run.error is None and run.ended_at is None
    assert run.created_at == t0 and not run.done
    engine.run_until_idle()
    assert engine.get_run(rid).status == "waiting"
    clock.advance("1h")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "completed" and run.done
    assert run.output == {"hello": "ada"}
    assert run.error is None
    assert run.created_at == t0
    assert run.ended_at == run.updated_at == t0 + _dt.timedelta(hours=1)
    assert run.parent_run_id is None
    with pytest.raises(KeyError, match="no-such-run"):
        engine.get_run("no-such-run")


def test_get_run_shows_running_while_a_step_executes(engine):
    entered, release = threading.Event(), threading.Event()

    def hold():
        entered.set()
        assert release.wait(timeout=10)
        return "released"

    @ironflow.function(id="holder")
    def flow(ctx):
        return (yield step.run("hold", hold))

    engine.register(flow)
    rid = engine.start("holder")
    driver = threading.Thread(target=engine.run_until_idle, daemon=True)
    driver.start()
    try:
        assert entered.wait(timeout=10)
        assert engine.get_run(rid).status == "running"
    finally:
        release.set()
    driver.join(timeout=10)
    assert not driver.is_alive()
    assert engine.get_run(rid).output == "released"


def test_get_run_error_types_builtin_and_module_qualified(engine):
    def declined():
        raise PaymentError("card declined")

    def bad_value():
        raise ValueError("negative amount")

    @ironflow.function(id="pay", retry=NO_RETRY)
    def pay(ctx):
        yield step.run("charge", declined)

    @ironflow.function(id="validate", retry=NO_RETRY)
    def validate(ctx):
        yield step.run("check", bad_value)

    @ironflow.function(id="raises-directly")
    def direct(ctx):
        raise NonRetryableError("straight from the workflow")
        yield

    for fn in (pay, validate, direct):
        engine.register(fn)
    r_pay, r_val, r_dir = (engine.start(f) for f in ("pay", "validate", "raises-directly"))
    engine.run_until_idle()

    run = engine.get_run(r_pay)
    assert run.status == "failed" and run.done
    assert run.error.type == f"{PaymentError.__module__}.PaymentError"
    assert run.error.message == "card declined"
    assert run.output is None and run.ended_at is not None
    with pytest.raises(PaymentError, match="card declined"):
        engine.wait(r_pay)

    run = engine.get_run(r_val)
    assert (run.error.type, run.error.message) == ("ValueError", "negative amount")
    with pytest.raises(ValueError, match="negative amount"):
        engine.wait(r_val)

    run = engine.get_run(r_dir)
    assert run.error.type == "ironflow.errors.NonRetryableError"
    assert run.error.message == "straight from the workflow"


def test_wait_on_a_run_that_needs_the_clock_raises_timeout_error(engine, clock):
    @ironflow.function(id="napper")
    def flow(ctx):
        yield step.sleep("nap", "1h")
        return "rested"

    engine.register(flow)
    rid = engine.start("napper")
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="advance the clock"):
        engine.wait(rid)
    assert time.monotonic() - began < 5
    clock.advance("1h")
    assert engine.wait(rid, timeout=10) == "rested"


def test_list_runs_filters(engine, clock):
    @ironflow.function(id="ok")
    def ok(ctx):
        return ctx.event.data
        yield

    @ironflow.function(id="sleeper")
    def sleeper(ctx):
        yield step.sleep("z", "1d")

    @ironflow.function(id="broken")
    def broken(ctx):
        raise RuntimeError("x")
        yield

    for fn in (ok, sleeper, broken):
        engine.register(fn)
    ids = {}
    for n, fid in enumerate(["ok", "sleeper", "broken", "ok", "sleeper"]):
        ids.setdefault(fid, []).append(engine.start(fid, n))
        clock.advance("1s")
    engine.run_until_idle()

    assert {r.id for r in engine.list_runs()} == {i for v in ids.values() for i in v}
    assert {r.id for r in engine.list_runs(status="completed")} == set(ids["ok"])
    assert {r.id for r in engine.list_runs(status="waiting")} == set(ids["sleeper"])
    assert {r.id for r in engine.list_runs(status="failed")} == set(ids["broken"])
    assert {r.id for r in engine.list_runs(function="sleeper")} == set(ids["sleeper"])
    assert engine.list_runs(status="completed", function="sleeper") == []
    assert engine.list_runs(status="cancelled") == []
    newest = engine.list_runs(limit=2)
    assert [r.id for r in newest] == [ids["sleeper"][1], ids["ok"][1]]  # newest first
    assert all(r.status in ironflow.runtime.STATUSES for r in engine.list_runs())


# --- history ------------------------------------------------------------------------------------


def _double(x):
    return x * 2


def test_history_json_round_trip_and_replay_gives_stored_outcome(engine, clock):
    @ironflow.function(id="kid")
    def kid(ctx):
        return {"kid": ctx.event.data}
        yield

    @ironflow.function(id="everything", on="order.created")
    def flow(ctx):
        a = yield step.run("a", _double, ctx.event.data["n"])
        yield step.sleep("nap", "1h")
        got = yield step.wait_for_event("ok", "order.ok", match="data.n", timeout="1d")
        pair = yield step.parallel(
            "p", [lambda s: s.run("x", _double, 1), lambda s: s.run("y", _double, 2)]
        )
        mapped = yield step.map("m", [1, 2, 3], lambda item, s, i: s.run("sq", _double, item))
        child = yield step.invoke("call", kid, {"k": 1})
        yield step.publish("tell", "order.done", {"n": a})
        return {"a": a, "ok": got.data, "pair": pair, "mapped": mapped, "child": child}

    engine.register(kid)
    engine.register(flow)
    [rid] = engine.emit("order.created", {"n": 4})
    engine.run_until_idle()
    engine.emit("order.ok", {"n": 4})
    clock.advance("1h")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "completed"

    history = engine.history(rid)
    assert [e.seq for e in history] == list(range(len(history)))
    text = dumps(history)
    assert isinstance(json.loads(text), list)
    loaded = loads(text)
    assert loaded == history
    assert [event_to_dict(e) for e in loaded] == [event_to_dict(e) for e in history]

    decision = replay(flow, loaded)
    assert decision.done and decision.status == "completed"
    assert decision.output == run.output
    assert decision.commands == () and decision.events == ()


def test_history_of_a_run_not_driven_yet_is_its_run_started_event(engine, clock):
    @ironflow.function(id="echo")
    def echo(ctx):
        return ctx.event.data
        yield

    engine.register(echo)
    rid = engine.start("echo", {"n": 1})
    # start() writes the run's row only; the first drive writes RunStarted from it.
    assert table_count(engine, "history") == 0
    [before] = engine.history(rid)
    assert isinstance(before, RunStarted)
    assert (before.seq, before.run_id, before.function_id) == (0, rid, "echo")
    assert before.event.data == {"n": 1} and before.event.name == "echo"
    idle(engine)
    after = engine.history(rid)
    assert after[0] == before
    assert table_count(engine, "history") == len(after)


def test_a_schema_v1_database_is_upgraded_in_place(tmp_path, clock):
    path = str(tmp_path / "v1.db")

    @ironflow.function(id="echo")
    def echo(ctx):
        return ctx.event.data
        yield

    @ironflow.function(id="nap")
    def nap(ctx):
        yield step.sleep("nap", "1h")
        return "rested"

    one = Engine(path, clock=clock)
    one.register(echo)
    one.register(nap)
    rid = one.start("echo", [1])
    napping = one.start("nap")
    idle(one)
    one.close()
    conn = sqlite3.connect(path)  # put back what v1 had
    with conn:
        for table, key in (("timers", "run_id, step_id"), ("consumed", "run_id, event_id")):
            conn.execute(f"CREATE TABLE old AS SELECT * FROM {table} WHERE 0")
            conn.execute(f"DROP TABLE {table}")
            conn.execute(f"ALTER TABLE old RENAME TO {table}")
            conn.execute(f"CREATE UNIQUE INDEX {table}_key ON {table} ({key})")
        conn.execute("CREATE INDEX timers_due ON timers (due_us)")
        conn.execute(
            "INSERT INTO timers VALUES (?, 'nap', 'sleep', ?, 1)",
            (napping, int((clock.now().timestamp() + 3600) * 1_000_000)),
        )
        conn.execute("DROP INDEX runs_parent")
        conn.execute("DROP INDEX runs_active")
        conn.execute("CREATE INDEX runs_parent ON runs (parent_run_id)")
        conn.execute("CREATE INDEX runs_status_lease ON runs (status, lease_until_us)")
        conn.execute("CREATE INDEX runs_function ON runs (function_id, status)")
        conn.execute("ALTER TABLE runs ADD COLUMN next_seq INTEGER NOT NULL DEFAULT 0")
        for table in ("functions", "workers", "flow_state", "flow_skips"):  # v3's and v4's
            conn.execute(f"DROP TABLE {table}")
        conn.execute("ALTER TABLE runs DROP COLUMN code_version")
        conn.execute("DELETE FROM ironflow_meta WHERE key = 'registry_version'")
        for index in ("runs_created", "runs_status_created", "runs_function_created"):
            conn.execute(f"DROP INDEX {index}")  # and what v4 added
        conn.execute("ALTER TABLE runs DROP COLUMN source_run_id")
        # and what v6 added (its index on consumed went with that table, rebuilt above)
        conn.execute("ALTER TABLE events DROP COLUMN traceparent")
        conn.execute("UPDATE ironflow_meta SET value = '1' WHERE key = 'schema_version'")
    conn.close()

    two = Engine(path, clock=clock)
    two.register(echo)
    two.register(nap)
    assert two.store.schema_version() == 6
    assert two.store.query("SELECT run_id, step_id FROM timers") == [(napping, "nap")]
    indexes = {
        row[0] for row in two.store.query("SELECT name FROM sqlite_master WHERE type = 'index'")
    }
    assert {"runs_parent", "runs_active"} <= indexes
    assert not {"runs_function", "runs_status_lease"} & indexes
    assert two.get_run(rid).output == [1]
    assert two.wait(two.start("echo", [2])) == [2]
    clock.advance("1h")
    assert two.wait(napping) == "rested"
    two.close()


def test_history_round_trip_of_a_failed_run(engine):
    def declined():
        raise PaymentError("no funds")

    @ironflow.function(id="fails", retry=NO_RETRY)
    def flow(ctx):
        yield step.run("ok", _double, 1)
        yield step.run("charge", declined)

    engine.register(flow)
    rid = engine.start("fails")
    engine.run_until_idle()
    run = engine.get_run(rid)
    loaded = loads(dumps(engine.history(rid)))
    assert loaded == engine.history(rid)
    decision = replay(flow, loaded)
    assert decision.done and decision.status == "failed"
    info = encode_error(decision.error)
    assert (info.type, info.message) == (run.error.type, run.error.message)


def test_history_of_unknown_run_raises_key_error(engine):
    with pytest.raises(KeyError, match="ghost"):
        engine.history("ghost")


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_parent_cancels_children(engine):
    @ironflow.function(id="waiting-child")
    def child(ctx):
        yield step.wait_for_event("w", "never", timeout="30d")

    @ironflow.function(id="waiting-parent")
    def parent(ctx):
        background = yield step.invoke_async("bg", child)
        yield step.invoke("fg", child)
        return background

    engine.register(child)
    engine.register(parent)
    rid = engine.start("waiting-parent")
    idle(engine)
    kids = engine.list_runs(function="waiting-child")
    assert len(kids) == 2 and all(k.status == "waiting" for k in kids)

    engine.cancel(rid)
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "cancelled" and run.done
    assert [k.status for k in engine.list_runs(function="waiting-child")] == ["cancelled"] * 2
    assert any(isinstance(e, RunCancelled) for e in engine.history(rid))
    with pytest.raises(CancelledError):
        engine.wait(rid)
    for kid in kids:
        with pytest.raises(CancelledError):
            engine.wait(kid.id)
    engine.emit("never")
    idle(engine)
    assert engine.get_run(rid).status == "cancelled"


def test_cancel_with_compensate_reaches_the_children_undos(engine, calls):
    release = threading.Event()

    def slow_undo(label):
        assert release.wait(timeout=10)
        calls.hit(label)

    @ironflow.function(id="saga-child")
    def child(ctx):
        yield step.run("reserve", calls.hit, "reserve")
        yield step.compensate("reserve", slow_undo, "unreserve")
        yield step.wait_for_event("w", "never", timeout="30d")

    @ironflow.function(id="saga-parent")
    def parent(ctx):
        return (yield step.invoke("call", child))

    engine.register(child)
    engine.register(parent)
    rid = engine.start("saga-parent")
    idle(engine)
    engine.cancel(rid, compensate=True)
    release.set()
    idle(engine)
    assert engine.get_run(rid).status == "cancelled"
    [kid] = engine.list_runs(function="saga-child")
    assert kid.status == "cancelled"
    assert calls.counts == {"reserve": 1, "unreserve": 1}


def test_cancel_with_compensate_runs_undos_once(engine, calls):
    @ironflow.function(id="undoable")
    def flow(ctx):
        yield step.run("a", calls.hit, "a")
        yield step.compensate("a", calls.hit, "undo-a")
        yield step.run("b", calls.hit, "b")
        yield step.compensate("b", calls.hit, "undo-b")
        yield step.wait_for_event("w", "never", timeout="30d")

    engine.register(flow)
    plain = engine.start("undoable")
    saga = engine.start("undoable")
    idle(engine)
    engine.cancel(plain)
    engine.cancel(saga, compensate=True)
    idle(engine)
    assert engine.get_run(plain).status == "cancelled"
    assert engine.get_run(saga).status == "cancelled"
    assert calls.counts == {"a": 2, "b": 2, "undo-a": 1, "undo-b": 1}
    undone = [e.id for e in engine.history(saga) if isinstance(e, StepCompleted)]
    assert undone[-2:] == ["compensate:b", "compensate:a"]
    with pytest.raises(CancelledError):
        engine.wait(saga)


def test_cancel_of_a_finished_run_changes_nothing(engine):
    @ironflow.function(id="quick")
    def flow(ctx):
        return 1
        yield

    engine.register(flow)
    rid = engine.start("quick")
    idle(engine)
    engine.cancel(rid)
    idle(engine)
    assert engine.get_run(rid).status == "completed"
    assert engine.wait(rid) == 1


# --- resume -------------------------------------------------------------------------------------

BROKEN = {"charge": True}


def _charge(calls, amount):
    calls.hit("charge")
    if BROKEN["charge"]:
        raise RuntimeError("gateway misconfigured")
    return {"charged": amount}


def test_resume_a_failed_run_reruns_only_the_failed_step(engine, calls, monkeypatch):
    monkeypatch.setitem(BROKEN, "charge", True)

    @ironflow.function(id="order", retry=NO_RETRY)
    def flow(ctx):
        user = yield step.run("fetch", calls.hit, "fetch")
        yield step.sleep("settle", "1s")
        charged = yield step.run("charge", _charge, calls, 10)
        after = yield step.run("receipt", calls.hit, "receipt")
        return [user, charged, after]

    engine.register(flow)
    rid = engine.start("order")
    idle(engine)
    engine.clock.advance("1s")
    idle(engine)
    assert engine.get_run(rid).status == "failed"
    assert calls.counts == {"fetch": 1, "charge": 1}

    monkeypatch.setitem(BROKEN, "charge", False)
    engine.resume(rid)
    assert engine.get_run(rid).status != "failed"
    idle(engine)
    run = engine.get_run(rid)
    assert run.status == "completed", run.error
    assert run.output == ["fetch", {"charged": 10}, "receipt"]
    assert run.error is None
    assert calls.counts == {"fetch": 1, "charge": 2, "receipt": 1}
    assert any(isinstance(e, RunResumed) for e in engine.history(rid))
    decision = replay(flow, engine.history(rid))
    assert decision.done and decision.output == run.output


def test_resume_in_a_new_engine_after_restart(db, clock, calls, monkeypatch):
    monkeypatch.setitem(BROKEN, "charge", True)

    @ironflow.function(id="order2", retry=NO_RETRY)
    def flow(ctx):
        yield step.run("fetch", calls.hit, "fetch")
        return (yield step.run("charge", _charge, calls, 5))

    one = Engine(db, clock=clock)
    one.register(flow)
    rid = one.start("order2")
    idle(one)
    assert one.get_run(rid).status == "failed"
    one.close()

    monkeypatch.setitem(BROKEN, "charge", False)
    two = Engine(db, clock=clock)
    two.register(flow)
    two.resume(rid)
    idle(two)
    assert two.get_run(rid).output == {"charged": 5}
    assert calls.counts == {"fetch": 1, "charge": 2}
    two.close()


def test_resume_of_a_run_that_is_not_failed_or_blocked_is_an_error(engine):
    @ironflow.function(id="fine")
    def flow(ctx):
        return "ok"
        yield

    engine.register(flow)
    rid = engine.start("fine")
    idle(engine)
    with pytest.raises(ValueError, match="completed"):
        engine.resume(rid)
    with pytest.raises(KeyError, match="nope"):
        engine.resume("nope")


# --- blocked runs -------------------------------------------------------------------------------


def _fetch(calls):
    calls.hit("fetch")
    return {"id": 1}


def _audit(calls):
    calls.hit("audit")
    return "audited"


def _ship(calls):
    calls.hit("ship")
    return "shipped"


def test_changed_code_blocks_the_run_and_a_fix_resumes_it(db, clock, calls):
    @ironflow.function(id="versioned")
    def v1(ctx):
        user = yield step.run("fetch", _fetch, calls)
        yield step.wait_for_event("go", "go", timeout="1d")
        shipped = yield step.run("ship", _ship, calls)
        return {"user": user, "shipped": shipped, "version": 1}

    @ironflow.function(id="versioned")
    def v2(ctx):  # inserted a step before the recorded one: replay diverges
        yield step.run("audit", _audit, calls)
        user = yield step.run("fetch", _fetch, calls)
        yield step.wait_for_event("go", "go", timeout="1d")
        shipped = yield step.run("ship", _ship, calls)
        return {"user": user, "shipped": shipped, "version": 2}

    @ironflow.function(id="versioned")
    def v3(ctx):  # the fix: the new step only where history allows it
        if ctx.patched("audit-first"):
            yield step.run("audit", _audit, calls)
        user = yield step.run("fetch", _fetch, calls)
        yield step.wait_for_event("go", "go", timeout="1d")
        shipped = yield step.run("ship", _ship, calls)
        return {"user": user, "shipped": shipped, "version": 3}

    one = Engine(db, clock=clock)
    one.register(v1)
    rid = one.start("versioned")
    idle(one)
    assert one.get_run(rid).status == "waiting"
    one.close()
    assert calls.counts == {"fetch": 1}

    two = Engine(db, clock=clock)
    two.register(v2)
    two.emit("go")
    idle(two)
    run = two.get_run(rid)
    assert run.status == "blocked"
    assert run.error.type == "ironflow.errors.NonDeterminismError"
    message = run.error.message
    assert "recorded" in message and "current" in message
    assert "'fetch'" in message and "'audit'" in message
    assert calls.counts == {"fetch": 1}  # nothing executed
    history_len = len(two.history(rid))
    with pytest.raises(NonDeterminismError):
        two.wait(rid)
    idle(two)  # a blocked run is not retried hot
    assert two.get_run(rid).status == "blocked" and len(two.history(rid)) == history_len
    two.close()

    three = Engine(db, clock=clock)
    three.register(v3)
    three.resume(rid)
    idle(three)
    run = three.get_run(rid)
    assert run.status == "completed", run.error
    assert run.output == {"user": {"id": 1}, "shipped": "shipped", "version": 3}
    assert calls.counts == {"fetch": 1, "ship": 1}
    three.close()


# --- scale --------------------------------------------------------------------------------------


def _inc(x):
    return x + 1


def test_thousand_step_sequential_run(engine):
    @ironflow.function(id="long")
    def flow(ctx):
        value = 0
        for i in range(1000):
            value = yield step.run(f"s{i}", _inc, value)
        return value

    engine.register(flow)
    began = time.monotonic()
    rid = engine.start("long")
    idle(engine, timeout=60)
    assert engine.get_run(rid).output == 1000
    assert len(engine.history(rid)) == 2 * 1000 + 2
    assert time.monotonic() - began < 30


def test_thousand_branch_map(engine):
    @ironflow.function(id="wide")
    def flow(ctx):
        return (yield step.map("m", range(1000), lambda item, s, i: s.run("inc", _inc, item)))

    engine.register(flow)
    began = time.monotonic()
    rid = engine.start("wide")
    idle(engine, timeout=60)
    assert engine.get_run(rid).output == list(range(1, 1001))
    assert time.monotonic() - began < 30


# --- bad input ----------------------------------------------------------------------------------


@ironflow.function(id="target", on="thing")
def _target(ctx):
    return ctx.event.data
    yield


def test_start_unknown_function_names_it_and_writes_nothing(engine):
    engine.register(_target)
    with pytest.raises(ValueError, match="'nope'") as info:
        engine.start("nope", {"x": 1})
    assert "target" in str(info.value)  # lists what is registered
    with pytest.raises(ValueError):
        engine.start("", {"x": 1})
    assert engine.list_runs() == []
    assert table_count(engine, "history") == 0


@pytest.mark.parametrize(
    "data",
    [object(), {"when": {1, 2}}, {"x": float("nan")}, [float("inf")], {1: "int key"}, b"bytes"],
    ids=["object", "set", "nan", "inf", "int-key", "bytes"],
)
def test_non_json_data_is_refused_and_nothing_written(engine, data):
    engine.register(_target)
    with pytest.raises(TypeError, match="start data"):
        engine.start("target", data)
    with pytest.raises(TypeError, match="'thing'"):
        engine.emit("thing", data)
    assert engine.list_runs() == []
    assert table_count(engine, "events") == 0
    assert table_count(engine, "history") == 0


@pytest.mark.parametrize("name", ["", "   ", None, 7])
def test_bad_event_name_is_refused(engine, name):
    engine.register(_target)
    with pytest.raises(ValueError, match="event name"):
        engine.emit(name, {})
    assert table_count(engine, "events") == 0
    assert engine.list_runs() == []


def test_bad_idempotency_key_and_run_id(engine):
    engine.register(_target)
    with pytest.raises(ValueError, match="idempotency key"):
        engine.emit("thing", {}, idempotency_key="")
    with pytest.raises(ValueError, match="run id"):
        engine.start("target", {}, run_id="")
    assert table_count(engine, "events") == 0
    assert engine.list_runs() == []


def test_register_rejects_undeclared_functions(engine):
    def plain(ctx):
        yield step.sleep("x", "1s")

    with pytest.raises(TypeError, match=r"ironflow\.function"):
        engine.register(plain)
    with pytest.raises(TypeError):
        engine.register(lambda ctx: None)


@pytest.mark.parametrize(
    "url",
    ["mysql://x/y", "", "   ", "sqlite://"],
)
def test_bad_store_urls_are_refused_and_create_nothing(tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError) as info:
        Engine(url, clock=VirtualClock())
    assert repr(url) in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgres_url_opens_the_postgresql_store(tmp_path, monkeypatch, scheme):
    # Port 1 on loopback: nothing listens, so the PostgreSQL store's own error is what we see.
    monkeypatch.chdir(tmp_path)
    url = f"{scheme}://user:secret@127.0.0.1:1/app?connect_timeout=1"
    with pytest.raises(StoreError) as info:
        Engine(url)
    assert "cannot connect to the PostgreSQL database" in str(info.value)
    assert f"{scheme}://user:***@127.0.0.1:1/app" in str(info.value)
    assert "secret" not in str(info.value)
    assert os.listdir(tmp_path) == []


def _file_state(path):
    with open(path, "rb") as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
    return digest, sorted(os.listdir(os.path.dirname(path)))


def test_foreign_sqlite_file_is_refused_and_left_untouched(tmp_path):
    path = str(tmp_path / "app.db")
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users VALUES (1, 'ada')")
    conn.commit()
    conn.close()
    before = _file_state(path)

    with pytest.raises(StoreError, match="not an ironflow") as info:
        Engine(path, clock=VirtualClock())
    assert path in str(info.value) and "users" in str(info.value)
    assert isinstance(info.value, ValueError)

    conn = sqlite3.connect(path)
    tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
    conn.close()
    assert tables == ["users"]
    assert mode == "delete"  # not switched to WAL
    assert _file_state(path) == before


def test_non_sqlite_file_is_refused_naming_it(tmp_path):
    path = str(tmp_path / "notes.db")
    with open(path, "w") as fh:
        fh.write("these are my notes, not a database\n" * 50)
    before = _file_state(path)
    with pytest.raises(ValueError) as info:
        Engine(path, clock=VirtualClock())
    assert path in str(info.value)
    assert _file_state(path) == before


def test_store_in_missing_directory_names_the_path(tmp_path):
    path = str(tmp_path / "no-such-dir" / "x.db")
    with pytest.raises(ValueError) as info:
        Engine(path, clock=VirtualClock())
    assert path in str(info.value)


def test_sqlite_url_and_reopening_the_same_file(tmp_path, clock):
    path = tmp_path / "via-url.db"

    @ironflow.function(id="echo")
    def echo(ctx):
        return ctx.event.data
        yield

    one = Engine(f"sqlite:///{path}", clock=clock)
    one.register(echo)
    rid = one.start("echo", [1, 2])
    idle(one)
    one.close()
    assert path.exists()
    two = Engine(path, clock=clock)  # a Path works too
    assert two.get_run(rid).output == [1, 2]
    two.close()


# --- two engines on one file ------------------------------------------------------------------


def test_a_held_run_is_not_driven_by_a_second_engine(db, clock, calls):
    entered, release = threading.Event(), threading.Event()

    def hold(run_id):
        calls.hit(run_id)
        entered.set()
        assert release.wait(timeout=10)
        return "held"

    @ironflow.function(id="leased")
    def flow(ctx):
        held = yield step.run("hold", hold, ctx.run_id)
        after = yield step.run("after", calls.hit, "after")
        return [held, after]

    a = Engine(db, clock=clock, lease="30s")
    b = Engine(db, clock=clock, lease="30s")
    a.register(flow)
    b.register(flow)
    rid = a.start("leased")
    driver = threading.Thread(target=a.run_until_idle, daemon=True)
    driver.start()
    try:
        assert entered.wait(timeout=10)
        idle(b)
        clock.advance("20s")  # within the lease (and A renews it)
        idle(b)
        assert calls[rid] == 1 and calls["after"] == 0
        assert b.stats["runs_taken"] == 0
    finally:
        release.set()
    driver.join(timeout=10)
    assert not driver.is_alive()
    assert a.get_run(rid).output == ["held", "after"]
    idle(b)
    assert calls[rid] == 1 and calls["after"] == 1
    a.close()
    b.close()


def test_two_engines_in_threads_run_each_step_once(db, clock, calls):
    @ironflow.function(id="shared")
    def flow(ctx):
        a = yield step.run("a", calls.hit, f"{ctx.run_id}:a")
        b = yield step.run("b", calls.hit, f"{ctx.run_id}:b")
        c = yield step.run("c", calls.hit, f"{ctx.run_id}:c")
        return [a, b, c]

    engines = [Engine(db, clock=clock, lease="30s") for _ in range(2)]
    for eng in engines:
        eng.register(flow)
    runs = [engines[0].start("shared", i) for i in range(40)]
    gate = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def work(eng):
        try:
            gate.wait()
            eng.run_until_idle()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(eng,), daemon=True) for eng in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    for eng in engines:
        idle(eng)  # whatever one engine left, either finishes
    for rid in runs:
        run = engines[0].get_run(rid)
        assert run.status == "completed", (rid, run.status, run.error)
        assert run.output == [f"{rid}:a", f"{rid}:b", f"{rid}:c"]
    assert set(calls.counts.values()) == {1}
    assert len(calls.counts) == 3 * len(runs)
    assert sum(eng.stats["steps_executed"] for eng in engines) == 3 * len(runs)
    for eng in engines:
        eng.close()


def test_engines_one_after_another_on_the_same_file(db, clock, calls):
    @ironflow.function(id="relay")
    def flow(ctx):
        first = yield step.run("first", calls.hit, "first")
        yield step.sleep("gap", "1d")
        second = yield step.run("second", calls.hit, "second")
        return [first, second]

    a = Engine(db, clock=clock, lease="30s")
    a.register(flow)
    rid = a.start("relay")
    idle(a)
    b = Engine(db, clock=clock, lease="30s")
    b.register(flow)
    idle(b)
    assert calls.counts == {"first": 1}
    clock.advance("1d")
    idle(b)
    idle(a)
    assert b.get_run(rid).output == ["first", "second"]
    assert calls.counts == {"first": 1, "second": 1}
    a.close()
    b.close()


def test_a_dead_workers_lease_is_honoured_until_it_expires(db, clock, calls):
    @ironflow.function(id="orphan")
    def flow(ctx):
        return (yield step.run("work", calls.hit, "work"))

    engine = Engine(db, clock=clock, lease="30s")
    engine.register(flow)
    rid = engine.start("orphan")
    # Simulate a worker in another process that took the run and then died.
    until = int((clock.now() + _dt.timedelta(seconds=30)).timestamp() * 1_000_000)
    with engine.store.transaction() as conn:
        conn.execute(
            "UPDATE runs SET lease_owner = 'dead-host:1:deadbeef', lease_until_us = ? WHERE id = ?",
            (until, rid),
        )
    idle(engine)
    clock.advance("29s")
    idle(engine)
    assert calls["work"] == 0 and engine.get_run(rid).status == "pending"
    clock.advance("2s")
    idle(engine)
    assert engine.get_run(rid).output == "work"
    assert calls["work"] == 1
    engine.close()


def test_a_run_that_blocks_does_not_hold_back_the_others_in_its_batch(tmp_path):
    """Runs driven in one transaction: the diverging one is parked as blocked, the batch is
    rolled back and driven again without it, and the healthy runs finish."""
    path = str(tmp_path / "batch.db")
    clock = VirtualClock()

    def note(x):
        return x

    @ironflow.function(id="versioned")
    def old(ctx):
        yield step.sleep("nap", "1h")
        return (yield step.run("old-step", note, 1))

    first = Engine(path, clock=clock)
    first.register(old)
    stuck = first.start("versioned")
    first.run_until_idle()
    first.close()

    @ironflow.function(id="versioned")
    def new(ctx):
        yield step.run("new-step", note, 2)  # the recorded sleep is no longer first
        return None

    @ironflow.function(id="healthy")
    def healthy(ctx):
        yield step.sleep("nap", "1h")
        return (yield step.run("fine", note, 3))

    second = Engine(path, clock=clock)
    second.register(new)
    second.register(healthy)
    fine = [second.start("healthy") for _ in range(3)]
    second.run_until_idle()
    clock.advance("1h")  # both kinds of run are due in the same tick
    second.run_until_idle()
    blocked = second.get_run(stuck)
    assert blocked.status == "blocked"
    assert "recorded" in blocked.error.message and "nap" in blocked.error.message
    assert [second.get_run(run_id).output for run_id in fine] == [3, 3, 3]
    second.close()


def test_a_run_blocked_at_its_first_drive_keeps_its_run_started_event(engine, monkeypatch):
    @ironflow.function(id="explodes")
    def explodes(ctx):
        return (yield step.run("one", str, 1))

    feed = Interpreter.feed

    def exploding_feed(self, events):
        if self.function_id == "explodes":  # as an interpreter bug would, on the first drive
            raise RuntimeError("interpreter bug")
        return feed(self, events)

    monkeypatch.setattr(Interpreter, "feed", exploding_feed)
    engine.register(explodes)
    run_id = engine.start("explodes")
    idle(engine)
    assert engine.get_run(run_id).status == "blocked"
    assert "interpreter bug" in engine.get_run(run_id).error.message
    monkeypatch.undo()
    _, stored = engine.store.history(run_id)  # what is written, not what history() shows
    assert [(event.seq, type(event).__name__) for event in stored] == [(0, "RunStarted")]
    engine.cancel(run_id)
    kinds = [type(event).__name__ for event in engine.history(run_id)]
    assert kinds == ["RunStarted", "RunCancelled"]
    assert engine.get_run(run_id).status == "cancelled"


def test_a_round_that_fails_to_commit_is_driven_again_in_full(engine, calls, monkeypatch):
    """A transaction that fails (here: at its commit) rolls back whole: the next drive
    decides the same steps again and must start them (nothing was marked in flight)."""
    transaction = type(engine.store.transaction())  # the store's (not entered: no BEGIN)

    @ironflow.function(id="one")
    def one(ctx):
        return (yield step.run("only", calls.hit, "only"))

    engine.register(one)
    runs = [engine.start("one") for _ in range(3)]
    write = transaction.commit_round
    failures = []

    def busy_once(self, batch, owner):
        if batch.jobs and not failures:
            failures.append(1)
            raise OSError("database is locked")
        return write(self, batch, owner)

    monkeypatch.setattr(transaction, "commit_round", busy_once)
    with pytest.raises(OSError, match="locked"):
        engine.run_until_idle()
    assert calls.counts == {}  # nothing started from the rolled-back round
    monkeypatch.undo()
    idle(engine)
    assert [engine.get_run(run_id).output for run_id in runs] == ["only"] * 3
    assert calls.counts == {"only": 3}
