"""The pure interpreter: ``replay(flow, history) -> Decision`` and its incremental form."""

from ironflow.interpreter.context import Context
from ironflow.interpreter.core import Interpreter, replay
from ironflow.interpreter.decision import Decision, Work
from ironflow.interpreter.determinism import fingerprint
from ironflow.interpreter.lifecycle import check_replayable
from ironflow.interpreter.values import step_error

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
