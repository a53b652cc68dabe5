"""``ironflow.step``: the builders a workflow calls to make the commands it yields.

Every builder checks its input here, at the boundary, and names the bad value.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, overload

from ironflow.commands.classes import (
    COMMAND_TYPES,
    UNSET,
    Compensate,
    Invoke,
    InvokeAsync,
    Map,
    Parallel,
    Publish,
    RunStep,
    Sleep,
    SleepUntil,
    WaitEvent,
)
from ironflow.commands.durations import DurationLike, InstantLike, parse_duration, parse_instant
from ironflow.commands.jsonvalue import NotJSONError, public_error, to_json_value
from ironflow.commands.names import (
    check_event_name,
    check_name,
    check_step_name,
    check_step_name_slowly,
)
from ironflow.commands.retry import RetryPolicy

ON_ERROR = ("fail_fast", "all_settled")

T = TypeVar("T")

# Iterable, yet not a list of branches or items: text, and a command (iterable for `yield from`).
_NOT_A_LIST = (str, bytes, *COMMAND_TYPES)


def _check_callable(fn: Any, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__} {fn!r}")


def _check_concurrency(concurrency: Any) -> int | None:
    if concurrency is None:
        return None
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency <= 0:
        raise ValueError(f"concurrency must be a positive int or None, got {concurrency!r}")
    return concurrency


def _check_on_error(on_error: Any) -> str:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be 'fail_fast' or 'all_settled', got {on_error!r}")
    return str(on_error)


def _optional_timeout(timeout: Any, what: str) -> Any:
    return None if timeout is None else parse_duration(timeout, what=what)


def _json(value: Any, what: str) -> Any:
    try:
        return to_json_value(value, what)
    except NotJSONError as exc:
        raise public_error(exc) from None


def _function_id(function: Any) -> str:
    function_id = getattr(function, "id", function)
    if type(function_id) is not str or not function_id.strip():
        raise ValueError(
            f"function must be a function id or a function declared with "
            f"@ironflow.function, got {function!r}"
        )
    return function_id


# Two signatures, so that `yield from step.run(...)` has the type of what the step returns: an
# `async def` returning T gives T (the worker awaits it), any other function its return type.
@overload
def run(
    name: str,
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    retry: RetryPolicy | None = None,
    timeout: DurationLike | None = None,
) -> RunStep[T]: ...


@overload
def run(
    name: str,
    fn: Callable[..., T],
    *args: Any,
    retry: RetryPolicy | None = None,
    timeout: DurationLike | None = None,
) -> RunStep[T]: ...


def run(
    name: str,
    fn: Callable[..., Any],
    *args: Any,
    retry: RetryPolicy | None = None,
    timeout: DurationLike | None = None,
) -> RunStep[Any]:
    """Run ``fn(*args)`` as a step: executed once, its JSON result memoized."""
    if type(name) is not str or not name.isprintable() or "/" in name or not name.strip():
        check_step_name_slowly(name, "step name")  # check_step_name, inlined
    if not callable(fn):
        _check_callable(fn, f"the function of step {name!r}")
    if retry is not None and not isinstance(retry, RetryPolicy):
        raise TypeError(f"retry must be a RetryPolicy, got {retry!r}")
    if timeout is not None:
        timeout = parse_duration(timeout, what=f"timeout of step {name!r}")
    return RunStep(name, fn, args, retry, timeout)


def sleep(name: str, duration: DurationLike) -> Sleep:
    """Pause durably for ``duration``."""
    return Sleep(
        check_step_name(name), parse_duration(duration, what=f"duration of sleep {name!r}")
    )


def sleep_until(name: str, when: InstantLike) -> SleepUntil:
    """Pause durably until the aware datetime (or ISO 8601 string with offset) ``when``."""
    return SleepUntil(
        check_step_name(name), parse_instant(when, what=f"sleep_until {name!r} target")
    )


def wait_for_event(
    name: str,
    event: str,
    *,
    match: str | None = None,
    value: Any = UNSET,
    timeout: DurationLike = "7d",
) -> WaitEvent:
    """Pause until an event named ``event`` arrives whose ``match`` path equals this run's."""
    check_step_name(name)
    check_event_name(event)
    if match is not None:
        check_name(match, "match path")
    if value is not UNSET:
        if match is None:
            raise ValueError(f"wait {name!r}: value= needs match= (the path to compare it with)")
        value = _json(value, f"value of wait {name!r}")
    duration = parse_duration(timeout, what=f"timeout of wait {name!r}")
    return WaitEvent(name, event.strip(), match, value, duration)


def parallel(
    name: str,
    branches: Iterable[Callable[..., Any]],
    *,
    concurrency: int | None = None,
    on_error: str = "fail_fast",
) -> Parallel:
    """Run each ``branch(s)`` concurrently; yields back their results in branch order."""
    check_step_name(name)
    if isinstance(branches, _NOT_A_LIST) or not isinstance(branches, Iterable):
        raise TypeError(
            f"branches of parallel {name!r} must be a list of callables, got {branches!r}"
        )
    branch_list = tuple(branches)
    for index, branch in enumerate(branch_list):
        _check_callable(branch, f"branch {index} of parallel {name!r}")
    return Parallel(name, branch_list, _check_concurrency(concurrency), _check_on_error(on_error))


def map(
    name: str,
    items: Iterable[Any],
    fn: Callable[..., Any],
    *,
    concurrency: int | None = None,
    on_error: str = "fail_fast",
) -> Map:
    """Run ``fn(item, s, index)`` for every item concurrently; results in item order."""
    check_step_name(name)
    if isinstance(items, _NOT_A_LIST) or not isinstance(items, Iterable):
        raise TypeError(f"items of map {name!r} must be a list, got {items!r}")
    _check_callable(fn, f"the function of map {name!r}")
    return Map(name, tuple(items), fn, _check_concurrency(concurrency), _check_on_error(on_error))


def invoke(
    name: str, function: Any, data: Any = None, *, timeout: DurationLike | None = None
) -> Invoke:
    """Start a child run of ``function`` (id or declared function) and wait for its output."""
    check_step_name(name)
    return Invoke(
        name,
        _function_id(function),
        _json(data, f"data of invoke {name!r}"),
        _optional_timeout(timeout, f"timeout of invoke {name!r}"),
    )


def invoke_async(name: str, function: Any, data: Any = None) -> InvokeAsync:
    """Start a child run of ``function`` without waiting; yields back the child's run id."""
    check_step_name(name)
    return InvokeAsync(name, _function_id(function), _json(data, f"data of invoke {name!r}"))


def publish(name: str, event: str, data: Any = None) -> Publish:
    """Emit the event ``event`` exactly once; yields back the event id."""
    check_step_name(name)
    check_event_name(event)
    return Publish(name, event.strip(), _json(data, f"data of publish {name!r}"))


def compensate(name: str, fn: Callable[..., Any], *args: Any) -> Compensate:
    """Register ``fn(*args)`` as the undo of step ``name``, run if the run ends in failure."""
    check_step_name(name)
    _check_callable(fn, f"the undo of step {name!r}")
    return Compensate(name, fn, args)
