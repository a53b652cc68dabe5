"""Issue 13's benchmark rows: what flow control costs, on SQLite (NORMAL), in one command.

    PYTHONPATH=<checkout> python benchmarks/flow.py [--quick] [--repeat N] [--json FILE]

The script uses only ironflow's public API, so the same file measures any checkout: run it
with ``PYTHONPATH`` set to this branch and to the previous main, side by side, and compare.
Each row is a wall time (best of ``--repeat``, gc on) and a deterministic count: SQLite
virtual-machine instructions (every one, from ``set_progress_handler(..., 1)`` on the
engine's connection, in one more run that is not timed), which a busy machine does not
move. Rows:

* ``per step, no options``: one run of N trivial sequential steps, per step;
* ``start, no options``: ``engine.start`` of a 1-step function, per call (not driven);
* ``start+drive, no options``: N 1-step runs started, then ``run_until_idle``, per run;
* ``start+drive, concurrency=10``: the same runs behind ``concurrency=10`` (all queued at
  once, admitted ten at a time), per run; ``added per run``: the difference;
* ``concurrency=10, 2,500 / 10,000 queued``: per run, and the growth from 2,500 to 10,000
  (1.0 is linear; quadratic work in the queue length would be about 4).

The first three must stay within 3% of the previous main; a checkout without
``concurrency=`` prints ``n/a`` for the others.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import ironflow
from ironflow import step

FULL = {"steps": 2_000, "starts": 5_000, "runs": 5_000, "small_queue": 2_500, "queue": 10_000}
QUICK = {"steps": 50, "starts": 100, "runs": 100, "small_queue": 100, "queue": 400}


def trivial(i: int) -> int:
    return i


def sequential(n: int) -> Any:
    def flow(ctx: Any) -> Any:
        for i in range(n):
            yield step.run(f"s{i}", trivial, i)

    return ironflow.function(id="sequential")(flow)


def one_step(limit: int | None) -> Any:
    def flow(ctx: Any) -> Any:
        return (yield step.run("body", trivial, 1))

    if limit is None:
        return ironflow.function(id="one-step")(flow)
    return ironflow.function(id="one-step-limited", concurrency=limit)(flow)


class Meter:
    """Fresh database files in one directory; wall time and VM steps of a workload."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.made = 0

    def engine(self, fn: Any) -> Any:
        self.made += 1
        path = os.path.join(self.root, f"bench-{self.made}.db")
        engine = ironflow.Engine(path, durability="normal")
        engine.register(fn)
        return engine

    def measure(
        self, fn: Any, work: Callable[[Any], float], repeat: int
    ) -> tuple[float, int | None]:
        """Best wall time ``work`` reports over ``repeat`` fresh engines, and the VM steps of
        one more run (counting slows it: not timed)."""
        best = float("inf")
        for _ in range(repeat):
            engine = self.engine(fn)
            try:
                gc.collect()
                best = min(best, work(engine))
            finally:
                engine.close()
        engine = self.engine(fn)
        conn = getattr(engine.store, "conn", None)
        try:
            if not isinstance(conn, sqlite3.Connection):
                work(engine)
                return best, None
            counted = [0]

            def tick() -> int:
                counted[0] += 1
                return 0

            conn.set_progress_handler(tick, 1)
            work(engine)
            conn.set_progress_handler(None, 0)
            return best, counted[0]
        finally:
            engine.close()


def runs_done(engine: Any, function_id: str, n: int) -> None:
    done = len(engine.list_runs(function=function_id, status="completed", limit=n + 1))
    if done != n:
        raise RuntimeError(f"{done} of {n} runs of {function_id} completed")


def start_and_drive(fn: Any, n: int) -> Callable[[Any], float]:
    def work(engine: Any) -> float:
        begin = time.perf_counter()
        for _ in range(n):
            engine.start(fn.id)
        engine.run_until_idle()
        elapsed = time.perf_counter() - begin
        runs_done(engine, fn.id, n)
        return elapsed

    return work


