"""The spans ironflow reports: step executions, invokes, and what a round committed.

Imported by ``telemetry._load`` only (once the application has imported the OpenTelemetry
API); ``telemetry`` decides whether tracing is on and hands each function the tracer and the
parent context (a run's stored ``traceparent``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import Link, Status, StatusCode, get_current_span

from ironflow.runtime.telemetry import context_of

if TYPE_CHECKING:
    from ironflow.runtime.executor import Job, Outcome
    from ironflow.runtime.live import Live
    from ironflow.runtime.store import Batch


def step_span(tracer: Any, job: Job, parent: Any) -> Any:
    """The span ``step <function>/<step id>`` of one attempt, current while it runs."""
    return tracer.start_as_current_span(
        f"step {job.function_id}/{job.step_id}",
        context=parent,
        attributes={
            "ironflow.run_id": job.run_id,
            "ironflow.function_id": job.function_id,
            "ironflow.step.id": job.step_id,
            "ironflow.step.attempt": job.attempt,
            "ironflow.step.kind": job.kind,
        },
        record_exception=False,
        set_status_on_exception=False,
    )


def step_status(span: Any, outcome: Outcome) -> None:
    """A failed attempt: error status, the exception as an event, whether it is retried."""
    if outcome.ok:
        return
    error = outcome.error
    message = f"{error.type}: {error.message}" if error is not None else "failed"
    span.set_status(Status(StatusCode.ERROR, message))
    if error is not None:
        span.add_event(
            "exception",
            {
                "exception.type": error.type,
                "exception.message": error.message,
                "exception.stacktrace": error.traceback or "",
            },
        )
    span.set_attribute("ironflow.step.retryable", outcome.retryable)


def invoke(tracer: Any, function_id: str, run_id: str, child_id: str, parent: Any) -> Any:
    """The span ``invoke <function>`` of a child run, started (its end is the caller's)."""
    return tracer.start_span(
        f"invoke {function_id}",
        context=parent,
        attributes={
            "ironflow.run_id": child_id,
            "ironflow.function_id": function_id,
            "ironflow.parent_run_id": run_id,
        },
    )


# History rows a round writes that are a wake of the run: (span kind, what woke it).
_WAKES = {
    "TimerFired": "timer",
    "WaitTimedOut": "timer",
    "WaitMatched": "event",
    "ChildCompleted": "child",
    "ChildFailed": "child",
}


def committed(tracer: Any, live_runs: Mapping[str, Live], batch: Batch) -> None:
    """Short spans for what a round committed: run start, wakes, compensations, run end."""
    for row in batch.history:
        kind = row[2]
        if kind != "RunStarted" and kind not in _WAKES and kind != "CompensationScheduled":
            continue
        live = live_runs.get(row[0])
        if live is None:
            continue
        fid = live.function.id
        if kind == "RunStarted":
            links = [Link(_span_context(live.trace))] if live.parent_run_id else None
            _short(tracer, f"run start {fid}", live, {}, links=links)
        elif kind == "CompensationScheduled":
            step_id = _field(row[4], "id")
            _short(tracer, f"compensate {fid}/{step_id}", live, {"ironflow.step.id": step_id})
        else:
            attributes = {"ironflow.wake": _WAKES[kind], "ironflow.step.id": _field(row[4])}
            _short(tracer, f"wake {fid}", live, attributes)
    for ended in batch.ended:
        status, run_id = ended[0], ended[-1]
        live = live_runs.get(run_id)
        if live is None:
            continue
        attributes = {"ironflow.run.status": status}
        span = _short(tracer, f"run end {live.function.id}", live, attributes, end=False)
        if status == "failed":
            span.set_status(Status(StatusCode.ERROR, "run failed"))
        span.end()


def _short(
    tracer: Any,
    name: str,
    live: Live,
    attributes: dict[str, Any],
    links: Any = None,
    end: bool = True,
) -> Any:
    span = tracer.start_span(
        name,
        context=context_of(live.trace),
        links=links,
        attributes={
            "ironflow.run_id": live.run_id,
            "ironflow.function_id": live.function.id,
            **attributes,
        },
    )
    if end:
        span.end()
    return span


def _span_context(trace: str | None) -> Any:
    return get_current_span(context_of(trace)).get_span_context()


def _field(body: str, name: str = "id") -> Any:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict):
        return value.get(name)
    return value[0] if isinstance(value, list) and value else None
