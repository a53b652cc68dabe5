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
from ironflow.runtime import Engine, Run

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
    "WaitTimeoutError",
    "function",
    "step",
]
