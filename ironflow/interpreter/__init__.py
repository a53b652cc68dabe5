"""The pure interpreter: ``replay(flow, history) -> Decision`` and its incremental form."""

from ironflow.interpreter.context import Context
from ironflow.interpreter.decision import Decision, Work
from ironflow.interpreter.interpreter import (
    Interpreter,
    check_replayable,
    fingerprint,
    replay,
    step_error,
)

__all__ = [
    "Context",
    "Decision",
    "Interpreter",
    "Work",
    "check_replayable",
    "fingerprint",
    "replay",
    "step_error",
]
