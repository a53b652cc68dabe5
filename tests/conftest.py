"""Fixtures shared by the engine tests (the plugin's ironflow_* fixtures are separate)."""

from __future__ import annotations

import atexit
from collections.abc import Iterator

import pgcluster
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


# --- PostgreSQL: a throwaway server per session (tests/pgcluster.py) ---------------------------

POSTGRES_FIXTURES = frozenset({"postgres_url", "pg_url"})
_availability: pgcluster.Availability | None = None
_postgres_skipped = 0


def _postgres() -> pgcluster.Availability:
    global _availability
    if _availability is None:
        _availability = pgcluster.detect()
    return _availability


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test that uses the fixtures is a PostgreSQL test, marked or not: `-m postgres` finds all.
    for item in items:
        if POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("postgres") is None:
        return
    availability = _postgres()
    if availability.kind == "skip":
        global _postgres_skipped
        _postgres_skipped += 1
        pytest.skip(availability.message)
    if availability.kind == "fail":
        pytest.fail(availability.message, pytrace=False)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _postgres_skipped:
        terminalreporter.write_line(
            f"PostgreSQL not found: {_postgres_skipped} PostgreSQL tests skipped; "
            f"{pgcluster.INSTALL_HINT}",
            yellow=True,
            bold=True,
        )


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of database ``ironflow_test`` on the session's server (external or throwaway)."""
    availability = _postgres()
    if availability.kind == "external":
        assert availability.url is not None
        yield availability.url
        return
    if availability.kind == "skip":
        pytest.skip(availability.message)
    if availability.kind == "fail":
        pytest.fail(availability.message, pytrace=False)
    assert availability.bindir is not None
    cluster = pgcluster.Cluster(availability.bindir)
    atexit.register(cluster.stop)  # also when the session dies before its teardown
    try:
        url = cluster.start()
    except pgcluster.ClusterError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield url
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres_url: str) -> Iterator[str]:
    """A fresh, empty schema for this test: the URL's ``search_path`` names it; dropped after."""
    url, drop = pgcluster.new_schema(postgres_url)
    yield url
    drop()
