"""ironflow: durable workflows as plain Python generators."""

from typing import TYPE_CHECKING, Any

from ironflow import step
from ironflow.commands import Event, Function, RetryPolicy, function
from ironflow.errors import (
    CancelledError,
    DuplicateStepError,
    InvokeError,
    IronflowError,
    NonDeterminismError,
    NonRetryableError,
    StepError,
    StepTimeoutError,
    StoreError,
    WaitTimeoutError,
)

if TYPE_CHECKING:
    from ironflow.runtime import Engine, Run


def __getattr__(name: str) -> Any:
    # The engine loads on first use, so that `ironflow.step` and the pure layers stay free of
    # sqlite3, threads and the rest of the runtime.
    if name in ("Engine", "Run"):
        from ironflow import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'ironflow' has no attribute {name!r}")


__all__ = [
    "CancelledError",
    "DuplicateStepError",
    "Engine",
    "Event",
    "Function",
    "InvokeError",
    "IronflowError",
    "NonDeterminismError",
    "NonRetryableError",
    "RetryPolicy",
    "Run",
    "StepError",
    "StepTimeoutError",
    "StoreError",
    "WaitTimeoutError",
    "function",
    "step",
]
