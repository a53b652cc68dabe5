"""Issue 10, the engine's API at its boundaries: bad arguments, ids, registrations, a closed
engine, child runs that cannot start or time out, and golden replays of the wrong history.

Each test fails on the code before the fix: it asserts the refusal and its message.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import ironflow
from ironflow import Engine, InvokeError, IronflowError, RetryPolicy, StoreError, step
from ironflow.cli import cli
from ironflow.history import dumps
from ironflow.history.events import ErrorInfo
from ironflow.interpreter.primitives.invoke import INVOKE_TIMEOUT, _span
from ironflow.runtime import STATUSES
from ironflow.runtime import engine as engine_module
from ironflow.testing import VirtualClock
from ironflow.testing import replay as golden_replay

NO_RETRY = RetryPolicy(max_attempts=1)


def add(a: int, b: int) -> int:
    return a + b


@ironflow.function(id="kid")
def kid(ctx: Any) -> Any:
    return (yield step.run("add", add, 1, ctx.event.data or 0))


@ironflow.function(id="other")
def other(ctx: Any) -> Any:
    yield step.sleep("nap", "1d")
    return "other"


@ironflow.function(id="parent")
def parent(ctx: Any) -> Any:
    return (yield step.invoke("kid", "kid", 41))


# --- item 2: a chosen run id never takes a child's ------------------------------------------


def test_start_refuses_a_run_id_with_a_slash_so_it_cannot_take_a_childs_id(
    engine: Engine,
) -> None:
    for fn in (kid, other, parent):
        engine.register(fn)
    with pytest.raises(ValueError) as info:
        engine.start("other", run_id="P/kid")
    message = str(info.value)
    assert "run id 'P/kid' contains '/'" in message
    assert "reserved for the ids of child runs" in message
    assert engine.list_runs() == []  # nothing stored
    # The run that would have waited forever for someone else's run now gets its own child.
    assert engine.start("parent", run_id="P") == "P"
    engine.run_until_idle()
    assert engine.get_run("P").output == 42
    assert engine.get_run("P/kid").function == "kid"


@pytest.mark.parametrize("bad", ["", "   ", 5, b"r1"])
def test_start_refuses_empty_and_non_string_run_ids(engine: Engine, bad: Any) -> None:
    engine.register(other)
    with pytest.raises(ValueError, match="run id must be a non-empty string"):
        engine.start("other", run_id=bad)
    assert engine.list_runs() == []


def test_an_invoke_whose_child_id_is_taken_fails_instead_of_waiting_forever(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database written by a version that allowed '/' in chosen ids may hold such a run."""
    for fn in (kid, other, parent):
        engine.register(fn)
    with monkeypatch.context() as patch:
        patch.setattr(engine_module, "check_run_id", lambda run_id: run_id)
        engine.start("other", run_id="P/kid")
    engine.start("parent", run_id="P")
    engine.run_until_idle()
    run = engine.get_run("P")
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ironflow.errors.InvokeError"
    assert "the child run id 'P/kid' is taken by another run (of 'other')" in run.error.message
    assert engine.get_run("P/kid").function == "other"  # the other run is left alone


def test_cli_start_refuses_a_run_id_with_a_slash_before_opening_the_database(
    app: Any, tmp_path: Path
) -> None:
    result = app.cli("start", "alpha", "--app", app.spec, "--run-id", "a/b", "--db", "new.db")
    assert_bad_input(result, "run id 'a/b' contains '/'", "reserved for the ids of child runs")
    assert not (tmp_path / "new.db").exists()


