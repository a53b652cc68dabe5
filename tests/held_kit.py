"""Step bodies that wait at a gate, so runs stay held while a test counts who holds them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

WAIT = 10.0
gate = threading.Event()  # the step bodies wait here: the runs stay held while the test counts
bodies: list[str] = []
bodies_lock = threading.Lock()


def held(key: str) -> str:
    """A step body: wait for ``gate`` (bounded), then record ``key`` in ``bodies``."""
    assert gate.wait(WAIT), "the gate was never opened"
    with bodies_lock:
        bodies.append(key)
    return key


def fresh() -> Iterator[None]:
    """The body of a test module's autouse fixture: a closed gate and no bodies, and the gate
    opened after the test so no pool thread is left waiting."""
    gate.clear()
    bodies.clear()
    yield
    gate.set()
