"""The typed form ``x = yield from step.run(...)`` (issue 10, item 21).

Commands are iterable: ``__iter__`` yields the command and returns what is sent back. So
``yield from`` records exactly the history a bare ``yield`` does, and a type checker gives
``x`` the type of what the step returns. One test runs mypy on a small typed workflow.
"""

from __future__ import annotations

import datetime as _dt
import textwrap
from collections.abc import Generator
from pathlib import Path
from typing import Any

import attrs
import pytest
from harness import Sim

import ironflow
from ironflow import Context, Engine, Event, step
from ironflow.commands import RunStep, Sleep, WaitEvent
from ironflow.errors import WaitTimeoutError
from ironflow.history import CommandScheduled
from ironflow.interpreter import replay
from ironflow.testing import VirtualClock


def fetch(n: int) -> str:
    return f"item-{n}"


async def fetch_async(n: int) -> int:
    return n * 10


def charge(amount: int) -> dict[str, int]:
    if amount > 100:
        raise ValueError(f"declined: {amount}")
    return {"charged": amount}


def refund(amount: int) -> None:
    return None


def test_a_command_yields_itself_and_returns_what_is_sent_back() -> None:
    command = step.run("f", fetch, 1)
    it = iter(command)
    assert next(it) is command
    with pytest.raises(StopIteration) as stop:
        it.send("item-1")
    assert stop.value.value == "item-1"
    # An error thrown in (a failed step) comes out of the `yield from` unchanged.
    it = iter(step.wait_for_event("w", "go"))
    next(it)
    with pytest.raises(WaitTimeoutError, match="timed out"):
        it.throw(WaitTimeoutError("waitForEvent timed out"))


def test_commands_stay_frozen_and_run_step_stays_the_class_the_interpreter_checks() -> None:
    command = step.run("f", fetch, 1)
    assert type(command) is RunStep  # the interpreter's fast path tests `type(c) is RunStep`
    assert RunStep[str]("f", fetch) == RunStep("f", fetch)
    with pytest.raises(AttributeError):
        command.name = "g"  # type: ignore[misc]
    assert isinstance(step.sleep("s", "1s"), Sleep)
    assert isinstance(step.wait_for_event("w", "go"), WaitEvent)


def ten_times(n: int) -> int:
    return n * 10


def _flow(typed: bool, b_fn: Any = ten_times) -> ironflow.Function:
    """The same workflow, written with bare ``yield`` or with ``yield from``, every kind.

    ``b_fn`` is ``fetch_async`` on an engine; the test harness runs steps synchronously.
    """

    def branch(s: Any, n: int) -> Generator[Any, Any, str]:
        if typed:
            got: str = yield from s.run("fetch", fetch, n)
        else:
            got = yield s.run("fetch", fetch, n)
        return got

    def per_item(item: int, s: Any, index: int) -> Any:
        return s.run("double", fetch, item * 2)

    @ironflow.function(id="every-kind")
    def flow(ctx: Context) -> Generator[Any, Any, dict[str, Any]]:
        if typed:
            a = yield from step.run("a", fetch, 1)
            b = yield from step.run("b", b_fn, 2)
            yield from step.sleep("nap", "1h")
            yield from step.sleep_until("until", ctx.now() + _dt.timedelta(days=1))
            try:
                seen: Event | None = yield from step.wait_for_event("w", "go", timeout="1d")
            except WaitTimeoutError:
                seen = None
            branches = yield from step.parallel(
                "p", [lambda s: branch(s, 3), lambda s: s.run("four", fetch, 4)]
            )
            mapped = yield from step.map("m", [5, 6], per_item)
            child = yield from step.invoke("child", "kid", {"x": 1})
            kid_id = yield from step.invoke_async("later", "kid", {"x": 2})
            event_id = yield from step.publish("tell", "told", {"a": a})
            yield from step.compensate("charge", refund, 500)
            try:
                yield from step.run("charge", charge, 500, retry=ironflow.RetryPolicy(1))
            except ValueError as exc:
                declined = str(exc)
        else:
            a = yield step.run("a", fetch, 1)
            b = yield step.run("b", b_fn, 2)
            yield step.sleep("nap", "1h")
            yield step.sleep_until("until", ctx.now() + _dt.timedelta(days=1))
            try:
                seen = yield step.wait_for_event("w", "go", timeout="1d")
            except WaitTimeoutError:
                seen = None
            branches = yield step.parallel(
                "p", [lambda s: branch(s, 3), lambda s: s.run("four", fetch, 4)]
            )
            mapped = yield step.map("m", [5, 6], per_item)
            child = yield step.invoke("child", "kid", {"x": 1})
            kid_id = yield step.invoke_async("later", "kid", {"x": 2})
            event_id = yield step.publish("tell", "told", {"a": a})
            yield step.compensate("charge", refund, 500)
            try:
                yield step.run("charge", charge, 500, retry=ironflow.RetryPolicy(1))
            except ValueError as exc:
                declined = str(exc)
        return {
            "a": a,
            "b": b,
            "seen": None if seen is None else seen.data,
            "branches": branches,
            "mapped": mapped,
            "child": child,
            "kid": kid_id,
            "event": event_id,
            "declined": declined,
        }

    return flow


def test_yield_from_records_the_same_history_and_decisions_as_yield_in_the_interpreter() -> None:
    sims = {}
    for typed in (False, True):
        # Sim checks after every feed that a full replay decides what the live run decided.
        sim = Sim(_flow(typed))
        sim.run_all()
        sim.verify()
        sims[typed] = sim
    bare, typed = sims[False], sims[True]
    assert typed.history == bare.history
    assert [d for _, d in typed.decisions] == [d for _, d in bare.decisions]
    assert replay(_flow(True), bare.history) == replay(_flow(False), typed.history)
    kinds = {e.kind for e in typed.history if isinstance(e, CommandScheduled)}
    assert kinds >= {"run", "sleep", "sleep_until", "wait_event", "parallel", "map"}
    assert kinds >= {"invoke", "invoke_async", "publish", "compensate"}
    assert typed.decision.output["declined"] == "declined: 500"
    assert typed.decision.output["b"] == 20