# --- item 3: the constructor checks every argument -----------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "fragment"),
    [
        ({"max_workers": -3}, ValueError, "max_workers must be a positive int"),
        ({"max_workers": 0}, ValueError, "got 0"),
        ({"max_workers": True}, ValueError, "got True"),
        ({"max_workers": 2.5}, ValueError, "got 2.5"),
        ({"max_workers": "4"}, ValueError, "got '4'"),
        ({"poll": 0}, ValueError, "poll must be positive and finite, got 0"),
        ({"poll": "-1s"}, ValueError, "invalid poll '-1s'"),
        ({"lease": -5}, ValueError, "lease must be positive and finite, got -5"),
        ({"lease": "soon"}, ValueError, "invalid lease 'soon'"),
        ({"durability": "fast"}, ValueError, "durability must be 'full' or 'normal', got 'fast'"),
        ({"durability": ["full"]}, ValueError, "got ['full']"),
        ({"clock": object()}, TypeError, "clock must have a now() method"),
    ],
)
def test_engine_refuses_bad_arguments_before_opening_the_database(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], fragment: str
) -> None:
    path = tmp_path / "never.db"
    with pytest.raises(error) as info:
        Engine(str(path), **kwargs)
    assert fragment in str(info.value)
    assert not path.exists()


def test_engine_takes_good_arguments(tmp_path: Path) -> None:
    engine = Engine(
        str(tmp_path / "ok.db"),
        clock=VirtualClock(),
        durability="normal",
        lease="10s",
        max_workers=1,
        poll=0.5,
    )
    try:
        engine.register(kid)
        run_id = engine.start("kid", 1)
        engine.run_until_idle()
        assert engine.get_run(run_id).output == 2
        assert engine.poll == 0.5 and engine.lease.total_seconds() == 10
    finally:
        engine.close()


# --- item 7: invoke_async of an unknown function fails at its yield -------------------------


@ironflow.function(id="fire-and-forget", retry=NO_RETRY)
def fire_and_forget(ctx: Any) -> Any:
    try:
        child = yield step.invoke_async("notify", "notifier", {"to": "ada"})
    except InvokeError as error:
        return {"error": str(error), "function": error.function_id, "child": error.child_run_id}
    return {"child": child}


@ironflow.function(id="fire-uncaught")
def fire_uncaught(ctx: Any) -> Any:
    return (yield step.invoke_async("notify", "notifier", {"to": "ada"}))


@ironflow.function(id="notifier")
def notifier(ctx: Any) -> Any:
    return (yield step.run("send", add, 1, 1))


def test_invoke_async_of_an_unregistered_function_fails_like_invoke(engine: Engine) -> None:
    engine.register(fire_and_forget)
    run_id = engine.start("fire-and-forget")
    engine.run_until_idle()
    output = engine.get_run(run_id).output
    assert output == {
        "error": f"child run '{run_id}/notify' of 'notifier' failed: LookupError: unknown "
        f"function 'notifier'; registered functions: fire-and-forget",
        "function": "notifier",
        "child": f"{run_id}/notify",
    }
    assert [run.id for run in engine.list_runs()] == [run_id]  # no child left pending


def test_invoke_async_of_an_unregistered_function_uncaught_fails_the_run_and_resumes(
    db: str, clock: VirtualClock
) -> None:
    engine = Engine(db, clock=clock)
    engine.register(fire_uncaught)
    run_id = engine.start("fire-uncaught")
    engine.run_until_idle()
    run = engine.get_run(run_id)
    assert run.status == "failed"
    assert run.error is not None and run.error.type == "ironflow.errors.InvokeError"
    assert "unknown function 'notifier'" in run.error.message
    with pytest.raises(InvokeError, match="unknown function 'notifier'"):
        engine.wait(run_id)
    engine.close()
    # Deploy with the function registered and resume: the child starts this time.
    engine = Engine(db, clock=clock)
    engine.register(fire_uncaught)
    engine.register(notifier)
    engine.resume(run_id)
    engine.run_until_idle()
    assert engine.get_run(run_id).output == f"{run_id}/notify"
    assert engine.get_run(f"{run_id}/notify").output == 2
    engine.close()


# --- item 8: one function per id ------------------------------------------------------------


