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
    """4x the runs queued behind ``concurrency=10`` read at most ~linearly more rows of runs and
    history (cached generic plans made them seq scans: 14x and 35x before)."""
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
        for table in ("runs", "history")
    }
    # Linear is 4; small tables are still read whole at times (a seq scan of a few pages is
    # what the planner rightly picks then), and admission counts a key's slots.
    assert ratios["history"] < 6, (ratios, small, big)
    assert ratios["runs"] < 8, (ratios, small, big)
