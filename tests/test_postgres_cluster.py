"""The PostgreSQL test infrastructure itself: the throwaway server, per-test schemas, the policy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pgcluster
import psycopg
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTERNAL = bool(os.environ.get(pgcluster.EXTERNAL_URL_ENV, "").strip())


def _connect(url: str) -> psycopg.Connection:
    return psycopg.connect(url, connect_timeout=pgcluster.CONNECT_TIMEOUT_S)


# --- the server -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_server_answers_with_fsync_on(postgres_url):
    with _connect(postgres_url) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0]
        assert int(version.split(".")[0]) >= 12, version
        assert conn.execute("SHOW fsync").fetchone()[0] == "on"
        assert conn.execute("SELECT current_database()").fetchone()[0] == urlpath(postgres_url)


@pytest.mark.skipif(EXTERNAL, reason="the throwaway cluster's own settings")
@pytest.mark.postgres
def test_throwaway_server_listens_on_loopback_only_and_keeps_durability(postgres_url):
    assert postgres_url.startswith(f"postgresql://{pgcluster.SUPERUSER}@127.0.0.1:")
    assert urlpath(postgres_url) == pgcluster.DATABASE
    with _connect(postgres_url) as conn:
        settings = dict(
            conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                [["listen_addresses", "synchronous_commit", "full_page_writes", "fsync"]],
            ).fetchall()
        )
        assert settings == {
            "listen_addresses": "127.0.0.1",
            "synchronous_commit": "on",
            "full_page_writes": "on",
            "fsync": "on",
        }
        assert str(conn.execute("SELECT inet_server_addr()").fetchone()[0]) == "127.0.0.1"
        # The superuser is not the OS user: under root the server runs as nobody, never root.
        assert conn.execute("SELECT current_user").fetchone()[0] == pgcluster.SUPERUSER


def urlpath(url: str) -> str:
    return url.split("?")[0].rsplit("/", 1)[1]


@pytest.mark.postgres
def test_two_connections_see_each_others_committed_rows_only(pg_url):
    with _connect(pg_url) as a, _connect(pg_url) as b:
        a.execute("CREATE TABLE t (n int)")
        a.commit()
        a.execute("INSERT INTO t VALUES (1)")
        assert b.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # not yet committed
        b.rollback()
        a.commit()
        assert b.execute("SELECT n FROM t").fetchall() == [(1,)]
        b.execute("INSERT INTO t VALUES (2)")
        b.commit()
        assert a.execute("SELECT n FROM t ORDER BY n").fetchall() == [(1,), (2,)]


# --- one schema per test ----------------------------------------------------------------------

_schemas_seen: list[str] = []


@pytest.mark.postgres
@pytest.mark.parametrize("turn", [1, 2])
def test_each_test_gets_its_own_empty_schema_dropped_after(pg_url, postgres_url, turn):
    with _connect(pg_url) as conn:
        schema = conn.execute("SELECT current_schema()").fetchone()[0]
        assert schema is not None and schema.startswith("t_"), schema
        assert schema not in _schemas_seen
        # The other turn made this very table in its own schema; this one sees nothing.
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", [schema]
        ).fetchall()
        assert tables == []
        assert conn.execute("SELECT to_regclass('marker')").fetchone()[0] is None
        # An unqualified CREATE lands in the test's schema, as the store's tables will.
        conn.execute("CREATE TABLE marker (turn int)")
        conn.execute("INSERT INTO marker VALUES (%s)", [turn])
        conn.commit()
        where = conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'marker'"
        ).fetchall()
        assert where == [(schema,)]  # earlier tests' schemas are gone, not just hidden
    with _connect(postgres_url) as conn:
        gone = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [_schemas_seen]
        ).fetchall()
        assert gone == []
    _schemas_seen.append(schema)


def test_with_search_path_encodes_for_libpq_and_keeps_other_options():
    assert (
        pgcluster.with_search_path("postgresql://u@h:5/db", "s1")
        == "postgresql://u@h:5/db?options=-csearch_path%3Ds1"
    )
    assert (
        pgcluster.with_search_path(
            "postgresql://u@h:5/db?sslmode=disable&options=-cstatement_timeout%3D5000", "s2"
        )
        == "postgresql://u@h:5/db?sslmode=disable"
        "&options=-cstatement_timeout%3D5000%20-csearch_path%3Ds2"
    )


# --- the skip/fail policy ---------------------------------------------------------------------


def test_no_binaries_outside_ci_skips_with_the_install_hint():
    got = pgcluster.decide({}, bindir=None)
    assert got.kind == "skip"
    assert "install Debian's postgresql to run them" in got.message
    assert pgcluster.decide({"CI": "false"}, bindir=None).kind == "skip"


@pytest.mark.parametrize("ci", ["true", "TRUE", "1"])
def test_no_binaries_under_ci_is_a_failure_never_a_skip(ci):
    got = pgcluster.decide({"CI": ci}, bindir=None)
    assert got.kind == "fail"
    assert "CI must run the PostgreSQL tests, not skip them" in got.message
    assert "IRONFLOW_TEST_POSTGRES" in got.message


def test_an_external_server_wins_and_binaries_start_a_cluster(tmp_path):
    url = "postgresql://me@db.example:5432/ci"
    for env in ({"IRONFLOW_TEST_POSTGRES": url}, {"IRONFLOW_TEST_POSTGRES": url, "CI": "true"}):
        got = pgcluster.decide(env, bindir=None)
        assert (got.kind, got.url) == ("external", url)
    got = pgcluster.decide({"CI": "true"}, bindir=tmp_path)
    assert (got.kind, got.bindir) == ("cluster", tmp_path)


def _fake_install(bindir: Path, names=pgcluster.REQUIRED_BINARIES) -> Path:
    bindir.mkdir(parents=True)
    for name in names:
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    return bindir


def test_binaries_found_via_pg_config_else_newest_debian_dir(tmp_path):
    lib = tmp_path / "lib"
    for version in ("9.6", "16", "15"):
        _fake_install(lib / version / "bin")
    _fake_install(lib / "17" / "bin", names=("pg_ctl",))  # a client-only install: no server
    assert pgcluster.find_bindir({}, pg_config=None, lib_root=lib) == lib / "16" / "bin"
    own = _fake_install(tmp_path / "own" / "bin")
    pg_config = tmp_path / "pg_config"
    pg_config.write_text(f"#!/bin/sh\necho {own}\n")
    pg_config.chmod(0o755)
    assert pgcluster.find_bindir({}, pg_config=str(pg_config), lib_root=lib) == own
    # pg_config of a client-only install (Debian's libpq-dev) points where no initdb is.
    pg_config.write_text(f"#!/bin/sh\necho {tmp_path / 'nowhere'}\n")
    assert pgcluster.find_bindir({}, pg_config=str(pg_config), lib_root=lib) == lib / "16" / "bin"
    assert pgcluster.find_bindir({}, pg_config=None, lib_root=tmp_path / "none") is None
    env = {pgcluster.BINDIR_ENV: str(tmp_path / "empty")}
    assert pgcluster.find_bindir(env, pg_config=str(pg_config), lib_root=lib) is None


def _pytest_without_postgres(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "empty").mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in {"CI", pgcluster.EXTERNAL_URL_ENV}}
    clean |= {pgcluster.BINDIR_ENV: str(tmp_path / "empty"), **env}
    here = "tests/test_postgres_cluster.py"
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            f"{here}::test_server_answers_with_fsync_on",
            f"{here}::test_two_connections_see_each_others_committed_rows_only",
            f"{here}::test_with_search_path_encodes_for_libpq_and_keeps_other_options",
        ],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_session_without_postgres_skips_loudly_once(tmp_path):
    result = _pytest_without_postgres(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    hint = "install Debian's postgresql to run them"
    line = f"PostgreSQL not found: 2 PostgreSQL tests skipped; {hint}"
    assert out.count(line) == 1, out
    assert "1 passed, 2 skipped" in out, out


def test_a_ci_session_without_postgres_fails(tmp_path):
    result = _pytest_without_postgres(tmp_path, CI="true")
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "1 passed, 2 errors" in out, out
    assert "CI must run the PostgreSQL tests, not skip them" in out, out
    assert "skipped" not in out, out
