"""ironflow: durable workflows as plain Python generators."""

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
    WaitTimeoutError,
)

__all__ = [
    "CancelledError",
    "DuplicateStepError",
    "Event",
    "Function",
    "InvokeError",
    "IronflowError",
    "NonDeterminismError",
    "NonRetryableError",
    "RetryPolicy",
    "StepError",
    "StepTimeoutError",
    "WaitTimeoutError",
    "function",
    "step",
]
