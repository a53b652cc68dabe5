"""``@ironflow.function``: declare a workflow. Registration is per engine, never global."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Generator
from typing import Any

import attrs

from ironflow.commands.names import check_event_name, check_function_id
from ironflow.commands.retry import RetryPolicy

WorkflowFn = Callable[[Any], Generator[Any, Any, Any]]


def _triggers(on: Any) -> tuple[str, ...]:
    if on is None:
        return ()
    names = [on] if isinstance(on, str) else on
    if not isinstance(names, list | tuple) or not names:
        raise ValueError(
            f"on= must be an event name, a wildcard like 'order.*', or a list; got {on!r}"
        )
    return tuple(check_event_name(name, "trigger event name").strip() for name in names)


@attrs.frozen
class Function:
    """A declared workflow: a generator function with an ``id``, triggers and a retry policy."""

    id: str
    fn: WorkflowFn
    on: tuple[str, ...] = ()
    retry: RetryPolicy | None = None

    def __call__(self, ctx: Any) -> Generator[Any, Any, Any]:
        return self.fn(ctx)

    def triggered_by(self, event_name: str) -> bool:
        """True if an event named ``event_name`` starts a run of this function."""
        return triggered_by(self.on, event_name)


def triggered_by(patterns: tuple[str, ...] | list[str], event_name: str) -> bool:
    """True if ``event_name`` matches one of the trigger ``patterns`` (names or wildcards).

    The one rule for triggers, for a ``Function`` and for the triggers the database holds."""
    return any(fnmatch.fnmatchcase(event_name, pattern) for pattern in patterns)


def function(
    *,
    id: str,
    on: str | list[str] | tuple[str, ...] | None = None,
    retry: RetryPolicy | None = None,
) -> Callable[[WorkflowFn], Function]:
    """Declare a workflow; ``on`` names the events that start it, ``retry`` its steps' default."""
    check_function_id(id)
    triggers = _triggers(on)
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")

    def declare(fn: WorkflowFn) -> Function:
        check_workflow_fn(fn)
        return Function(id, fn, triggers, retry)

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
