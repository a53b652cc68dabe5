"""Traces through the OpenTelemetry API, checked with the SDK's in-memory exporter (on both
stores): the span tree of a run, its trace across an engine restart, nothing on replay."""

from __future__ import annotations

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from otel_kit import otel  # noqa: F401 - the fixture

import ironflow
from ironflow import Engine, step
from ironflow.runtime.store import LeaseLost, WriteConflict

FAST_RETRY = ironflow.RetryPolicy(max_attempts=3, initial_delay="1s")


def add(a: int, b: int) -> int:
    return a + b


class Flaky:
    """Fails its first call, then returns 1."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("first try fails")
        return 1


@ironflow.function(id="child")
def child(ctx):
    return (yield step.run("c1", add, 1, 1))


def make_parent(flaky: Flaky) -> ironflow.Function:
    @ironflow.function(id="parent", retry=FAST_RETRY)
    def parent(ctx):
        pair = yield step.parallel(
            "p", [lambda s: s.run("left", add, 1, 0), lambda s: s.run("right", add, 2, 0)]
        )
        flaked = yield step.run("flaky", flaky)
        sub = yield step.invoke("sub", child)
        return sum(pair) + flaked + sub

    return parent


def test_span_tree_of_a_run_with_branches_a_retry_and_a_child(otel, engine, clock):  # noqa: F811
    engine.register(make_parent(Flaky()))
    engine.register(child)
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        run_id = engine.start("parent")
    engine.run_until_idle()
    clock.advance("2s")  # the retry delay
    engine.run_until_idle()
    assert engine.wait(run_id) == 6

    spans = otel.finished()
    trace_id = caller.get_span_context().trace_id
    assert {span.context.trace_id for span in spans} == {trace_id}, [s.name for s in spans]
    (start,) = otel.named("start parent")
    assert start.parent.span_id == caller.get_span_context().span_id
    assert start.attributes["ironflow.run_id"] == run_id

    steps = otel.named("step parent/")
    assert sorted((s.name, s.attributes["ironflow.step.attempt"]) for s in steps) == [
        ("step parent/flaky", 1),
        ("step parent/flaky", 2),
        ("step parent/p/0/left", 1),
        ("step parent/p/1/right", 1),
    ]
    for span in steps:  # every attempt is a child of the run's stored context
        assert span.parent.span_id == start.context.span_id
        assert span.attributes["ironflow.run_id"] == run_id
        assert span.attributes["ironflow.function_id"] == "parent"
        assert span.attributes["ironflow.step.id"] == span.name.removeprefix("step parent/")
    failed = [s for s in steps if s.status.status_code is trace.StatusCode.ERROR]
    assert [(s.name, s.attributes["ironflow.step.attempt"]) for s in failed] == [
        ("step parent/flaky", 1)
    ]
    assert "first try fails" in failed[0].status.description

    (invoke,) = otel.named("invoke child")
    assert invoke.parent.span_id == start.context.span_id
    (child_step,) = otel.named("step child/c1")
    assert child_step.parent.span_id == invoke.context.span_id
    assert child_step.attributes["ironflow.run_id"] == f"{run_id}/sub"
    (child_start,) = otel.named("run start child")
    assert [link.context.span_id for link in child_start.links] == [invoke.context.span_id]

    ends = {s.name: s.attributes["ironflow.run.status"] for s in otel.named("run end")}
    assert ends == {"run end parent": "completed", "run end child": "completed"}
    wakes = [s.attributes["ironflow.wake"] for s in otel.named("wake parent")]
    assert wakes == ["child"]


def test_emit_span_is_the_parent_of_the_runs_it_starts(otel, engine):  # noqa: F811
    @ironflow.function(id="on-order", on="order.created")
    def on_order(ctx):
        return (yield step.run("one", add, 1, 2))

    engine.register(on_order)
    (run_id,) = engine.emit("order.created", {"id": 7})
    engine.run_until_idle()
    (emit,) = otel.named("emit order.created")
    assert emit.parent is None  # no caller span: the emit starts the trace
    assert list(emit.attributes["ironflow.run_ids"]) == [run_id]
    (one,) = otel.named("step on-order/one")
    assert one.parent.span_id == emit.context.span_id
    assert one.context.trace_id == emit.context.trace_id


def _two_steps(flaky_log: list[str]) -> ironflow.Function:
    def record(name: str) -> str:
        flaky_log.append(name)
        return name

    @ironflow.function(id="two")
    def two(ctx):
        yield step.run("first", record, "first")
        yield step.sleep("nap", "1h")
        return (yield step.run("second", record, "second"))

    return two


def test_trace_kept_across_an_engine_restart_with_no_spans_on_replay(
    otel,  # noqa: F811
    store_url,
    clock,
):
    log: list[str] = []
    first = Engine(store_url, clock=clock)
    first.register(_two_steps(log))
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        run_id = first.start("two")
    first.run_until_idle()
    assert first.get_run(run_id).status == "waiting"
    first.close()

    clock.advance("2h")
    second = Engine(store_url, clock=clock)  # a new engine: the run is rebuilt by replay
    second.register(_two_steps(log))
    second.run_until_idle()
    assert second.wait(run_id) == "second"
    second.close()

    assert log == ["first", "second"]
    trace_id = caller.get_span_context().trace_id
    (start,) = otel.named("start two")
    steps = otel.named("step two/")
    # One span per execution: the replay of "first" in the second engine reports nothing.
    assert [s.name for s in steps] == ["step two/first", "step two/second"]
    for span in steps:
        assert span.context.trace_id == trace_id
        assert span.parent.span_id == start.context.span_id
    assert [s.name for s in otel.named("run start")] == ["run start two"]
    (wake,) = otel.named("wake two")
    assert wake.attributes["ironflow.wake"] == "timer"
    assert wake.context.trace_id == trace_id


def test_a_cold_rebuild_reports_nothing(otel, engine, clock):  # noqa: F811
    log: list[str] = []
    engine.register(_two_steps(log))
    run_id = engine.start("two")
    engine.run_until_idle()
    assert run_id not in engine._live  # parked on its sleep: the next round rebuilds it
    names = [span.name for span in otel.finished()]
    clock.advance("2h")
    engine.run_until_idle()
    assert engine.wait(run_id) == "second"
    new = [span.name for span in otel.finished()][len(names) :]
    # The rebuild replayed "first" and the run's start: neither is reported again.
    assert sorted(new) == ["run end two", "step two/second", "wake two"]
    assert log == ["first", "second"]


@ironflow.function(id="invoker")
def invoker(ctx):
    return (yield step.invoke("sub", child))


def _refuse_the_invoking_round(monkeypatch, engine, error: Exception) -> list[int]:
    """Make the commit of the first round that starts the child run raise ``error`` (nothing
    of it written), as a database that aborts it would."""
    transaction = type(engine.store.transaction())  # the store's (not entered: no BEGIN)
    write = transaction.commit_round
    refused: list[int] = []

    def refuse_once(self, batch, owner):
        if not refused and any(row[2] == "ChildStarted" for row in batch.history):
            refused.append(1)
            raise error
        return write(self, batch, owner)

    monkeypatch.setattr(transaction, "commit_round", refuse_once)
    return refused


def test_a_round_driven_again_after_a_write_conflict_reports_its_invoke_once(
    otel,  # noqa: F811
    engine,
    monkeypatch,
):
    """The first commit of the round that starts the child is aborted (``WriteConflict``) and
    the round is driven again: only the invoke span of the commit that succeeded is
    reported, and it is the one the child's steps hang from."""
    engine.register(invoker)
    engine.register(child)
    refused = _refuse_the_invoking_round(
        monkeypatch, engine, WriteConflict("deadlock detected; nothing of it was written")
    )
    run_id = engine.start("invoker")
    engine.run_until_idle()
    assert refused == [1]
    assert engine.wait(run_id) == 2
    (invoke,) = otel.named("invoke child")
    (child_step,) = otel.named("step child/c1")
    assert child_step.parent.span_id == invoke.context.span_id
    (child_start,) = otel.named("run start child")
    assert [link.context.span_id for link in child_start.links] == [invoke.context.span_id]
    assert [s.name for s in otel.named("run start")] == ["run start invoker", "run start child"]


def test_a_round_whose_lease_was_lost_reports_nothing_of_it(
    otel,  # noqa: F811
    engine,
    clock,
    monkeypatch,
):
    """The commit of the round that starts the child finds the lease gone (``LeaseLost``):
    nothing of that round is reported; the round that later commits reports its invoke."""
    engine.register(invoker)
    engine.register(child)
    refused = _refuse_the_invoking_round(monkeypatch, engine, LeaseLost("held by w2"))
    run_id = engine.start("invoker")
    engine.run_until_idle()
    assert refused == [1]
    assert otel.named("invoke child") == []
    assert otel.named("run start child") == []
    clock.advance("10m")  # past the lease: the run is taken again
    engine.run_until_idle()
    assert engine.wait(run_id) == 2
    (invoke,) = otel.named("invoke child")
    (child_step,) = otel.named("step child/c1")
    assert child_step.parent.span_id == invoke.context.span_id
