"""The PostgreSQL store's hot statements find rows by key whatever the tables' size or
statistics: rows read per run stay flat as runs pile up (issue 11)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import ironflow
from ironflow import step

pytestmark = pytest.mark.postgres

TABLES = ("runs", "history", "timers", "waits", "inbox")


def _stats(url: str) -> dict[str, tuple[int, int, int]]:
    """Per table of the test's schema: (seq scans, rows read by seq scans, rows fetched by
    index scans)."""
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT relname, seq_scan, seq_tup_read, coalesce(idx_tup_fetch, 0) "
            "FROM pg_stat_user_tables WHERE schemaname = current_schema() "
            "AND relname = ANY(%s)",
            (list(TABLES),),
        ).fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in found}


def _burst(url: str, runs: int, limit: int | None) -> dict[str, tuple[int, int, int]]:
    """Start ``runs`` runs of a 3-step function, drive them all on one engine; what the engine's
    session read, per table."""

    @ironflow.function(id="burst", concurrency=limit)
    def flow(ctx: Any) -> Any:
        total = 0
        for i in range(3):
            total += yield step.run(f"s{i}", lambda i=i: i)
        return total

    engine = ironflow.Engine(url, poll="1h", lease="1h")
    try:
        engine.register(flow)
        run_ids = [engine.start(flow.id) for _ in range(runs)]
        before = _stats(url)
        engine.run_until_idle()
        assert {engine.get_run(run_id).output for run_id in run_ids} == {3}
        conn = engine.store.conn  # type: ignore[attr-defined]
        # The session's counters are reported when it goes idle; force it now, not in a second.
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
    finally:
        engine.close()
    after = _stats(url)
    return {
        table: tuple(a - b for a, b in zip(after[table], before.get(table, (0, 0, 0)), strict=True))
        for table in after
    }  # type: ignore[misc]


def test_rows_read_grow_linearly_with_queued_runs(postgres_url: str) -> None:
    """4x the runs queued behind ``concurrency=10`` read at most ~linearly more history rows
    (cached generic plans made each take a seq scan of history: 33x before). Runs: see
    ``test_takes_and_rounds_read_their_runs_not_the_tables`` (here, the planner still rightly
    reads the runs table whole while it is a few pages, as many times as timing makes takes)."""
    import pgcluster

    read: list[dict[str, tuple[int, int, int]]] = []
    for n in (100, 400):
        url, drop = pgcluster.new_schema(postgres_url)
        try:
            read.append(_burst(url, n, 10))
        finally:
            drop()
    small, big = read
    # Rows read (by seq scans and through indexes) in the big burst over the small one.
    ratios = {
        table: (big[table][1] + big[table][2]) / max(1, small[table][1] + small[table][2])
        for table in ("history",)
    }
    # Linear is 4 (measured: about 2).
    assert ratios["history"] < 6, (ratios, small, big)


def _read(url: str) -> dict[str, int]:
    """Rows read so far (by seq scans and through indexes) of runs and history."""
    return {table: row[1] + row[2] for table, row in _stats(url).items()}


def test_takes_and_rounds_read_their_runs_not_the_tables(pg_url: str) -> None:
    """Plans made while the tables were tiny (prepared statements, plpgsql's cached plans) and
    never analyzed still find a take's and a round's runs by key once the tables are large."""
    from ironflow.runtime.store.batch import Batch
    from ironflow.runtime.store.postgres import PostgresStore

    store = PostgresStore(pg_url)
    owner = "w1"

    def add(ids: str) -> None:
        # Runs this worker holds, 3 history rows each: ``ids`` is a generate_series query.
        store.query(
            "INSERT INTO runs (id, function_id, status, created_us, lease_owner, lease_until_us) "
            f"SELECT id, 'f', 'running', 0, %s, %s FROM ({ids}) AS s(id)",
            (owner, 2**62),
        )
        store.query(
            "INSERT INTO history (run_id, seq, type, ts_us, body) SELECT id, n, 'T', 0, '{}' "
            f"FROM ({ids}) AS s(id), generate_series(0, 2) AS n"
        )

    def drive(ids: list[str]) -> None:
        # As a round: the take (its statements prepared), then the commit.
        with store.take_transaction() as tx:
            assert [row[0] for row in tx.take_runs(ids, set(), owner, 2**62, 0, ("f",))] == ids
            # The rows are not real events: read, then reported as corrupt.
            corrupt: dict[str, Any] = {}
            assert sorted([*tx.histories(ids, corrupt), *corrupt]) == ids
        with store.transaction() as tx:
            ended = [("completed", "1", None, 1, 1, run_id) for run_id in ids]
            tx.commit_round(Batch(ended=ended, fenced=ids), owner)

    try:
        # Tiny tables: enough calls for the session to keep generic plans of them.
        for i in range(8):
            add(f"SELECT 'a{i}-' || n FROM generate_series(0, 1) AS n")
            drive([f"a{i}-0", f"a{i}-1"])
        add("SELECT 'b' || lpad(n::text, 5, '0') FROM generate_series(0, 4999) AS n")
        conn = store.conn
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
        before = _read(pg_url)
        drive([f"b{n:05}" for n in range(0, 100, 10)])
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
        after = _read(pg_url)
    finally:
        store.close()
    # 10 runs and their 30 history rows among 5,000 runs and 15,000 rows, each read a few
    # times (take, fence, update; a lock re-reads a row): not the tables.
    read = {table: after[table] - before[table] for table in ("runs", "history")}
    assert read["runs"] <= 100, read
    assert read["history"] <= 60, read


def test_a_schema_with_the_first_round_function_gets_the_second_on_open(pg_url: str) -> None:
    """A database an older ironflow opened (``ironflow_round_1`` only) gets ``ironflow_round_2``
    on open, beside the first, which an older engine sharing the database still calls."""
    from ironflow.runtime.store.postgres import PostgresStore
    from ironflow.runtime.store.postgres_round import ROUND_FUNCTION, ROUND_FUNCTION_NAME

    assert ROUND_FUNCTION_NAME == "ironflow_round_2"
    first = ROUND_FUNCTION.replace(ROUND_FUNCTION_NAME, "ironflow_round_1").replace(
        " SET enable_seqscan = off", ""
    )
    store = PostgresStore(pg_url)
    store.query(f"DROP FUNCTION {ROUND_FUNCTION_NAME}")
    store.conn.execute(first)  # no parameters: its %s are format()'s
    store.close()
    again = PostgresStore(pg_url)
    try:
        found = again.query(
            "SELECT proname, proconfig FROM pg_proc WHERE proname LIKE 'ironflow_round_%%' "
            "AND pronamespace = current_schema()::regnamespace ORDER BY proname"
        )
    finally:
        again.close()
    assert found == [("ironflow_round_1", None), ("ironflow_round_2", ["enable_seqscan=off"])]
