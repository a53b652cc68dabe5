"""Step bodies that wait at a gate, so runs stay held while a test counts who holds them."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from ironflow import Engine
from ironflow.runtime.live import create_run, trigger

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


def create_pending(url: str, function_id: str, n: int, prefix: str = "burst") -> list[str]:
    """``n`` pending runs of ``function_id`` (ids ``prefix-k``), created by an engine that
    serves nothing, as another process's would be."""
    starter = Engine(url, poll="60s")
    try:
        run_ids = [f"{prefix}-{k}" for k in range(n)]
        with starter.store.transaction() as tx:
            for run_id in run_ids:
                create_run(starter._driver, tx, run_id, function_id, trigger("x", None, 0), 0)
        return run_ids
    finally:
        starter.close()
