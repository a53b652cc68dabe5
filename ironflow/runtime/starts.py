"""Starting a run and emitting an event on a caller's behalf (outside any round).

Each is one short write transaction inside the caller's span (``telemetry.caller_span``), so
a run started here carries the caller's trace. The arguments come checked (``Engine`` checks
them at the boundary); the caller wakes the worker after the commit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ironflow.runtime import events, flow, telemetry
from ironflow.runtime.ids import new_id
from ironflow.runtime.live import create_run, trigger

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver


def start(driver: Driver, function_id: str, payload: Any, run_id: str | None) -> str:
    """Start a run of ``function_id``; a given ``run_id`` that exists already is returned
    as it is (``ValueError`` if it belongs to another function)."""
    now_us = driver.now_us()
    attributes = {"ironflow.function_id": function_id}
    with (
        telemetry.caller_span(f"start {function_id}", attributes) as span,
        driver.store.transaction() as tx,
    ):
        # The stripes a run's creation takes, first: a start of a function with a start gate
        # takes the flow-control lock next, and an emit takes them in this order too (taken
        # the other way round, a start and an emit could deadlock).
        tx.reserve((), (), True)
        if run_id is not None:
            existing = tx.run_function(run_id)
            if existing is not None:
                if existing != function_id:
                    raise ValueError(
                        f"run id {run_id!r} already belongs to a run of {existing!r}, "
                        f"not {function_id!r}"
                    )
                return run_id
        rid = run_id or new_id()
        stored = trigger(function_id, payload, now_us, telemetry.traceparent() if span else None)
        if not create_run(driver, tx, rid, function_id, stored, now_us, emitted=False):
            # singleton "skip": the run of this key that has not ended stands for it
            rid = flow.singleton_holder(driver, tx, function_id, stored) or rid
        if span is not None:
            span.set_attribute("ironflow.run_id", rid)
    return rid


def emit(
    driver: Driver, name: str, payload: Any, idempotency_key: str | None
) -> tuple[str, list[str]]:
    """Record event ``name``: its id (the first event's, for a repeated key) and the ids of
    the runs it started."""
    now, _ = driver.now()
    event_id = new_id()
    with (
        telemetry.caller_span(f"emit {name}", {"ironflow.event.name": name}) as span,
        driver.store.transaction() as tx,
    ):
        if idempotency_key is not None:
            event_id = tx.event_id_of(idempotency_key) or event_id
        traceparent = telemetry.traceparent() if span else None
        started = events.emit_in(
            driver, tx, name, payload, event_id, idempotency_key, now, traceparent
        )
        if span is not None:
            span.set_attribute("ironflow.run_ids", started)
    return event_id, started
