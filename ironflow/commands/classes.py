"""The command objects a workflow yields. Frozen values; the builders in ``step`` check input.

Each command is also iterable: ``__iter__`` yields the command itself and returns what the
engine sends back. So ``x = yield from step.run("f", fetch)`` records exactly what
``x = yield step.run("f", fetch)`` does, and type checkers give ``x`` the type ``__iter__``
declares (``RunStep[T]`` returns ``T``, ``WaitEvent`` an ``Event``; a bare ``yield`` is ``Any``).
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

import attrs
import pendulum

from ironflow.commands import kinds
from ironflow.commands.event import Event
from ironflow.commands.retry import RetryPolicy

T = TypeVar("T")


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@attrs.frozen
class RunStep(Generic[T]):
    """Call ``fn(*args)`` once and memoize its JSON result (of type ``T``)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    retry: RetryPolicy | None = None
    timeout: pendulum.Duration | None = None
    kind = kinds.RUN

    def __iter__(self) -> Generator[RunStep[T], Any, T]:
        """``yield from`` it: yields the command; returns the step's result."""
        result: T = yield self
        return result


@attrs.frozen
class Sleep:
    """Pause durably for ``duration``."""

    name: str
    duration: pendulum.Duration
    kind = kinds.SLEEP

    def __iter__(self) -> Generator[Sleep, Any, None]:
        """``yield from`` it: yields the command; returns ``None``."""
        yield self


@attrs.frozen
class SleepUntil:
    """Pause durably until the aware instant ``when``."""

    name: str
    when: pendulum.DateTime
    kind = kinds.SLEEP_UNTIL

    def __iter__(self) -> Generator[SleepUntil, Any, None]:
        """``yield from`` it: yields the command; returns ``None``."""
        yield self


@attrs.frozen
class WaitEvent:
    """Pause until an event named ``event`` matches, or ``timeout`` passes."""

    name: str
    event: str
    match: str | None = None
    value: Any = UNSET
    timeout: pendulum.Duration = attrs.field(factory=lambda: pendulum.duration(days=7))
    kind = kinds.WAIT_EVENT

    def __iter__(self) -> Generator[WaitEvent, Any, Event]:
        """``yield from`` it: yields the command; returns the matched event."""
        result: Event = yield self
        return result


@attrs.frozen
class Parallel:
    """Run ``branches`` (callables ``branch(s)``) concurrently; results in branch order."""

    name: str
    branches: tuple[Callable[..., Any], ...]
    concurrency: int | None = None
    on_error: str = "fail_fast"
    kind = kinds.PARALLEL

    def __iter__(self) -> Generator[Parallel, Any, list[Any]]:
        """``yield from`` it: yields the command; returns the branches' results."""
        result: list[Any] = yield self
        return result


@attrs.frozen
class Map:
    """Run ``fn(item, s, index)`` for every item concurrently; results in item order."""

    name: str
    items: tuple[Any, ...]
    fn: Callable[..., Any]
    concurrency: int | None = None
    on_error: str = "fail_fast"
    kind = kinds.MAP

    def __iter__(self) -> Generator[Map, Any, list[Any]]:
        """``yield from`` it: yields the command; returns the results, in item order."""
        result: list[Any] = yield self
        return result


@attrs.frozen
class Invoke:
    """Start a child run of ``function`` (an id) with ``data`` and wait for its output."""

    name: str
    function: str
    data: Any = None
    timeout: pendulum.Duration | None = None
    kind = kinds.INVOKE

    def __iter__(self) -> Generator[Invoke, Any, Any]:
        """``yield from`` it: yields the command; returns the child run's output."""
        result: Any = yield self
        return result


@attrs.frozen
class InvokeAsync:
    """Start a child run of ``function`` without waiting; yields back its run id."""

    name: str
    function: str
    data: Any = None
    kind = kinds.INVOKE_ASYNC

    def __iter__(self) -> Generator[InvokeAsync, Any, str]:
        """``yield from`` it: yields the command; returns the child's run id."""
        result: str = yield self
        return result


@attrs.frozen
class Publish:
    """Emit the event ``event`` with ``data`` exactly once; yields back the event id."""

    name: str
    event: str
    data: Any = None
    kind = kinds.PUBLISH

    def __iter__(self) -> Generator[Publish, Any, str]:
        """``yield from`` it: yields the command; returns the event id."""
        result: str = yield self
        return result


@attrs.frozen
class Compensate:
    """Register ``fn(*args)`` as the undo of step ``name`` should the run fail."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kind = kinds.COMPENSATE

    def __iter__(self) -> Generator[Compensate, Any, None]:
        """``yield from`` it: yields the command; returns ``None``."""
        yield self


Command = (
    RunStep[Any]
    | Sleep
    | SleepUntil
    | WaitEvent
    | Parallel
    | Map
    | Invoke
    | InvokeAsync
    | Publish
    | Compensate
)
COMMAND_TYPES: tuple[type, ...] = (
    RunStep,
    Sleep,
    SleepUntil,
    WaitEvent,
    Parallel,
    Map,
    Invoke,
    InvokeAsync,
    Publish,
    Compensate,
)
