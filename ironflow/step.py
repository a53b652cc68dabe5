"""The step builders: ``yield step.run(...)``, ``yield step.sleep(...)`` and the rest."""

from ironflow.commands.builders import (
    compensate,
    invoke,
    invoke_async,
    map,
    parallel,
    publish,
    run,
    sleep,
    sleep_until,
    wait_for_event,
)

__all__ = [
    "compensate",
    "invoke",
    "invoke_async",
    "map",
    "parallel",
    "publish",
    "run",
    "sleep",
    "sleep_until",
    "wait_for_event",
]
