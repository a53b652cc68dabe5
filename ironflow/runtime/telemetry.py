"""OpenTelemetry: the one module that touches the API (traces and metrics), loaded lazily.

Takes the engine's moments (an emit or start in the caller's thread, a step run by the
executor, a round committed) and reports them through whatever global tracer and meter
providers are set *when the engine runs*; gives nothing and costs one flag test per step
when no SDK is configured or ``opentelemetry-api`` is not installed (``pip install
"ironflow[otel]"``).

Why it is built this way: the per-step paths test ``ON`` (a module attribute) and nothing
else; ``refresh``, once per round and at each emit/start, re-reads the global providers by
identity (no allocation) and makes the tracer and instruments only when a provider changes.
A run's trace context is the W3C ``traceparent`` of the span that started it, stored in the
run's triggering event (``trigger`` JSON, key ``traceparent``; the history does not carry it),
so its steps join the caller's trace in any process, after any restart. Only what a round
committed is reported (``committed``): a replay or a cold rebuild reports nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver
    from ironflow.runtime.executor import Job, Outcome
    from ironflow.runtime.store import Batch

# True when an SDK tracer or meter provider is set (as of the last ``refresh``): the one
# check the per-step paths make.
ON = False
SCOPE = "ironflow"
_TRACE_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
_METER_ENV = "OTEL_PYTHON_METER_PROVIDER"
_ENV_PROVIDER = _TRACE_ENV in os.environ or _METER_ENV in os.environ
_FAST = False  # whether refresh may read the API's provider globals directly (see _load)


class _State:
    """The tracer and instruments of the providers seen last (``None`` when off)."""

    tracer_provider: Any = None
    meter_provider: Any = None
    tracer: Any = None
    runs_started: Any = None
    runs_ended: Any = None
    steps: Any = None
    step_duration: Any = None
    queue_lag: Any = None
    store_of: Callable[[], Any] | None = None  # for the runs-by-status gauge


_state = _State()
_propagator: Any = None
# The API's modules, imported on first use once the application has imported the API (a
# provider can only be set by code that did): ``None`` until then, or if not installed.
_trace: Any = None
_metrics: Any = None
_metrics_internal: Any = None
Link: Any = None
Status: Any = None
StatusCode: Any = None


def _load() -> bool:
    """Import the API if the application did (or names a provider in the environment)."""
    global _trace, _metrics, _metrics_internal, Link, Status, StatusCode, _propagator
    modules = sys.modules
    imported = "opentelemetry.trace" in modules or "opentelemetry.metrics" in modules
    if not imported and not _ENV_PROVIDER:
        return False
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.metrics import _internal
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:  # the extra is not installed: everything here stays a no-op
        return False
    _metrics, _metrics_internal, _propagator = metrics, _internal, TraceContextTextMapPropagator()
    Link, Status, StatusCode = trace.Link, trace.Status, trace.StatusCode
    global _FAST
    _FAST = (
        not _ENV_PROVIDER
        and hasattr(trace, "_TRACER_PROVIDER")
        and hasattr(_internal, "_METER_PROVIDER")
    )
    _trace = trace  # last: the others are set once this one is
    return True


def _provider(module: Any, private: str, getter: Callable[[], Any]) -> Any:
    """The global provider set (by ``set_*_provider`` or the environment), else None.

    Read from the API's module global: the public getter answers a proxy when none is set,
    after an ``os.environ`` lookup that would cost more than the rest of this per round."""
    found = getattr(module, private, None)
    if found is None and _ENV_PROVIDER:
        found = getter()  # the API loads the provider the variable names and keeps it
    return found


def refresh() -> bool:
    """Re-read the global providers; make the tracer and instruments if they changed."""
    trace, state = _trace, _state
    if trace is None:
        if not _load():
            return False
    elif (
        _FAST
        and trace._TRACER_PROVIDER is state.tracer_provider
        and _metrics_internal._METER_PROVIDER is state.meter_provider
    ):
        return ON  # per round: nothing changed (two attribute reads)
    return _changed()


def _changed() -> bool:
    global ON
    tracer_provider = _provider(_trace, "_TRACER_PROVIDER", _trace.get_tracer_provider)
    meter_provider = _provider(_metrics_internal, "_METER_PROVIDER", _metrics.get_meter_provider)
    state = _state
    if tracer_provider is not state.tracer_provider:
        state.tracer_provider = tracer_provider
        state.tracer = None
        if tracer_provider is not None and not isinstance(
            tracer_provider, _trace.NoOpTracerProvider
        ):
            state.tracer = tracer_provider.get_tracer(SCOPE)
    if meter_provider is not state.meter_provider:
        state.meter_provider = meter_provider
        state.steps = None
        if meter_provider is not None and not isinstance(
            meter_provider, _metrics.NoOpMeterProvider
        ):
            _instruments(meter_provider.get_meter(SCOPE))
    ON = state.tracer is not None or state.steps is not None
    return ON


# Histogram buckets in seconds (the SDK's default ones are milliseconds); an API too old for
# the advisory argument keeps its defaults.
_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)
_SECONDS: dict[str, Any] = {}


def _instruments(meter: Any) -> None:
    """The metrics (Prometheus names ``ironflow_*``), all labelled by ``function``."""
    import inspect

    if (
        "explicit_bucket_boundaries_advisory"
        in inspect.signature(meter.create_histogram).parameters
    ):
        _SECONDS["explicit_bucket_boundaries_advisory"] = list(_BUCKETS)
    state = _state
    state.runs_started = meter.create_counter(
        "ironflow_runs_started", description="Runs started, by function"
    )
    state.runs_ended = meter.create_counter(
        "ironflow_runs_ended", description="Runs ended, by function and status"
    )
    state.steps = meter.create_counter(
        "ironflow_steps_executed",
        description="Step executions (each attempt), by function, kind and outcome",
    )
    state.step_duration = meter.create_histogram(
        "ironflow_step_duration",
        unit="s",
        description="Duration of a step execution, by function and kind",
        **_SECONDS,
    )
    state.queue_lag = meter.create_histogram(
        "ironflow_queue_lag",
        unit="s",
        description="From when a run was due (created) to when a worker started it",
        **_SECONDS,
    )
    meter.create_observable_gauge(
        "ironflow_runs", callbacks=[_runs_by_status], description="Runs by status"
    )


def watch_store(store: Any) -> None:
    """Count runs by status in ``store`` for the ``ironflow_runs`` gauge, read when the
    metrics are collected (e.g. a Prometheus scrape); the engine made last is the one read."""
    _state.store_of = weakref.ref(store)


def _runs_by_status(_options: Any) -> Iterator[Any]:
    from ironflow.runtime.models import STATUSES

    store_of = _state.store_of
    store = store_of() if store_of is not None else None
    if store is None:
        return
    try:
        counts = [
            (function_id, status, store.count_runs(status, function_id))
            for function_id in _functions(store)
            for status in STATUSES
        ]
    except Exception:  # a closed or unreachable store: no observation this time
        return
    for function_id, status, count in counts:
        yield _metrics.Observation(count, {"function": function_id, "status": status})


def _functions(store: Any) -> list[str]:
    with store.transaction() as tx:
        return [fid for fid, _ in tx.registered()]


# --- traces in the caller's context ------------------------------------------------------------


@contextlib.contextmanager
def caller_span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    """A span in the caller's context (``emit``, ``start``), current while the body runs so
    that ``traceparent()`` names it; yields None when tracing is off."""
    tracer = _state.tracer if refresh() else None
    if tracer is None:
        yield None
        return
    with tracer.start_as_current_span(name, attributes=attributes) as span:
        yield span


def traceparent() -> str | None:
    """The W3C ``traceparent`` of the current span, to store with a run; None if none."""
    if _state.tracer is None or not _trace.get_current_span().get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return carrier.get("traceparent")


def current_ids() -> tuple[str, str] | None:
    """The trace and span ids (hex) of the span active in this thread, if any."""
    if _trace is None:
        return None
    context = _trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def stored_trace(trigger: Any) -> str | None:
    """The ``traceparent`` stored in a run's triggering event (JSON text), if any."""
    if type(trigger) is not str or "traceparent" not in trigger:  # a C substring search
        return None
    try:
        value = json.loads(trigger).get("traceparent")
    except (ValueError, AttributeError):
        return None
    return value if type(value) is str else None


