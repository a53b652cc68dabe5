"""Fixtures shared by the engine tests (the plugin's ironflow_* fixtures are separate)."""

from __future__ import annotations

import atexit
from collections.abc import Iterator

import browser_kit
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


# --- the engine suite on both stores ---------------------------------------------------------
# A test that asks for ``engine`` or ``store_url`` runs once per store: ``[sqlite]`` on a fresh
# file, ``[postgres]`` on a fresh schema of the session's server. A test about SQLite itself
# (raw SQL, files, WAL, read-only files) is marked ``sqlite_only`` and runs on SQLite alone.

STORES = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "store_kind" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only") is not None
        metafunc.parametrize("store_kind", STORES[:1] if only else STORES)


@pytest.fixture
def store_url(request: pytest.FixtureRequest, store_kind: str, tmp_path) -> str:
    """A fresh, empty database of the test's store: a SQLite path, or a PostgreSQL URL."""
    if store_kind == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(tmp_path / "x.db")


@pytest.fixture
def engine(store_url: str, clock: VirtualClock) -> Iterator[Engine]:
    eng = Engine(store_url, clock=clock)
    yield eng
    eng.close()


@pytest.fixture
def ironflow_engine(
    store_kind: str, store_url: str, tmp_path, ironflow_clock: VirtualClock
) -> Iterator[Engine]:
    """The plugin's fixture, on each store (the plugin's own is SQLite's, as here)."""
    url = str(tmp_path / "ironflow.db") if store_kind == "sqlite" else store_url
    eng = Engine(url, clock=ironflow_clock, durability="normal")
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
        callspec = getattr(item, "callspec", None)
        on_postgres = callspec is not None and callspec.params.get("store_kind") == "postgres"
        if on_postgres or POSTGRES_FIXTURES & set(getattr(item, "fixturenames", ())):
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
    if browser_kit.skipped:
        terminalreporter.write_line(
            f"Chromium not found: {browser_kit.skipped} browser tests skipped; "
            f"{browser_kit.INSTALL_HINT}",
            yellow=True,
            bold=True,
        )
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