def rows(sizes: dict[str, int], repeat: int, root: str) -> list[dict[str, Any]]:
    meter = Meter(root)
    table: list[dict[str, Any]] = []

    def add(name: str, wall: float | None, vm: float | None, unit: str, note: str) -> None:
        table.append({"name": name, "wall": wall, "vm_steps": vm, "unit": unit, "note": note})

    n = sizes["steps"]
    flow = sequential(n)

    def steps(engine: Any) -> float:
        begin = time.perf_counter()
        run_id = engine.start(flow.id)
        engine.run_until_idle()
        elapsed = time.perf_counter() - begin
        runs_done(engine, flow.id, 1)
        assert engine.get_run(run_id).status == "completed"
        return elapsed

    wall, vm = meter.measure(flow, steps, repeat)
    add("per step, no options", wall / n * 1e6, _per(vm, n), "us", f"1 run of {n:,} steps")

    plain = one_step(None)
    n = sizes["starts"]

    def starts(engine: Any) -> float:
        begin = time.perf_counter()
        for _ in range(n):
            engine.start(plain.id)
        return time.perf_counter() - begin

    wall, vm = meter.measure(plain, starts, repeat)
    add("start, no options", wall / n * 1e6, _per(vm, n), "us", f"{n:,} starts, not driven")

    n = sizes["runs"]
    wall, vm = meter.measure(plain, start_and_drive(plain, n), repeat)
    plain_us, plain_vm = wall / n * 1e6, _per(vm, n)
    add("start+drive, no options", plain_us, plain_vm, "us", f"{n:,} 1-step runs")

    try:
        limited = one_step(10)
    except TypeError:  # a checkout from before flow control
        for name in (
            "start+drive, concurrency=10",
            "concurrency=10: added per run",
            f"concurrency=10, {sizes['small_queue']:,} queued",
            f"concurrency=10, {sizes['queue']:,} queued",
            "concurrency=10: growth per run, small -> large queue",
        ):
            add(name, None, None, "", "n/a: no concurrency= in this ironflow")
        return table
    wall, vm = meter.measure(limited, start_and_drive(limited, n), repeat)
    limited_us, limited_vm = wall / n * 1e6, _per(vm, n)
    add("start+drive, concurrency=10", limited_us, limited_vm, "us", f"{n:,} runs queued at once")
    added_vm = None if limited_vm is None or plain_vm is None else limited_vm - plain_vm
    add("concurrency=10: added per run", limited_us - plain_us, added_vm, "us", "vs no options")

    per: dict[int, tuple[float, float | None]] = {}
    for size in (sizes["small_queue"], sizes["queue"]):
        wall, vm = meter.measure(limited, start_and_drive(limited, size), repeat)
        per[size] = (wall / size * 1e6, _per(vm, size))
        add(f"concurrency=10, {size:,} queued", *per[size], "us", "per run, all queued at once")
    small, large = per[sizes["small_queue"]], per[sizes["queue"]]
    vm_growth = None if small[1] is None or large[1] is None else large[1] / small[1]
    add(
        "concurrency=10: growth per run, small -> large queue",
        large[0] / small[0],
        vm_growth,
        "x",
        "1.0 is linear; O(n^2) would be ~4",
    )
    return table


def _per(vm: int | None, n: int) -> float | None:
    return None if vm is None else vm / n


def format_table(table: list[dict[str, Any]]) -> str:
    width = max(len(row["name"]) for row in table)
    lines = [f"{'row':<{width}}  {'wall':>10}  {'VM instr':>10}  unit  note"]
    for row in table:
        wall = "n/a" if row["wall"] is None else f"{row['wall']:.2f}"
        vm = "n/a" if row["vm_steps"] is None else f"{row['vm_steps']:.1f}"
        lines.append(
            f"{row['name']:<{width}}  {wall:>10}  {vm:>10}  {row['unit']:<4}  {row['note']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="benchmarks/flow.py", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--repeat", type=int, default=None, help="best of N (default 3, quick 1)")
    parser.add_argument("--dir", default=None, help="where the temporary databases go")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write rows as JSON")
    args = parser.parse_args(argv)
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="ironflow-flow-bench-", dir=args.dir) as root:
        print(
            f"ironflow flow-control benchmark: ironflow from {os.path.dirname(ironflow.__file__)}, "
            f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load "
            f"{os.getloadavg()[0]:.2f}; NORMAL, gc on, best of {repeat}"
        )
        sys.stdout.flush()
        table = rows(sizes, repeat, root)
    print(format_table(table))
    if args.json:
        with open(args.json, "w") as out:
            json.dump(table, out, indent=2)
    return table


if __name__ == "__main__":
    main()