def _context(trace: str | None) -> Any:
    if trace is None:
        return None
    return _propagator.extract({"traceparent": trace})


def child_trace(function_id: str, run_id: str, child_id: str, trace: str | None) -> str | None:
    """An ``invoke`` span in the parent run's trace; its ``traceparent``, for the child."""
    tracer = _state.tracer
    if tracer is None:
        return None
    attributes = {
        "ironflow.run_id": child_id,
        "ironflow.function_id": function_id,
        "ironflow.parent_run_id": run_id,
    }
    with tracer.start_as_current_span(
        f"invoke {function_id}", context=_context(trace), attributes=attributes
    ):
        return traceparent()


# --- steps (on the executor's threads) ---------------------------------------------------------


def run_step(job: Job, body: Callable[[Job], Outcome]) -> Outcome:
    """Run ``body(job)`` in a span ``step <function>/<step id>`` (child of the run's stored
    context) and record its metrics."""
    tracer = _state.tracer
    started = time.perf_counter()
    if tracer is None:
        outcome = body(job)
    else:
        with tracer.start_as_current_span(
            f"step {job.function_id}/{job.step_id}",
            context=_context(job.trace),
            attributes=_step_attributes(job),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = body(job)
            _step_status(span, outcome)
    _step_metrics(job, outcome, time.perf_counter() - started)
    return outcome


async def run_step_async(job: Job, body: Callable[[Job], Any]) -> Outcome:
    """``run_step`` for an async step body."""
    tracer = _state.tracer
    started = time.perf_counter()
    if tracer is None:
        outcome: Outcome = await body(job)
    else:
        with tracer.start_as_current_span(
            f"step {job.function_id}/{job.step_id}",
            context=_context(job.trace),
            attributes=_step_attributes(job),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            outcome = await body(job)
            _step_status(span, outcome)
    _step_metrics(job, outcome, time.perf_counter() - started)
    return outcome


def _step_attributes(job: Job) -> dict[str, Any]:
    return {
        "ironflow.run_id": job.run_id,
        "ironflow.function_id": job.function_id,
        "ironflow.step.id": job.step_id,
        "ironflow.step.attempt": job.attempt,
        "ironflow.step.kind": job.kind,
    }


def _step_status(span: Any, outcome: Outcome) -> None:
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


def _step_metrics(job: Job, outcome: Outcome, seconds: float) -> None:
    state = _state
    if state.steps is None:
        return
    labels = {"function": job.function_id, "kind": job.kind}
    state.step_duration.record(seconds, labels)
    state.steps.add(1, {**labels, "outcome": "completed" if outcome.ok else "failed"})


# --- what a round committed --------------------------------------------------------------------

# History rows a round writes that are a wake of the run: (span kind, what woke it).
_WAKES = {
    "TimerFired": "timer",
    "WaitTimedOut": "timer",
    "WaitMatched": "event",
    "ChildCompleted": "child",
    "ChildFailed": "child",
}


def committed(driver: Driver, batch: Batch, now_us: int) -> None:
    """Report what a round just committed: runs started and ended, wakes, compensations.
    Called after the commit, before ended runs leave ``driver.live``."""
    state = _state
    tracer = state.tracer
    live_runs = driver.live
    for row in batch.history:
        kind = row[2]
        if kind == "RunStarted":
            live = live_runs.get(row[0])
            if live is None:
                continue
            fid = live.function.id
            if state.runs_started is not None:
                state.runs_started.add(1, {"function": fid})
                lag = _queue_lag(row[4], now_us)
                if lag is not None:
                    state.queue_lag.record(lag, {"function": fid})
            if tracer is not None:
                links = [Link(_span_context(live.trace))] if live.parent_run_id else None
                _short(tracer, f"run start {fid}", live, {}, links=links)
        elif tracer is not None and (kind in _WAKES or kind == "CompensationScheduled"):
            live = live_runs.get(row[0])
            if live is None:
                continue
            fid = live.function.id
            if kind == "CompensationScheduled":
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
        fid = live.function.id
        if state.runs_ended is not None:
            state.runs_ended.add(1, {"function": fid, "status": status})
        if tracer is not None:
            attributes = {"ironflow.run.status": status}
            span = _short(tracer, f"run end {fid}", live, attributes, end=False)
            if status == "failed":
                span.set_status(Status(StatusCode.ERROR, "run failed"))
            span.end()


def _short(
    tracer: Any,
    name: str,
    live: Any,
    attributes: dict[str, Any],
    links: Any = None,
    end: bool = True,
) -> Any:
    span = tracer.start_span(
        name,
        context=_context(live.trace),
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
    return _trace.get_current_span(_context(trace)).get_span_context()


def _field(body: str, name: str = "id") -> Any:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    if isinstance(value, dict):
        return value.get(name)
    return value[0] if isinstance(value, list) and value else None


def _queue_lag(body: str, now_us: int) -> float | None:
    """Seconds from the run's creation (its triggering event's time) to its start."""
    try:
        ts = json.loads(body)["event"]["ts"]
    except (ValueError, KeyError, TypeError):
        return None
    return max(0.0, (now_us - int(ts)) / 1_000_000) if isinstance(ts, int) else None
