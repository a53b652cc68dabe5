"""The errors ironflow raises and the ones a workflow may raise to steer it."""

from __future__ import annotations

from typing import Any


class IronflowError(Exception):
    """Base class of every error ironflow defines."""


class NonRetryableError(IronflowError):
    """Raise from a step body to fail the step at once, without further attempts."""


class StepError(IronflowError):
    """A step failed after its last attempt.

    ``step_id`` and ``attempts`` say which step and how often it ran; ``__cause__`` holds the
    original exception. Where the original class is loaded, the error a workflow receives is
    also an instance of that class, so ``except ValueError:`` catches a step's ``ValueError``.
    """

    step_id: str
    attempts: int

    def __init__(self, message: str = "", *, step_id: str = "", attempts: int = 0) -> None:
        super().__init__(message)
        self.step_id = step_id
        self.attempts = attempts


class StepTimeoutError(IronflowError):
    """A step body ran longer than its ``timeout=`` (retryable)."""


class WaitTimeoutError(IronflowError):
    """A ``wait_for_event`` timed out before a matching event arrived."""

    def __init__(self, message: str = "waitForEvent timed out") -> None:
        super().__init__(message)


class RunTimeoutError(IronflowError):
    """A run did not end within its function's ``timeouts=Timeouts(finish=...)``."""


class InvokeError(IronflowError):
    """A child run started by ``step.invoke`` failed or timed out (never retried)."""

    def __init__(self, message: str = "", *, function_id: str = "", child_run_id: str = "") -> None:
        super().__init__(message)
        self.function_id = function_id
        self.child_run_id = child_run_id


class NonDeterminismError(IronflowError):
    """Replaying the workflow code diverged from its recorded history."""

    def __init__(
        self, message: str, *, recorded: Any = None, current: Any = None, position: int = -1
    ) -> None:
        super().__init__(message)
        self.recorded = recorded
        self.current = current
        self.position = position


class DuplicateStepError(IronflowError, ValueError):
    """Two commands in one scope share a name."""


class CancelledError(IronflowError):
    """The run was cancelled."""


class StoreError(IronflowError, ValueError):
    """The database cannot be used: not an ironflow database, from a newer version, or the
    engine on it is closed.

    Also a ``ValueError``, as it was before it joined ``IronflowError``.
    """
