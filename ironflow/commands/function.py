"""``@ironflow.function``: declare a workflow. Registration is per engine, never global."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Generator
from typing import Any

import attrs

from ironflow.commands.flow import (
    Batch,
    CancelOn,
    Concurrency,
    Cron,
    Debounce,
    Flow,
    Key,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from ironflow.commands.names import check_event_name, check_function_id
from ironflow.commands.retry import RetryPolicy

WorkflowFn = Callable[[Any], Generator[Any, Any, Any]]


def _triggers(on: Any) -> tuple[tuple[str, ...], tuple[Cron, ...]]:
    """``on`` split into event-name patterns and cron schedules."""
    if on is None:
        return (), ()
    names = [on] if isinstance(on, str | Cron) else on
    if not isinstance(names, list | tuple) or not names:
        raise ValueError(
            f"on= must be an event name, a wildcard like 'order.*', an ironflow.Cron, or a "
            f"list of them; got {on!r}"
        )
    crons = tuple(name for name in names if isinstance(name, Cron))
    events = tuple(
        check_event_name(name, "trigger event name").strip()
        for name in names
        if not isinstance(name, Cron)
    )
    return events, crons


@attrs.frozen
class Function:
    """A declared workflow: a generator function with an ``id``, triggers, a retry policy,
    cron schedules and flow-control options (``flow`` is ``None`` when it has none)."""

    id: str
    fn: WorkflowFn
    on: tuple[str, ...] = ()
    retry: RetryPolicy | None = None
    crons: tuple[Cron, ...] = ()
    flow: Flow | None = None

    def __call__(self, ctx: Any) -> Generator[Any, Any, Any]:
        return self.fn(ctx)

    def triggered_by(self, event_name: str) -> bool:
        """True if an event named ``event_name`` starts a run of this function."""
        return triggered_by(self.on, event_name)


def triggered_by(patterns: tuple[str, ...] | list[str], event_name: str) -> bool:
    """True if ``event_name`` matches one of the trigger ``patterns`` (names or wildcards).

    The one rule for triggers, for a ``Function`` and for the triggers the database holds."""
    return any(fnmatch.fnmatchcase(event_name, pattern) for pattern in patterns)


Trigger = str | Cron


def function(
    *,
    id: str,
    on: Trigger | list[Trigger] | tuple[Trigger, ...] | None = None,
    retry: RetryPolicy | None = None,
    concurrency: int | Concurrency | None = None,
    throttle: Throttle | None = None,
    rate_limit: RateLimit | None = None,
    debounce: Debounce | None = None,
    priority: Priority | None = None,
    singleton: Singleton | None = None,
    cancel_on: CancelOn | list[CancelOn] | tuple[CancelOn, ...] | None = None,
    timeouts: Timeouts | None = None,
    batch_events: Batch | None = None,
    idempotency: Key | None = None,
) -> Callable[[WorkflowFn], Function]:
    """Declare a workflow; ``on`` names the events (or ``Cron`` schedules) that start it,
    ``retry`` its steps' default; the rest are the flow-control options
    (docs/flow-control.md). Bad settings raise ``ValueError`` here, naming the value."""
    check_function_id(id)
    triggers, crons = _triggers(on)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
    flow = Flow(
        concurrency=concurrency,
        throttle=throttle,
        rate_limit=rate_limit,
        debounce=debounce,
        priority=priority,
        singleton=singleton,
        cancel_on=cancel_on,
        timeouts=timeouts,
        batch_events=batch_events,
        idempotency=idempotency,
    )
    # No options: ``flow`` is None, the one attribute the runtime's start path tests.
    options = None if flow.is_empty() else flow

    def declare(fn: WorkflowFn) -> Function:
        check_workflow_fn(fn)
        return Function(id, fn, triggers, retry, crons, options)

    return declare


def check_workflow_fn(fn: Any) -> None:
    """Fail unless ``fn`` is a generator function taking the context."""
    if isinstance(fn, Function):
        return
    if not callable(fn):
        raise TypeError(f"a workflow must be a generator function, got {fn!r}")
    if not inspect.isgeneratorfunction(fn):
        raise TypeError(
            f"workflow {getattr(fn, '__qualname__', fn)!r} must be a generator function: "
            f"write `result = yield step.run(...)` in its body"
        )
