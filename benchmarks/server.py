"""How fast does the HTTP API answer on big databases?

``python -m benchmarks.server`` measures, on a temporary SQLite file (``--db URL`` for another
store, e.g. a PostgreSQL URL with its own schema), through the real ASGI app in process
(Litestar's test client: routing, auth, JSON encoding; no network):

* ``GET /api/runs/{id}`` of a run of 1,000 steps (target: 50 ms);
* ``GET /api/runs/{id}/history`` of that run (no target; the page a web view loads);
* ``GET /api/runs?limit=50`` over 100,000 runs: the first page, a page deep in the listing
  (past a cursor), and filtered by status and by function (target: p50 100 ms).

Each is requested ``--repeat`` times; p50 and p95 are printed. The runs are written in one
transaction through the store's own verbs (``create_run``) so the setup takes seconds.
``--quick`` shrinks the sizes for a smoke run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import ironflow
from ironflow import Engine, step
from ironflow.runtime.live import trigger
from ironflow.runtime.paging import encode_cursor
from ironflow.runtime.store.rows import to_us

TARGET_RUN_MS = 50.0
TARGET_LIST_MS = 100.0


@ironflow.function(id="long")
def long_run(ctx: Any) -> Any:
    for i in range(ctx.event.data["steps"]):
        yield step.run(f"s{i}", lambda i=i: i)
    return "done"


def fill(engine: Engine, count: int) -> str:
    """``count`` runs of three functions, one in 50 failed; the id of one deep in the list."""
    now = 1_700_000_000_000_000
    middle = ""
    batch = 10_000
    for start in range(0, count, batch):
        with engine.store.transaction() as tx:
            for i in range(start, min(start + batch, count)):
                fid = ("alpha", "beta", "gamma")[i % 3]
                run_id = f"bulk-{i:07d}"
                tx.create_run(
                    run_id, fid, trigger(fid, {"i": i}, now + i), now + i, None, None, False
                )
                if i == count // 2:
                    middle = run_id
    return middle


def timed(client: Any, path: str, repeat: int, **params: Any) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        response = client.get(path, params=params or None)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    times.sort()
    return statistics.median(times), times[max(0, int(len(times) * 0.95) - 1)]


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default=None, help="database URL (default: a temp SQLite file)")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=1_000)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.steps, args.repeat = 2_000, 50, 3
    warnings.simplefilter("ignore")  # Litestar's deprecation notes are not results
    from litestar.testing import TestClient

    from ironflow.server import create_app

    with tempfile.TemporaryDirectory() as folder:
        url = args.db or str(Path(folder) / "bench.db")
        engine = Engine(url, durability="normal")
        engine.register(long_run)
        run_id = engine.start("long", {"steps": args.steps})
        engine.run_until_idle()
        assert engine.get_run(run_id).status == "completed"
        started = time.perf_counter()
        middle = fill(engine, args.runs)
        setup_s = time.perf_counter() - started
        rows: list[dict[str, Any]] = []
        with TestClient(create_app(engine)) as client:
            # A cursor half way down the listing: the run in the middle.
            mid_run = engine.get_run(middle)
            assert mid_run.created_at is not None
            cursor = encode_cursor(to_us(mid_run.created_at), middle)
            cases = [
                (
                    f"GET /api/runs/{{id}} ({args.steps:,} steps)",
                    f"/api/runs/{run_id}",
                    {},
                    TARGET_RUN_MS,
                ),
                (
                    f"GET /api/runs/{{id}}/history ({args.steps:,} steps)",
                    f"/api/runs/{run_id}/history",
                    {},
                    None,
                ),
                (
                    f"GET /api/runs first page ({args.runs:,} runs)",
                    "/api/runs",
                    {"limit": 50},
                    TARGET_LIST_MS,
                ),
                (
                    "GET /api/runs past a cursor half way",
                    "/api/runs",
                    {"limit": 50, "cursor": cursor},
                    TARGET_LIST_MS,
                ),
                (
                    "GET /api/runs?status=completed",
                    "/api/runs",
                    {"limit": 50, "status": "completed"},
                    TARGET_LIST_MS,
                ),
                (
                    "GET /api/runs?function=beta",
                    "/api/runs",
                    {"limit": 50, "function": "beta"},
                    TARGET_LIST_MS,
                ),
            ]
            print(f"store: {engine.store.path}; {args.runs:,} runs written in {setup_s:.1f}s")
            print(f"{'request':<46} {'p50 ms':>8} {'p95 ms':>8} {'target':>8}")
            for label, path, params, target in cases:
                timed(client, path, 2, **params)  # warm the caches
                p50, p95 = timed(client, path, args.repeat, **params)
                verdict = "-" if target is None else ("ok" if p50 <= target else "SLOW")
                shown = "-" if target is None else f"{target:.0f}"
                print(f"{label:<46} {p50:>8.2f} {p95:>8.2f} {shown:>8} {verdict}")
                rows.append({"request": label, "p50_ms": p50, "p95_ms": p95, "target_ms": target})
        engine.close()
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
