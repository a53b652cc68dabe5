"""Replace step functions by step name in a test, without editing the workflow."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from ironflow.runtime import Engine


@contextlib.contextmanager
def mock_steps(engine: Engine, mocks: dict[str, Callable[..., Any]]) -> Iterator[Engine]:
    """Within the block, a step named in ``mocks`` runs the mock instead of its function.

    The mock receives the step's arguments. Undos are mocked by the name of the step they
    undo. Results still go through the JSON serializer, as in production.
    """
    for name, fn in mocks.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"mock_steps keys are step names, got {name!r}")
        if not callable(fn):
            raise TypeError(f"the mock for step {name!r} must be callable, got {fn!r}")
    saved = dict(engine.step_mocks)
    engine.step_mocks.update(mocks)
    try:
        yield engine
    finally:
        engine.step_mocks.clear()
        engine.step_mocks.update(saved)
