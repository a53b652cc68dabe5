"""Commands: the frozen values a workflow yields, and the builders that check their input."""

from ironflow.commands.classes import (
    COMMAND_TYPES,
    UNSET,
    Command,
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
from ironflow.commands.event import Event
from ironflow.commands.flow import (
    Batch,
    CancelOn,
    Concurrency,
    Cron,
    Debounce,
    Flow,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from ironflow.commands.function import Function, function
from ironflow.commands.retry import RetryPolicy

__all__ = [
    "COMMAND_TYPES",
    "UNSET",
    "Batch",
    "CancelOn",
    "Command",
    "Compensate",
    "Concurrency",
    "Cron",
    "Debounce",
    "Event",
    "Flow",
    "Function",
    "Invoke",
    "InvokeAsync",
    "Map",
    "Parallel",
    "Priority",
    "Publish",
    "RateLimit",
    "RetryPolicy",
    "RunStep",
    "Singleton",
    "Sleep",
    "SleepUntil",
    "Throttle",
    "Timeouts",
    "WaitEvent",
    "function",
]
