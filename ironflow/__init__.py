"""ironflow: durable workflows as plain Python generators."""

from typing import TYPE_CHECKING, Any

from ironflow import step
from ironflow.commands import (
    Batch,
    CancelOn,
    Concurrency,
    Cron,
    Debounce,
    Event,
    Function,
    Priority,
    RateLimit,
    RetryPolicy,
    Singleton,
    Throttle,
    Timeouts,
    function,
)
from ironflow.errors import (
    CancelledError,
    DuplicateStepError,
    InvokeError,
    IronflowError,
    NonDeterminismError,
    NonRetryableError,
    RunTimeoutError,
    StepError,
    StepTimeoutError,
    StoreError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from ironflow.interpreter.context import Context
    from ironflow.runtime import Engine, Run
else:
    # Hidden from type checkers, so that `from ironflow import Typo` is an error to them.
    def __getattr__(name: str) -> Any:
        # The engine loads on first use, so that `ironflow.step` and the pure layers stay free
        # of sqlite3, threads and the rest of the runtime; the interpreter (behind Context,
        # a name for annotations) is left to the engine and the test kit to load.
        if name in ("Engine", "Run"):
            from ironflow import runtime

            return getattr(runtime, name)
        if name == "Context":
            from ironflow.interpreter.context import Context

            return Context
        raise AttributeError(f"module 'ironflow' has no attribute {name!r}")


__all__ = [
    "Batch",
    "CancelOn",
    "CancelledError",
    "Concurrency",
    "Context",
    "Cron",
    "Debounce",
    "DuplicateStepError",
    "Engine",
    "Event",
    "Function",
    "InvokeError",
    "IronflowError",
    "NonDeterminismError",
    "NonRetryableError",
    "Priority",
    "RateLimit",
    "RetryPolicy",
    "Run",
    "RunTimeoutError",
    "Singleton",
    "StepError",
    "StepTimeoutError",
    "StoreError",
    "Throttle",
    "Timeouts",
    "WaitTimeoutError",
    "function",
    "step",
]