def test_registering_another_function_under_a_taken_id_is_refused(engine: Engine) -> None:
    @ironflow.function(id="greet", on="user.created")
    def greet_v1(ctx: Any) -> Any:
        return (yield step.run("add", add, 1, 1))

    @ironflow.function(id="greet")
    def greet_v2(ctx: Any) -> Any:
        return (yield step.run("add", add, 2, 2))

    assert engine.register(greet_v1) is greet_v1
    with pytest.raises(ValueError) as info:
        engine.register(greet_v2)
    message = str(info.value)
    assert "function id 'greet' is already registered with this engine" in message
    assert "greet_v1" in message and "use a new Engine to replace it" in message
    # The first one and its trigger are still there.
    assert engine.functions["greet"] is greet_v1
    [run_id] = engine.emit("user.created")
    engine.run_until_idle()
    assert engine.get_run(run_id).output == 2


def test_registering_the_same_function_twice_changes_nothing(engine: Engine) -> None:
    assert engine.register(kid) is kid
    assert engine.register(kid) is kid
    assert engine.functions == {"kid": kid}


# --- item 12: a timed-out invoke says so ------------------------------------------------------


@ironflow.function(id="slow")
def slow(ctx: Any) -> Any:
    yield step.sleep("work", "2h")
    return "late"


@ironflow.function(id="impatient")
def impatient(ctx: Any) -> Any:
    try:
        return (yield step.invoke("report", slow, timeout="1h"))
    except InvokeError as error:
        return {"error": str(error), "child": error.child_run_id, "cause": repr(error.__cause__)}


