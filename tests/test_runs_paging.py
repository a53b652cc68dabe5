"""Listing runs a page at a time (issue 14): cursors, filters, and plans that seek an index.

The plans are read with EXPLAIN on both stores over thousands of runs: every listing the API
makes (unfiltered, by status, by function, by time, each first page and past a cursor) walks
one of the listing indexes in order, with no scan of the table and no sort.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from ironflow import Engine
from ironflow.runtime import paging
from ironflow.runtime.live import trigger

RUNS = 3000
FUNCTIONS = ("alpha", "beta", "gamma")


def _fill(engine: Engine, count: int) -> list[tuple[int, str]]:
    """``count`` runs, several per microsecond (ties broken by id), across three functions."""
    made = []
    with engine.store.transaction() as tx:
        for i in range(count):
            run_id, created = f"run-{i:05d}", 1_700_000_000_000_000 + i // 3
            fid = FUNCTIONS[i % 3]
            tx.create_run(run_id, fid, trigger(fid, None, created), created, None, None, False)
            made.append((created, run_id))
    return made


def test_pages_walk_every_run_once_newest_first(engine: Engine) -> None:
    made = _fill(engine, 250)
    expected = [rid for _, rid in sorted(made, key=lambda item: (-item[0], item[1]))]
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = engine.list_runs_page(limit=40, cursor=cursor)
        seen += [run.id for run in page.runs]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == expected and pages == 7
    assert len(engine.list_runs_page(limit=50, cursor=None).runs) == 50
    # A page that ends exactly at the last run says so: no empty page after it.
    assert engine.list_runs_page(limit=250).next_cursor is None
    beta = engine.list_runs_page(function="beta", limit=1000).runs
    assert [run.id for run in beta] == [rid for rid in expected if int(rid[4:]) % 3 == 1]
    assert engine.list_runs_page(status="failed").runs == []


def test_bad_paging_input_is_a_value_error_naming_it(engine: Engine) -> None:
    with pytest.raises(ValueError, match="cursor 'abc' is not a cursor this listing gave"):
        engine.list_runs_page(cursor="abc")
    with pytest.raises(ValueError, match="limit must be an int from 1 to 1000, got 0"):
        engine.list_runs_page(limit=0)
    with pytest.raises(ValueError, match="unknown run status 'done'"):
        engine.list_runs_page(status="done")
    with pytest.raises(ValueError, match="'yesterday' is not an ISO 8601 time"):
        engine.list_runs_page(created_after="yesterday")
    assert paging.decode_cursor(paging.encode_cursor(12, "r-1")) == (12, "r-1")


def _plans(engine: Engine) -> dict[str, str]:
    store: Any = engine.store
    sqlite = type(store).__name__.startswith("SQLite")
    if not sqlite:
        store.query("ANALYZE runs")
    after = (1_700_000_000_000_500, "run-01500")
    cases = {
        "first page": (None, None, None, None, None),
        "past a cursor": (None, None, None, None, after),
        "by status": ("pending", None, None, None, None),
        "by status past a cursor": ("failed", None, None, None, after),
        "by a rare status": ("blocked", None, None, None, None),
        "by function": (None, "beta", None, None, None),
        "by function past a cursor": (None, "beta", None, None, after),
        "by time": (None, None, after[0] - 100, after[0], None),
    }
    plans = {}
    for name, (status, fid, since, until, cursor) in cases.items():
        sql, params = store.page_query(status, fid, since, until, cursor, 51)
        rows = store.query(("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + sql, params)
        plans[name] = "\n".join(str(row[-1] if sqlite else row[0]) for row in rows)
    return plans


def test_every_listing_seeks_an_index_and_never_scans_or_sorts(engine: Engine) -> None:
    _fill(engine, RUNS)
    sqlite = type(engine.store).__name__.startswith("SQLite")
    plans = _plans(engine)
    if not sqlite:  # a status few runs have: its own index, whatever the statistics
        assert "Index Scan using runs_status_created on runs" in plans["by a rare status"]
    for name, plan in plans.items():
        index = (
            "runs_function_created"
            if "function" in name
            else ("runs_status_created" if "status" in name else "runs_created")
        )
        if sqlite:
            runs_lines = [line for line in plan.splitlines() if " runs " in f"{line} "]
            assert runs_lines and all(f"USING INDEX {index}" in line for line in runs_lines), (
                name,
                plan,
            )
            assert "TEMP B-TREE" not in plan, (name, plan)
        else:
            # PostgreSQL weighs the indexes by its statistics: a status every run has is
            # served as well by walking runs_created and filtering (it stops at the page).
            used = re.findall(r"Index (?:Only )?Scan(?: Backward)? using (\w+) on runs", plan)
            assert used and set(used) <= {index, "runs_created"}, (name, plan)
            # No Sort node; a Merge Append of index scans (pending with queued) has a key.
            assert "Seq Scan on runs" not in plan and "Sort  (" not in plan, (name, plan)
