"""The command objects a workflow yields. Frozen values; the builders in ``step`` check input."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pendulum

from ironflow.commands.retry import RetryPolicy


class _Unset:
    def __repr__(self) -> str:
        return "UNSET"


UNSET: Any = _Unset()


@attrs.frozen
class RunStep:
    """Call ``fn(*args)`` once and memoize its JSON result."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    retry: RetryPolicy | None = None
    timeout: pendulum.Duration | None = None
    kind = "run"


@attrs.frozen
class Sleep:
    """Pause durably for ``duration``."""

    name: str
    duration: pendulum.Duration
    kind = "sleep"


@attrs.frozen
class SleepUntil:
    """Pause durably until the aware instant ``when``."""

    name: str
    when: pendulum.DateTime
    kind = "sleep_until"


@attrs.frozen
class WaitEvent:
    """Pause until an event named ``event`` matches, or ``timeout`` passes."""

    name: str
    event: str
    match: str | None = None
    value: Any = UNSET
    timeout: pendulum.Duration = attrs.field(factory=lambda: pendulum.duration(days=7))
    kind = "wait_event"


@attrs.frozen
class Parallel:
    """Run ``branches`` (callables ``branch(s)``) concurrently; results in branch order."""

    name: str
    branches: tuple[Callable[..., Any], ...]
    concurrency: int | None = None
    on_error: str = "fail_fast"
    kind = "parallel"


@attrs.frozen
class Map:
    """Run ``fn(item, s, index)`` for every item concurrently; results in item order."""

    name: str
    items: tuple[Any, ...]
    fn: Callable[..., Any]
    concurrency: int | None = None
    on_error: str = "fail_fast"
    kind = "map"


@attrs.frozen
class Invoke:
    """Start a child run of ``function`` (an id) with ``data`` and wait for its output."""

    name: str
    function: str
    data: Any = None
    timeout: pendulum.Duration | None = None
    kind = "invoke"


@attrs.frozen
class InvokeAsync:
    """Start a child run of ``function`` without waiting; yields back its run id."""

    name: str
    function: str
    data: Any = None
    kind = "invoke_async"


@attrs.frozen
class Publish:
    """Emit the event ``event`` with ``data`` exactly once; yields back the event id."""

    name: str
    event: str
    data: Any = None
    kind = "publish"


@attrs.frozen
class Compensate:
    """Register ``fn(*args)`` as the undo of step ``name`` should the run fail."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kind = "compensate"


Command = (
    RunStep
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