def test_a_timed_out_invoke_says_it_timed_out_and_that_the_child_goes_on(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(slow)
    engine.register(impatient)
    run_id = engine.start("impatient")
    engine.run_until_idle()
    clock.advance("1h")
    engine.run_until_idle()
    child = f"{run_id}/report"
    assert engine.get_run(run_id).output == {
        "error": f"invoke 'report' of 'slow' timed out after 1h; the child run {child!r} goes on",
        "child": child,
        "cause": repr(
            TimeoutError(
                f"invoke 'report' of 'slow' timed out after 1h; the child run {child!r} goes on"
            )
        ),
    }
    assert engine.get_run(child).status == "waiting"  # not cancelled, as the message says
    clock.advance("1h")
    engine.run_until_idle()
    assert engine.get_run(child).output == "late"
    assert engine.get_run(run_id).status == "completed"


@ironflow.function(id="branchy")
def branchy(ctx: Any) -> Any:
    """Branches on the invoke's message, as a workflow may: a replay must see the same text."""
    try:
        return (yield step.invoke("report", slow, timeout="1h"))
    except InvokeError as error:
        message = str(error)
        if "timed out after" in message:
            yield step.run("on-timeout", len, message)
        else:
            yield step.run("on-failed", len, message)
        return {"error": message, "cause": repr(error.__cause__)}


def test_a_timed_out_invoke_records_its_message_and_replays_to_it(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(slow)
    engine.register(branchy)
    run_id = engine.start("branchy")
    engine.run_until_idle()
    clock.advance("1h")
    engine.run_until_idle()
    child = f"{run_id}/report"
    message = f"invoke 'report' of 'slow' timed out after 1h; the child run {child!r} goes on"
    live = engine.get_run(run_id).output
    assert live == {"error": message, "cause": repr(TimeoutError(message))}
    history = engine.history(run_id)
    [failed] = [e for e in history if type(e).__name__ == "ChildFailed"]
    assert failed.error == ErrorInfo("TimeoutError", message)  # the text is recorded
    assert [e.id for e in history if type(e).__name__ == "CommandScheduled"] == [
        "report",
        "on-timeout",
    ]
    decision = golden_replay(branchy, dumps(history))
    assert decision.done and decision.output == live


def test_a_history_recorded_with_the_old_timeout_error_replays_to_the_old_message() -> None:
    # Earlier engines recorded INVOKE_TIMEOUT and the run saw the generic "failed" text: such a
    # history must replay to that text (and the branch it took), not to today's wording.
    old = "child run 'P/report' of 'slow' failed: TimeoutError: invoke timed out"
    ts = "2026-01-01T00:00:00+00:00"
    later = "2026-01-01T01:00:00+00:00"
    error = {"type": "TimeoutError", "message": "invoke timed out", "traceback": None}
    history = [
        {"type": "RunStarted", "seq": 0, "ts": ts, "run_id": "P", "function_id": "branchy",
         "event": {"id": "e1", "name": "branchy", "data": None, "ts": ts},
         "parent_run_id": None},
        {"type": "CommandScheduled", "seq": 1, "ts": ts, "id": "report", "kind": "invoke",
         "name": "report", "scope": "", "fingerprint": "slow",
         "detail": {"due": later, "function": "slow", "data": None, "child_run_id": "P/report"}},
        {"type": "ChildStarted", "seq": 2, "ts": ts, "id": "report", "child_run_id": "P/report"},
        {"type": "ChildFailed", "seq": 3, "ts": later, "id": "report",
         "child_run_id": "P/report", "error": error},
        {"type": "CommandScheduled", "seq": 4, "ts": later, "id": "on-failed", "kind": "run",
         "name": "on-failed", "scope": "", "fingerprint": "len", "detail": {"max_attempts": 3}},
        {"type": "StepCompleted", "seq": 5, "ts": later, "id": "on-failed", "attempt": 1,
         "result": len(old)},
    ]  # fmt: skip
    assert ErrorInfo(**error) == INVOKE_TIMEOUT
    decision = golden_replay(branchy, json.dumps(history))
    assert decision.done
    assert decision.output == {"error": old, "cause": repr(TimeoutError("invoke timed out"))}


@pytest.mark.parametrize(
    ("seconds", "spelled"),
    [(3600, "1h"), (90, "1m30s"), (93600, "1d2h"), (1.5, "1.5s"), (0.25, "0.25s"), (7, "7s")],
)
def test_durations_in_messages_are_spelled_as_the_builders_take_them(
    seconds: float, spelled: str
) -> None:
    assert _span(_dt.timedelta(seconds=seconds)) == spelled


# --- item 13: a closed engine says so -------------------------------------------------------


CALLS_AFTER_CLOSE = {
    "register": lambda e: e.register(other),
    "start": lambda e: e.start("kid"),
    "emit": lambda e: e.emit("anything"),
    "run_until_idle": lambda e: e.run_until_idle(),
    "serve": lambda e: e.serve(install_signals=False),
    "wait": lambda e: e.wait("r1", timeout=1),
    "get_run": lambda e: e.get_run("r1"),
    "list_runs": lambda e: e.list_runs(),
    "history": lambda e: e.history("r1"),
    "cancel": lambda e: e.cancel("r1"),
    "resume": lambda e: e.resume("r1"),
}


@pytest.mark.parametrize("method", sorted(CALLS_AFTER_CLOSE))
def test_every_method_of_a_closed_engine_says_it_is_closed(db: str, method: str) -> None:
    engine = Engine(db)
    engine.register(kid)
    engine.close()
    engine.close()  # closing twice is fine
    with pytest.raises(StoreError) as info:
        CALLS_AFTER_CLOSE[method](engine)
    assert str(info.value) == f"the engine on {db} is closed; open a new Engine to use it again"
    assert isinstance(info.value, IronflowError)
    assert engine.functions == {"kid": kid}  # register() changed nothing


# --- item 14: list_runs filters, golden replays of the wrong history ------------------------


def test_list_runs_refuses_an_unknown_status_and_a_bad_limit(engine: Engine) -> None:
    with pytest.raises(ValueError) as info:
        engine.list_runs(status="bogus")
    assert str(info.value) == (
        "unknown run status 'bogus'; a run is one of: " + ", ".join(STATUSES)
    )
    for limit in (0, -1, "5", 2.0):
        with pytest.raises(
            ValueError, match=f"limit must be a positive int or None, got {limit!r}"
        ):
            engine.list_runs(limit=limit)
    with pytest.raises(TypeError, match="function must be a function id"):
        engine.list_runs(function=5)  # type: ignore[arg-type]


def test_list_runs_takes_a_declared_function_as_its_id(engine: Engine) -> None:
    engine.register(kid)
    run_id = engine.start("kid", 1)
    assert [run.id for run in engine.list_runs(function=kid)] == [run_id]


def test_golden_replay_of_an_empty_history_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as info:
        golden_replay(kid, "[]")
    assert str(info.value).startswith(
        "the history is empty: a history starts with a RunStarted event"
    )
    with pytest.raises(ValueError, match="the history is empty"):
        golden_replay(kid, [])
    empty = tmp_path / "empty.json"
    empty.write_text('{"events": []}')
    for source in (empty, str(empty)):
        with pytest.raises(
            ValueError, match=f"^{re.escape(str(empty))} is empty: a history starts with"
        ):
            golden_replay(kid, source)


def test_golden_replay_of_another_functions_history_says_the_functions_differ(
    engine: Engine,
) -> None:
    engine.register(kid)
    run_id = engine.start("kid", 1)
    engine.run_until_idle()
    history = engine.history(run_id)
    assert golden_replay(kid, history).output == 2
    with pytest.raises(ValueError) as info:
        golden_replay(other, dumps(history))
    assert str(info.value) == (
        "the history is a run of function 'kid', not of 'other': the functions differ; "
        "replay it with the function 'kid'"
    )
    # A plain generator function has no id: it may replay any function's history.
    assert golden_replay(kid.fn, history).output == 2


# --- item 14: the CLI's replay ------------------------------------------------------------------


APP = """
import os

import ironflow
from ironflow import Engine, step


def add(a, b):
    return a + b


@ironflow.function(id="alpha")
def alpha(ctx):
    return (yield step.run("add", add, 1, 2))


@ironflow.function(id="beta")
def beta(ctx):
    return (yield step.run("add", add, 1, 2))


engine = Engine(os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.db"))
engine.register(alpha)
"""


class App:
    def __init__(self, root: Path, name: str) -> None:
        self.root = root
        self.name = name
        self.spec = f"{name}:engine"
        self.module = importlib.import_module(name)

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    name = f"sharpapp_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(APP)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("IRONFLOW_DB", raising=False)
    monkeypatch.delenv("IRONFLOW_APP", raising=False)
    loaded = App(tmp_path, name)
    yield loaded
    loaded.module.engine.close()
    sys.modules.pop(name, None)


def assert_bad_input(result: Result, *fragments: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("ironflow: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_cli_replay_of_another_functions_history_says_the_functions_differ(
    app: Any, tmp_path: Path
) -> None:
    engine = app.module.engine
    run_id = engine.start("alpha")
    engine.run_until_idle()
    golden = tmp_path / "alpha.json"
    golden.write_text(dumps(engine.history(run_id)))
    assert app.cli("replay", app.spec, str(golden)).exit_code == 0
    result = app.cli("replay", f"{app.name}:beta", str(golden))
    assert_bad_input(
        result,
        f"{golden} is a run of function 'alpha', but {app.name}:beta declares 'beta': the "
        f"functions differ; replay it with the app that declares 'alpha'",
    )


def test_cli_replay_of_an_empty_history_is_refused(app: Any, tmp_path: Path) -> None:
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    result = app.cli("replay", app.spec, str(empty))
    assert_bad_input(result, f"{empty} is empty: a history starts with a RunStarted event")


# --- item 15: StoreError is an IronflowError, exported ------------------------------------------


def test_store_error_is_an_ironflow_error_exported_from_ironflow(tmp_path: Path) -> None:
    assert "StoreError" in ironflow.__all__
    assert ironflow.StoreError is ironflow.errors.StoreError is ironflow.runtime.StoreError
    assert issubclass(StoreError, IronflowError)
    assert issubclass(StoreError, ValueError)  # what it was before: old handlers still catch it
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all, just some bytes" * 100)
    with pytest.raises(IronflowError) as info:
        Engine(str(junk))
    assert type(info.value) is StoreError


def test_importing_store_error_loads_no_storage() -> None:
    code = (
        "import sys, json; from ironflow import StoreError; "
        "print(json.dumps([m for m in ('sqlite3', 'ironflow.runtime') if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
