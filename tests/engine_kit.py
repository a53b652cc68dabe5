"""Shared helpers of the engine tests."""

from __future__ import annotations

import collections
import threading

from ironflow import Engine


class Calls:
    """Thread-safe call counter keyed by a label, remembering the order of calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.order: list[str] = []

    def hit(self, label: str) -> str:
        with self._lock:
            self.counts[label] += 1
            self.order.append(label)
        return label

    def __getitem__(self, label: str) -> int:
        with self._lock:
            return self.counts[label]


def idle(engine: Engine, timeout: float = 10.0) -> None:
    """``run_until_idle`` that fails the test instead of hanging it."""
    errors: list[BaseException] = []

    def drive() -> None:
        try:
            engine.run_until_idle()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"run_until_idle did not return within {timeout}s"
    if errors:
        raise errors[0]
