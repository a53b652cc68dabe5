"""Runs started by an event join the emitter's trace, however they start (issues 14, 15).

The emitter's W3C ``traceparent`` is stored with the event row (schema v6) and kept with the
event wherever flow control holds it for later: a debounced burst, a batch, an arrival left
for a worker with the code; a published event carries its publishing run's trace. Checked
with the SDK's in-memory exporter on both stores.
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from otel_kit import otel  # noqa: F401 - the fixture

import ironflow
from ironflow import Engine, step
from ironflow.commands.flow import Batch, Debounce, RateLimit
from ironflow.testing import VirtualClock


def add(a: int, b: int) -> int:
    return a + b


def _hex(span: Any) -> tuple[str, str]:
    context = span.get_span_context() if hasattr(span, "get_span_context") else span.context
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _stored_traces(engine: Engine) -> dict[str, str | None]:
    """``{event name/id: traceparent}`` as the events rows hold them."""
    store: Any = engine.store
    return {row[0]: row[1] for row in store.query("SELECT id, traceparent FROM events")}


def _emit_in_span(engine: Engine, caller: str, name: str, data: Any) -> tuple[Any, str]:
    """Emit under a fresh root span ``caller``; that span and the event's id."""
    with trace.get_tracer("test").start_as_current_span(caller) as span:
        event_id, started = engine.emit_event(name, data)
    assert started == []  # held back by flow control: the run starts later
    return span, event_id


@ironflow.function(id="settle", on="doc.saved", debounce=Debounce("10s", key="data.doc"))
def settle(ctx: Any) -> Any:
    return (yield step.run("one", add, ctx.event.data["v"], 0))


def test_a_debounced_run_joins_the_trace_of_its_last_event(
    otel: Any,  # noqa: F811
    engine: Engine,
    clock: VirtualClock,
) -> None:
    engine.register(settle)
    callers = []
    for version in range(3):
        callers.append(
            _emit_in_span(engine, f"caller {version}", "doc.saved", {"doc": "a", "v": version})
        )
        clock.advance("2s")
    clock.advance("10s")
    engine.run_until_idle()
    (run,) = engine.list_runs(function="settle")
    assert engine.wait(run.id) == 2  # the burst's last event

    emits = otel.named("emit doc.saved")
    assert len(emits) == 3
    # Each events row holds its emit span's context (the emit span is the caller's child).
    stored = _stored_traces(engine)
    for (caller, event_id), emit in zip(callers, emits, strict=True):
        assert emit.parent.span_id == caller.get_span_context().span_id
        trace_id, span_id = _hex(emit)
        assert stored[event_id].startswith(f"00-{trace_id}-{span_id}-")  # then the flags
    (one,) = otel.named("step settle/one")
    last_caller, last_emit = callers[-1][0], emits[-1]
    assert one.context.trace_id == last_caller.get_span_context().trace_id
    assert one.parent.span_id == last_emit.context.span_id
    (started,) = otel.named("run start settle")
    assert started.context.trace_id == last_caller.get_span_context().trace_id


@ironflow.function(id="gather", on="row.added", batch_events=Batch(3, "5s"))
def gather(ctx: Any) -> Any:
    return (yield step.run("sum", add, len(ctx.events), 0))


def test_a_batched_run_joins_the_trace_of_its_first_event(
    otel: Any,  # noqa: F811
    engine: Engine,
    clock: VirtualClock,
) -> None:
    engine.register(gather)
    first, _ = _emit_in_span(engine, "first caller", "row.added", {"n": 1})
    second, _ = _emit_in_span(engine, "second caller", "row.added", {"n": 2})
    clock.advance("5s")  # the batch's timeout: a worker starts its run
    engine.run_until_idle()
    (run,) = engine.list_runs(function="gather")
    assert engine.wait(run.id) == 2
    assert first.get_span_context().trace_id != second.get_span_context().trace_id

    first_emit = next(
        s
        for s in otel.named("emit row.added")
        if s.parent.span_id == first.get_span_context().span_id
    )
    (summed,) = otel.named("step gather/sum")
    assert summed.context.trace_id == first.get_span_context().trace_id
    assert summed.parent.span_id == first_emit.context.span_id


@ironflow.function(id="announce")
def announce(ctx: Any) -> Any:
    yield step.run("prepare", add, 1, 1)
    return (yield step.publish("tell", "order.told", {"n": 1}))


@ironflow.function(id="listen", on="order.told")
def listen(ctx: Any) -> Any:
    return (yield step.run("heard", add, ctx.event.data["n"], 0))


def test_a_published_events_runs_join_the_publishing_runs_trace(
    otel: Any,  # noqa: F811
    engine: Engine,
) -> None:
    engine.register(announce)
    engine.register(listen)
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        run_id = engine.start("announce")
    engine.run_until_idle()
    event_id = engine.wait(run_id)
    (start,) = otel.named("start announce")
    (heard,) = otel.named("step listen/heard")
    assert heard.context.trace_id == caller.get_span_context().trace_id
    assert heard.parent.span_id == start.context.span_id  # the publisher's stored context
    trace_id, span_id = _hex(start)
    assert _stored_traces(engine)[event_id].startswith(f"00-{trace_id}-{span_id}-")


@ironflow.function(
    id="limited", on="call.made", rate_limit=RateLimit(5, "1h", key=lambda e: e.data["who"])
)
def limited(ctx: Any) -> Any:
    return (yield step.run("answer", add, ctx.event.data["n"], 0))


def test_an_arrival_deferred_to_a_worker_with_the_code_joins_the_emitters_trace(
    otel: Any,  # noqa: F811
    store_url: str,
    clock: VirtualClock,
) -> None:
    worker = Engine(store_url, clock=clock)
    worker.register(limited)  # a callable key: an emitter without the code defers the event
    bare = Engine(store_url, clock=clock)
    try:
        caller, _ = _emit_in_span(bare, "caller", "call.made", {"who": "ann", "n": 4})
        worker.run_until_idle()
        (run,) = worker.list_runs(function="limited")
        assert worker.wait(run.id) == 4
    finally:
        bare.close()
        worker.close()
    (emit,) = otel.named("emit call.made")
    (answer,) = otel.named("step limited/answer")
    assert answer.context.trace_id == caller.get_span_context().trace_id
    assert answer.parent.span_id == emit.context.span_id


def test_without_a_tracer_events_store_no_trace(engine: Engine, clock: VirtualClock) -> None:
    engine.register(settle)
    event_id, _ = engine.emit_event("doc.saved", {"doc": "b", "v": 1})
    clock.advance("10s")
    engine.run_until_idle()
    assert _stored_traces(engine) == {event_id: None}
    (run,) = engine.list_runs(function="settle")
    assert engine.wait(run.id) == 1
