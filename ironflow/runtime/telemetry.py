"""OpenTelemetry's switch: whether it is on, the trace context runs carry, the engine's hooks.

The engine reports through whatever global tracer and meter providers are set *when it
runs*, and costs one flag test per step (``ON``) when no SDK is configured or
``opentelemetry-api`` is not installed (``pip install "ironflow[otel]"``). This module and
its two halves are the only code that touches the API:

- here: loading the API lazily, reading the providers (``refresh``), the W3C
  ``traceparent`` captured with an emit or start and carried to a run's steps, and the
  hooks the engine calls (each a few lines handing over to the halves);
- ``telemetry_traces``: the spans (steps, invokes, what a round committed);
- ``telemetry_metrics``: the instruments and what they record.

The halves import the API at their top and are imported only by ``_load``, once the
application has imported the API itself (a provider can only be set by code that did).
``refresh``, once per round and at each emit/start, re-reads the global providers by identity
(no allocation) and makes the tracer and instruments only when a provider changes. A run's
trace context is the ``traceparent`` of the span that started it, stored in the run's
triggering event (``trigger`` JSON, key ``traceparent``; the history does not carry it), so
its steps join the caller's trace in any process, after any restart. Only what a round
committed is reported (``committed``, after the commit): a replay, a cold rebuild or a round
whose commit failed reports nothing.
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
    from ironflow.runtime.telemetry_metrics import Meters

# True when an SDK tracer or meter provider is set (as of the last ``refresh``): the one
# check the per-step paths make.
ON = False
SCOPE = "ironflow"
_TRACE_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
_METER_ENV = "OTEL_PYTHON_METER_PROVIDER"
_ENV_PROVIDER = _TRACE_ENV in os.environ or _METER_ENV in os.environ
_FAST = False  # whether refresh may read the API's provider globals directly (see _load)
_ABSENT = False  # the API could not be imported: not tried again (once per round otherwise)


class _State:
    """The tracer and instruments of the providers seen last (``None`` when off)."""

    tracer_provider: Any = None
    meter_provider: Any = None
    tracer: Any = None
    meters: Meters | None = None
    store_of: Callable[[], Any] | None = None  # for the runs-by-status gauge


_state = _State()
_propagator: Any = None
# The API's trace module and the two halves, imported on first use once the application has
# imported the API: ``None`` until then, or if not installed.
_trace: Any = None
_metrics: Any = None
_metrics_internal: Any = None
_traces: Any = None  # ironflow.runtime.telemetry_traces
_meters: Any = None  # ironflow.runtime.telemetry_metrics


def _load() -> bool:
    """Import the API if the application did (or names a provider in the environment)."""
    global _trace, _metrics, _metrics_internal, _propagator, _traces, _meters, _FAST, _ABSENT
    modules = sys.modules
    imported = "opentelemetry.trace" in modules or "opentelemetry.metrics" in modules
    if _ABSENT or (not imported and not _ENV_PROVIDER):
        return False
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.metrics import _internal
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from ironflow.runtime import telemetry_metrics, telemetry_traces
    except ImportError:  # the extra is not installed: everything here stays a no-op
        _ABSENT = True
        return False
    _metrics, _metrics_internal, _propagator = metrics, _internal, TraceContextTextMapPropagator()
    _traces, _meters = telemetry_traces, telemetry_metrics
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
        state.meters = None
        if meter_provider is not None and not isinstance(
            meter_provider, _metrics.NoOpMeterProvider
        ):
            state.meters = _meters.Meters(meter_provider.get_meter(SCOPE), _runs_by_status)
    ON = state.tracer is not None or state.meters is not None
    return ON


# --- the trace context: captured in the caller, carried with the run ---------------------------


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


def context_of(trace: str | None) -> Any:
    """The OpenTelemetry context a stored ``traceparent`` names (None: the current one)."""
    if trace is None:
        return None
    return _propagator.extract({"traceparent": trace})


def traceparent_of(span: Any) -> str | None:
    """The W3C ``traceparent`` naming ``span``, for a run it starts."""
    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=_trace.set_span_in_context(span))
    return carrier.get("traceparent")


# --- the engine's hooks --------------------------------------------------------------------------


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


def child_trace(
    function_id: str, run_id: str, child_id: str, trace: str | None, pending: list[Any]
) -> str | None:
    """Start an ``invoke`` span in the parent run's trace; its ``traceparent``, for the child.

    Started while folding (the child's trigger needs its id) but kept in ``pending``, ended
    only once the round commits (``committed``): a round rolled back and driven again
    starts another, and the first is never ended, so never exported."""
    tracer = _state.tracer
    if tracer is None:
        return None
    span = _traces.invoke(tracer, function_id, run_id, child_id, context_of(trace))
    pending.append(span)
    return traceparent_of(span)


def run_step(job: Job, body: Callable[[Job], Outcome]) -> Outcome:
    """Run ``body(job)`` in a span ``step <function>/<step id>`` (child of the run's stored
    context) and record its metrics."""
    tracer = _state.tracer
    started = time.perf_counter()
    if tracer is None:
        outcome = body(job)
    else:
        with _traces.step_span(tracer, job, context_of(job.trace)) as span:
            outcome = body(job)
            _traces.step_status(span, outcome)
    meters = _state.meters
    if meters is not None:
        meters.step(job, outcome, time.perf_counter() - started)
    return outcome


async def run_step_async(job: Job, body: Callable[[Job], Any]) -> Outcome:
    """``run_step`` for an async step body."""
    tracer = _state.tracer
    started = time.perf_counter()
    if tracer is None:
        outcome: Outcome = await body(job)
    else:
        with _traces.step_span(tracer, job, context_of(job.trace)) as span:
            outcome = await body(job)
            _traces.step_status(span, outcome)
    meters = _state.meters
    if meters is not None:
        meters.step(job, outcome, time.perf_counter() - started)
    return outcome


def committed(driver: Driver, batch: Batch, now_us: int) -> None:
    """Report what a round just committed (runs started and ended, wakes, compensations, the
    invokes its fold started). Called after the commit succeeded, before ended runs leave
    ``driver.live``; never for a round whose commit failed."""
    pending = driver.pending_spans
    if pending:
        for span in pending:
            span.end()
        pending.clear()
    meters = _state.meters
    if meters is not None:
        meters.committed(driver.live, batch, now_us)
    tracer = _state.tracer
    if tracer is not None:
        _traces.committed(tracer, driver.live, batch)


def watch_store(store: Any) -> None:
    """Count runs by status in ``store`` for the ``ironflow_runs`` gauge, read when the
    metrics are collected (e.g. a Prometheus scrape); the engine made last is the one read."""
    _state.store_of = weakref.ref(store)


def _runs_by_status() -> list[tuple[str, str, int]]:
    """(function, status, count) of the store watched, or [] if none is (or it is closed)."""
    store_of = _state.store_of
    store = store_of() if store_of is not None else None
    if store is None:
        return []
    try:
        return runs_by_status(store)
    except Exception:  # a closed or unreachable store: no observation this time
        return []


def runs_by_status(store: Any) -> list[tuple[str, str, int]]:
    """(function, status, count) for every function registered in ``store`` and status:
    the ``ironflow_runs`` gauge (here and in the server's ``/metrics``)."""
    from ironflow.runtime.models import STATUSES

    with store.transaction() as tx:
        functions = [fid for fid, _ in tx.registered()]
    return [
        (function_id, status, store.count_runs(status, function_id))
        for function_id in functions
        for status in STATUSES
    ]