def _engine_history(typed: bool, tmp_path: Path) -> tuple[Any, list[Any]]:
    @ironflow.function(id="kid")
    def kid(ctx: Context) -> Generator[Any, Any, int]:
        got = yield from step.run("k", fetch_async, ctx.event.data["x"])
        return got

    clock = VirtualClock()
    engine = Engine(str(tmp_path / f"typed-{typed}.db"), clock=clock)
    try:
        engine.register(_flow(typed, fetch_async))
        engine.register(kid)
        run_id = engine.start("every-kind", run_id="r1")
        engine.run_until_idle()
        clock.advance("1h")
        engine.run_until_idle()
        clock.advance("1d")
        engine.run_until_idle()
        assert engine.get_run(run_id).status == "waiting"
        engine.emit("go", {"n": 7}, idempotency_key="go-1")
        engine.run_until_idle()
        run = engine.get_run(run_id)
        assert run.status == "completed", run.error
        return run.output, engine.history(run_id)
    finally:
        engine.close()


def _comparable(history: list[Any]) -> list[Any]:
    # The id of the emitted event a wait matched is random per engine; the rest is equal.
    out = []
    for event in history:
        fields = attrs.asdict(event, recurse=False)
        if isinstance(fields.get("event"), Event):
            fields["event"] = (fields["event"].name, fields["event"].data, fields["event"].ts)
        out.append((type(event).__name__, fields))
    return out


def test_yield_from_records_the_same_history_as_yield_through_an_engine(tmp_path: Path) -> None:
    bare_output, bare = _engine_history(False, tmp_path)
    typed_output, typed = _engine_history(True, tmp_path)
    assert typed_output == bare_output
    assert typed_output["seen"] == {"n": 7}
    assert typed_output["child"] == 10 and typed_output["declined"] == "declined: 500"
    assert _comparable(typed) == _comparable(bare)


def test_ironflow_exports_context_for_annotations() -> None:
    from ironflow.interpreter.context import Context as Ctx

    assert ironflow.Context is Ctx and Context is Ctx
    assert "Context" in ironflow.__all__
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        ironflow.NoSuchName  # type: ignore[attr-defined]  # noqa: B018


TYPED_FLOW = """
from __future__ import annotations

from collections.abc import Generator
from typing import Any

import ironflow
from ironflow import Context, Event, step


def fetch(n: int) -> str:
    return str(n)


async def fetch_async(n: int) -> int:
    return n


@ironflow.function(id="typed")
def typed(ctx: Context) -> Generator[Any, Any, dict[str, Any]]:
    text: str = yield from step.run("f", fetch, 1)
    number: int = yield from step.run("g", fetch_async, 2)
    event: Event = yield from step.wait_for_event("w", "go")
    results: list[Any] = yield from step.parallel("p", [lambda s: s.run("h", fetch, 3)])
    mapped: list[Any] = yield from step.map("m", [1, 2], lambda item, s, i: s.run("x", fetch, item))
    child: Any = yield from step.invoke("i", "other")
    child_id: str = yield from step.invoke_async("j", "other")
    event_id: str = yield from step.publish("k", "done")
    yield from step.sleep("s", "1h")
    yield from step.compensate("f", fetch, 1)
    untyped = yield step.run("bare", fetch, 1)  # a bare yield stays Any
    return {"text": text.upper(), "n": number + 1, "id": event.id, "run": ctx.run_id,
            "rest": [results, mapped, child, child_id, event_id, untyped]}
"""

BAD_FLOW = """
from collections.abc import Generator
from typing import Any

from ironflow import Context, step
from ironflow import NoSuchName


def fetch(n: int) -> str:
    return str(n)


def flow(ctx: Context) -> Generator[Any, Any, int]:
    wrong: int = yield from step.run("f", fetch, 1)
    return wrong
"""


def test_mypy_types_yield_from_and_refuses_unknown_names(tmp_path: Path) -> None:
    api = pytest.importorskip("mypy.api")
    (tmp_path / "typed_flow.py").write_text(textwrap.dedent(TYPED_FLOW), encoding="utf-8")
    (tmp_path / "bad_flow.py").write_text(textwrap.dedent(BAD_FLOW), encoding="utf-8")
    root = Path(ironflow.__file__).resolve().parent.parent
    # This checkout's ironflow (not an installed copy), its own errors not reported.
    config = tmp_path / "mypy.ini"
    config.write_text(
        f"[mypy]\nmypy_path = {root}\n\n[mypy-ironflow.*]\nfollow_imports = silent\n",
        encoding="utf-8",
    )
    stdout, stderr, status = api.run(
        [
            "--strict",
            "--config-file",
            str(config),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--no-error-summary",
            "--hide-error-context",
            "--show-error-codes",
            str(tmp_path / "typed_flow.py"),
            str(tmp_path / "bad_flow.py"),
        ]
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert not [line for line in errors if "typed_flow.py" in line], stdout + stderr
    bad = [line.split("bad_flow.py:", 1)[1] for line in errors if "bad_flow.py" in line]
    assert len(bad) == 2, stdout + stderr
    assert 'Module "ironflow" has no attribute "NoSuchName"' in bad[0]
    assert bad[0].startswith("6:")
    assert bad[1].startswith("14:")
    assert 'expression has type "str", variable has type "int"' in bad[1]
    assert status == 1
