"""pytest plugin: ``ironflow_clock`` and ``ironflow_engine`` fixtures (loaded via entry point)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ironflow.runtime import Engine
from ironflow.testing.clock import VirtualClock


@pytest.fixture
def ironflow_clock() -> VirtualClock:
    """A ``VirtualClock`` starting at 2026-01-01T00:00:00Z."""
    return VirtualClock()


@pytest.fixture
def ironflow_engine(tmp_path: Path, ironflow_clock: VirtualClock) -> Iterator[Engine]:
    """An ``Engine`` on a fresh SQLite file in ``tmp_path``, driven by ``ironflow_clock``."""
    engine = Engine(str(tmp_path / "ironflow.db"), clock=ironflow_clock, durability="normal")
    try:
        yield engine
    finally:
        engine.close()
