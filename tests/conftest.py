"""Fixtures shared by the engine tests (the plugin's ironflow_* fixtures are separate)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from engine_kit import Calls

from ironflow import Engine
from ironflow.testing import VirtualClock


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def db(tmp_path) -> str:
    return str(tmp_path / "x.db")


@pytest.fixture
def engine(db: str, clock: VirtualClock) -> Iterator[Engine]:
    eng = Engine(db, clock=clock)
    yield eng
    eng.close()


@pytest.fixture
def calls() -> Calls:
    return Calls()
