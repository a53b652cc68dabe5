"""How fast is the embedded engine, next to what SQLite itself can do on this machine?

``python -m benchmarks.engine`` measures, in one run on temporary SQLite files:

* ``floor``: the SQLite commit floor — one minimal write transaction (``BEGIN IMMEDIATE``;
  insert one history-like row; ``COMMIT``) on a fresh WAL database, ``synchronous=FULL`` and
  ``NORMAL``. Every engine number is read against it: a step must commit at least once.
* ``step``: per-step overhead of one sequential run of trivial steps (FULL and NORMAL), as wall
  time per step and as a multiple of the floor of the same mode.
* ``throughput``: 1-step workflows per second (NORMAL): start N runs, then ``run_until_idle``.
* ``batch``: 1,000 workflows of 3 steps (NORMAL), sequentially (start one, run it to completion,
  next) and all at once (start all, one ``run_until_idle``).
* ``replay``: a run with a long history read back from the store and replayed cold, in events
  per second (``Engine.history`` + ``ironflow.interpreter.replay``, and the engine's own cold
  load path, ``Driver.acquire_all``), beside its floor: the same history rows fetched with the
  store's own statement and their bodies parsed by one ``json.loads`` (no events built).
* ``latency``: emit → resume in-process, with ``serve()`` on a background thread: the time from
  ``engine.emit(...)`` until the parked run's next step body starts (its resume is committed by
  then), and until that step's result is committed (seen by polling a second connection).
* ``rss``: resident memory and threads added by parking 100,000 runs in a day-long sleep
  (virtual clock), measured in a fresh subprocess.

Timings use ``time.perf_counter`` with the garbage collector on (as in production); where a
measurement is repeated the best of ``--repeat`` is kept. ``--quick`` shrinks every size for a
CI smoke run (its pass/fail column means little); ``--only NAME`` runs some sections.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import json
import os
import platform
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ironflow
from ironflow import step
from ironflow.history import StepCompleted
from ironflow.interpreter import Interpreter, replay
from ironflow.runtime.store import rows as store_rows
from ironflow.runtime.store.sqlite_round import HISTORIES
from ironflow.testing import VirtualClock

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("floor", "step", "throughput", "batch", "replay", "latency", "rss")
MODES = ("full", "normal")


def _mode(mode: str) -> str:
    return mode.upper()


# Every row the benchmark prints, by section, in order (names do not depend on sizes).
ROWS: dict[str, list[str]] = {
    "floor": [f"commit floor ({_mode(m)})" for m in MODES],
    "step": [
        name
        for m in MODES
        for name in (f"per-step wall ({_mode(m)})", f"per-step / floor ({_mode(m)})")
    ],
    "throughput": [
        "1-step workflows/s, start+drive (NORMAL)",
        "1-step workflows/s, drive only (NORMAL)",
        "1-step workflows/s, concurrency=10, start+drive (NORMAL)",
        "concurrency=10: added per run (NORMAL)",
    ],
    "batch": [
        "1k x 3-step, sequential (NORMAL)",
        "1k x 3-step, all at once (NORMAL)",
    ],
    "replay": [
        "read floor: SQLite rows + json.loads",
        "store read+decode (Engine.history)",
        "interpreter replay (pure)",
        "cold replay: history + replay",
        "cold load: engine acquire",
    ],
    "latency": [
        "emit -> next step started, median (NORMAL)",
        "emit -> next step started, p95 (NORMAL)",
        "emit -> step result committed, median (NORMAL)",
        "emit -> step result committed, p95 (NORMAL)",
        "emit -> next step started, median (FULL)",
        "emit -> next step started, p95 (FULL)",
    ],
    "rss": [
        "parked runs: RSS added",
        "parked runs: RSS per 1k runs",
        "parked runs: threads added",
        "parked runs: start rate",
        "parked runs: drive rate",
    ],
}
ROW_NAMES = [name for section in SECTIONS for name in ROWS[section]]

FULL_SIZES = {
    "floor_commits": 2_000,
    "steps": 2_000,
    "throughput": 5_000,
    "batch": 1_000,
    "replay_steps": 20_000,
    "latency_trials": 200,
    "rss_runs": 100_000,
}
QUICK_SIZES = {
    "floor_commits": 100,
    "steps": 100,
    "throughput": 200,
    "batch": 50,
    "replay_steps": 500,
    "latency_trials": 20,
    "rss_runs": 2_000,
}


# --- workflows -------------------------------------------------------------------------------


def work(i: int) -> int:
    """The body of every trivial step."""
    return i


def sequential(n: int) -> ironflow.Function:
    """``n`` trivial steps, one after another."""

    def flow(ctx: Any) -> Any:
        total = 0
        for i in range(n):
            total += yield step.run(f"s{i}", work, i)
        return total

    return ironflow.function(id=f"sequential-{n}")(flow)


@ironflow.function(id="one-step")
def one_step(ctx: Any) -> Any:
    return (yield step.run("only", work, 1))


@ironflow.function(id="one-step-limited", concurrency=10)
def one_step_limited(ctx: Any) -> Any:
    """``one_step`` behind ``concurrency=10``: every run queues, is admitted, frees a slot."""
    return (yield step.run("only", work, 1))


@ironflow.function(id="three-steps")
def three_steps(ctx: Any) -> Any:
    a = yield step.run("a", work, 1)
    b = yield step.run("b", work, 2)
    c = yield step.run("c", work, 3)
    return a + b + c


def long_then_park(n: int) -> ironflow.Function:
    """``n`` trivial steps, then a wait for an event nobody sends: a long history, not done."""

    def flow(ctx: Any) -> Any:
        for i in range(n):
            yield step.run(f"s{i}", work, i)
        yield step.wait_for_event("park", event="never.sent", timeout="7d")

    return ironflow.function(id=f"long-{n}")(flow)


# Step bodies of the latency workflow report here: trial -> (perf_counter at start, signal).
_STARTED: dict[int, float] = {}
_SIGNALS: dict[int, threading.Event] = {}


def mark(k: int) -> int:
    _STARTED[k] = time.perf_counter()
    _SIGNALS[k].set()
    return k


@ironflow.function(id="parked-on-event")
def parked_on_event(ctx: Any) -> Any:
    event = yield step.wait_for_event("wake", event="bench.go", match="data.k", timeout="1d")
    return (yield step.run("after", mark, event.data["k"]))


@ironflow.function(id="day-nap")
def day_nap(ctx: Any) -> Any:
    yield step.sleep("nap", "1d")


# --- helpers ---------------------------------------------------------------------------------


def best_of(fn: Callable[[], float], repeat: int) -> float:
    """The smallest of ``repeat`` results of ``fn`` (each a duration it measured itself)."""
    return min(fn() for _ in range(repeat))


def row(
    name: str,
    value: float | None,
    unit: str,
    target: str = "",
    ok: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    assert name in ROW_NAMES, name
    return {"name": name, "value": value, "unit": unit, "target": target, "ok": ok, "note": note}


def at_most(value: float | None, limit: float) -> bool | None:
    return None if value is None else value <= limit


def at_least(value: float | None, limit: float) -> bool | None:
    return None if value is None else value >= limit


def percentile(values: Sequence[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


class Workspace:
    """Fresh database files in one temporary directory."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._count = 0

    def path(self, label: str) -> str:
        self._count += 1
        return os.path.join(self.root, f"{self._count:03d}-{label}.db")


def new_engine(ws: Workspace, label: str, durability: str, *functions: Any, **kw: Any) -> Any:
    engine = ironflow.Engine(ws.path(label), durability=durability, **kw)
    for fn in functions:
        engine.register(fn)
    return engine


def count_status(engine: Any, status: str) -> int:
    return len(engine.list_runs(status=status))


def commits(engine: Any) -> int | None:
    stats = getattr(engine, "stats", None)
    return stats.get("commits") if isinstance(stats, dict) else None


# --- 1. the commit floor ---------------------------------------------------------------------

HISTORY_DDL = (
    "CREATE TABLE history (run_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, "
    "ts_us INTEGER NOT NULL, body TEXT NOT NULL, PRIMARY KEY (run_id, seq)) WITHOUT ROWID"
)
HISTORY_BODY = json.dumps({"id": "s1", "attempt": 1, "result": 1}, separators=(",", ":"))


def commit_floor(ws: Workspace, mode: str, n: int, repeat: int) -> float:
    """Seconds per minimal write transaction: best mean of ``repeat`` batches of ``n``."""
    conn = sqlite3.connect(ws.path(f"floor-{mode}"), isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {_mode(mode)}")
        conn.execute(HISTORY_DDL)
        seq = 0

        def batch() -> float:
            nonlocal seq
            execute = conn.execute
            start = time.perf_counter()
            for _ in range(n):
                execute("BEGIN IMMEDIATE")
                execute(
                    "INSERT INTO history VALUES (?, ?, ?, ?, ?)",
                    ("run-1", seq, "StepCompleted", 1_767_225_600_000_000 + seq, HISTORY_BODY),
                )
                execute("COMMIT")
                seq += 1
            return (time.perf_counter() - start) / n

        return best_of(batch, repeat)
    finally:
        conn.close()


def bench_floor(ws: Workspace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["floor_commits"]
    out = []
    for mode in MODES:
        floors[mode] = commit_floor(ws, mode, n, repeat)
        out.append(
            row(
                f"commit floor ({_mode(mode)})",
                floors[mode] * 1e6,
                "us/commit",
                note=f"best mean of {repeat} x {n:,} commits, fresh WAL db",
            )
        )
    return out


# --- 2. per-step overhead --------------------------------------------------------------------


def bench_step(ws: Workspace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["steps"]
    flow = sequential(n)
    out = []
    for mode in MODES:
        if mode not in floors:
            floors[mode] = commit_floor(ws, mode, sizes["floor_commits"], repeat)
        commit_counts: list[int | None] = []

        def once(mode: str = mode, commit_counts: list[int | None] = commit_counts) -> float:
            engine = new_engine(ws, f"steps-{mode}", mode, flow)
            try:
                run_id = engine.start(flow.id)
                before = commits(engine)
                start = time.perf_counter()
                engine.run_until_idle()
                elapsed = time.perf_counter() - start
                after = commits(engine)
                run = engine.get_run(run_id)
                if run.status != "completed" or run.output != n * (n - 1) // 2:
                    raise RuntimeError(f"sequential run ended {run.status}: {run}")
                if before is not None and after is not None:
                    commit_counts.append(after - before)
                return elapsed / n
            finally:
                engine.close()

        per_step = best_of(once, repeat)
        ratio = per_step / floors[mode]
        per = ""
        if commit_counts and commit_counts[-1] is not None:
            per = f"; {commit_counts[-1] / n:.2f} commits/step"
        out.append(
            row(
                f"per-step wall ({_mode(mode)})",
                per_step * 1e6,
                "us/step",
                note=f"best of {repeat}, one run of {n:,} trivial steps{per}",
            )
        )
        out.append(
            row(
                f"per-step / floor ({_mode(mode)})",
                ratio,
                "x floor",
                "<= 1.5x",
                at_most(ratio, 1.5),
                note=f"floor {floors[mode] * 1e6:.1f} us",
            )
        )
    return out


# --- 3. 1-step workflows per second ----------------------------------------------------------


def bench_throughput(ws: Workspace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["throughput"]
    best_total, best_drive = float("inf"), float("inf")
    for _ in range(repeat):
        engine = new_engine(ws, "throughput", "normal", one_step)
        try:
            start = time.perf_counter()
            for _ in range(n):
                engine.start(one_step.id)
            started = time.perf_counter()
            engine.run_until_idle()
            end = time.perf_counter()
            done = count_status(engine, "completed")
            if done != n:
                raise RuntimeError(f"{done} of {n} one-step runs completed")
        finally:
            engine.close()
        best_total = min(best_total, end - start)
        best_drive = min(best_drive, end - started)
    total_rate, drive_rate = n / best_total, n / best_drive
    note = f"best of {repeat}, {n:,} runs"
    best_limited = float("inf")
    for _ in range(repeat):  # the same runs, all started at once behind concurrency=10
        engine = new_engine(ws, "limited", "normal", one_step_limited)
        try:
            start = time.perf_counter()
            for _ in range(n):
                engine.start(one_step_limited.id)
            engine.run_until_idle()
            end = time.perf_counter()
            done = count_status(engine, "completed")
            if done != n:
                raise RuntimeError(f"{done} of {n} concurrency-limited runs completed")
        finally:
            engine.close()
        best_limited = min(best_limited, end - start)
    limited_rate = n / best_limited
    added_us = (best_limited - best_total) / n * 1e6
    return [
        row(
            "1-step workflows/s, start+drive (NORMAL)",
            total_rate,
            "runs/s",
            ">= 5,000/s",
            at_least(total_rate, 5000),
            note,
        ),
        row(
            "1-step workflows/s, drive only (NORMAL)",
            drive_rate,
            "runs/s",
            ">= 5,000/s",
            at_least(drive_rate, 5000),
            note + " (starts not timed)",
        ),
        row(
            "1-step workflows/s, concurrency=10, start+drive (NORMAL)",
            limited_rate,
            "runs/s",
            "",
            None,
            note + ", all queued at once",
        ),
        row(
            "concurrency=10: added per run (NORMAL)",
            added_us,
            "us",
            "",
            None,
            "vs the plain row above, same run",
        ),
    ]


# --- 4. 1,000 x 3 steps ----------------------------------------------------------------------


def bench_batch(ws: Workspace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["batch"]
    expected = 6

    def check(engine: Any) -> None:
        runs = engine.list_runs(function=three_steps.id)
        bad = [r for r in runs if r.status != "completed" or r.output != expected]
        if len(runs) != n or bad:
            raise RuntimeError(f"{len(runs)} runs, {len(bad)} not completed with {expected}")

    def one_by_one() -> float:
        engine = new_engine(ws, "batch-seq", "normal", three_steps)
        try:
            start = time.perf_counter()
            for _ in range(n):
                engine.start(three_steps.id)
                engine.run_until_idle()
            elapsed = time.perf_counter() - start
            check(engine)
            return elapsed
        finally:
            engine.close()

    split: list[tuple[float, float]] = []

    def all_at_once() -> float:
        engine = new_engine(ws, "batch-all", "normal", three_steps)
        try:
            start = time.perf_counter()
            for _ in range(n):
                engine.start(three_steps.id)
            started = time.perf_counter()
            engine.run_until_idle()
            end = time.perf_counter()
            check(engine)
            split.append((started - start, end - started))
            return end - start
        finally:
            engine.close()

    sequential_s = best_of(one_by_one, repeat)
    at_once_s = best_of(all_at_once, repeat)
    starts, drive = min(split, key=sum)
    limit = 0.5 * n / 1000
    scaled = "" if n == 1000 else f" (0.5 s scaled to {n:,} runs)"
    return [
        row(
            "1k x 3-step, sequential (NORMAL)",
            sequential_s,
            "s",
            note=f"best of {repeat}, {n:,} runs: start one, run_until_idle, next; "
            f"{sequential_s / n * 1e3:.2f} ms/run",
        ),
        row(
            "1k x 3-step, all at once (NORMAL)",
            at_once_s,
            "s",
            f"<= {limit:g} s{scaled}",
            at_most(at_once_s, limit),
            note=f"best of {repeat}, {n:,} runs; starts {starts:.3f} s + drive {drive:.3f} s",
        ),
    ]


# --- 5. replay from the store ----------------------------------------------------------------


def synthesize_history(engine: Any, flow: ironflow.Function, run_id: str) -> int:
    """Append to ``run_id``'s stored history what the engine would record for ``flow``.

    The interpreter decides, scripted outcomes (each step returns its function's result)
    answer, and the rows are encoded as the engine encodes them; this keeps the setup of a
    long history independent of the engine's speed. Returns the history's length.
    """
    history = list(engine.history(run_id))
    interp = Interpreter(flow)
    decision = interp.feed(history)
    now = history[-1].ts
    tick = _dt.timedelta(milliseconds=1)

    def follow(decision: Any) -> Any:
        if decision.events:
            history.extend(decision.events)
            interp.feed(list(decision.events))
        return decision

    decision = follow(decision)
    while True:
        runnable = [w for w in decision.pending if w.kind == "run"]
        if not runnable:
            break
        todo = runnable[0]
        command: Any = todo.command
        now += tick
        completed = StepCompleted(
            seq=len(history),
            ts=now,
            id=todo.id,
            attempt=todo.attempt,
            result=command.fn(*command.args),
        )
        history.append(completed)
        decision = follow(interp.feed([completed]))
    if decision.done or [w.kind for w in decision.pending] != ["wait_event"]:
        raise RuntimeError(f"synthesized run should be parked on its wait: {decision}")
    store = engine.store
    with store.transaction() as tx:
        conn = tx.conn
        mark = "?" if isinstance(conn, sqlite3.Connection) else "%s"  # PostgreSQL: psycopg
        # A run not driven yet has no stored RunStarted: engine.history made it from the row.
        (stored,) = conn.execute(
            f"SELECT COUNT(*) FROM history WHERE run_id = {mark}", (run_id,)
        ).fetchone()
        tx.append_history([(run_id, *store_rows.encode(event)) for event in history[stored:]])
        conn.execute(
            f"UPDATE runs SET status = 'waiting', ready = 0 WHERE id = {mark}",
            (run_id,),
        )
    return len(history)


def bench_replay(ws: Workspace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["replay_steps"]
    flow = long_then_park(n)
    engine = new_engine(ws, "replay", "normal", flow)
    out = []
    try:
        run_id = engine.start(flow.id)
        events = synthesize_history(engine, flow, run_id)

        def check(decision: Any) -> None:
            if decision.done or decision.commands or decision.events:
                raise RuntimeError(f"cold replay decided something new: {decision}")

        def read() -> float:
            start = time.perf_counter()
            history = engine.history(run_id)
            elapsed = time.perf_counter() - start
            if len(history) != events:
                raise RuntimeError(f"read {len(history)} events, stored {events}")
            return elapsed

        conn = engine.store.conn
        statement = HISTORIES.format(where="run_id = ?")

        def floor() -> float:
            # What any decoder of these rows pays: SQLite's rows and one json.loads of their
            # bodies, the GC paused as the store's read pauses it.
            start = time.perf_counter()
            with store_rows.gc_paused():
                found = conn.execute(statement, (run_id,)).fetchall()
                bodies = json.loads("[" + ",".join([row[4] for row in found]) + "]")
            elapsed = time.perf_counter() - start
            if len(bodies) != events:
                raise RuntimeError(f"read {len(bodies)} bodies, stored {events}")
            return elapsed

        stored = engine.history(run_id)

        def pure() -> float:
            start = time.perf_counter()
            decision = replay(flow, stored)
            elapsed = time.perf_counter() - start
            check(decision)
            return elapsed

        def cold() -> float:
            start = time.perf_counter()
            decision = replay(flow, engine.history(run_id))
            elapsed = time.perf_counter() - start
            check(decision)
            return elapsed

        note = f"best of {repeat}, {events:,} events ({n:,} steps), cold = no cached interpreter"
        floor_rate = None
        for name, fn, target in (
            ("read floor: SQLite rows + json.loads", floor, False),
            ("store read+decode (Engine.history)", read, False),
            ("interpreter replay (pure)", pure, False),
            ("cold replay: history + replay", cold, True),
        ):
            rate = events / best_of(fn, repeat)
            if floor_rate is None:
                floor_rate = rate
                out.append(row(name, rate, "events/s", note=f"{note}; no events built"))
            elif target:
                of_floor = f"{note}; {floor_rate / rate:.2f}x the floor's time"
                out.append(
                    row(name, rate, "events/s", ">= 200,000/s", at_least(rate, 200_000), of_floor)
                )
            else:
                out.append(row(name, rate, "events/s", note=note))
        out.append(acquire_row(engine, run_id, events, repeat, note))
    finally:
        engine.close()
    return out


def acquire_row(engine: Any, run_id: str, events: int, repeat: int, note: str) -> dict[str, Any]:
    """Time the engine's own cold load (lease, read, decode, feed); rolled back after each try.

    Uses the driver's ``acquire_all(tx, run_ids, now_us, mail, broken)`` in a transaction, with
    the cyclic GC paused as the engine's rounds have it: private, so a missing one skips the
    row.
    """
    name = "cold load: engine acquire"
    target = ">= 200,000/s"
    driver = getattr(engine, "_driver", None)
    live_cache = getattr(driver, "live", None)
    acquire_all = getattr(driver, "acquire_all", None)
    if not isinstance(live_cache, dict) or acquire_all is None:
        return row(name, None, "events/s", target, None, "skipped: no Driver.acquire_all")
    store = engine.store

    class Rollback(Exception):
        pass

    def once() -> float:
        live_cache.pop(run_id, None)
        now_us = store_rows.to_us(store_rows.utc(engine.clock.now()))
        elapsed = 0.0
        try:
            with store.transaction() as tx:
                paused = gc.isenabled()
                gc.disable()
                start = time.perf_counter()
                try:
                    acquire_all(tx, [run_id], now_us, set(), {})
                    elapsed = time.perf_counter() - start
                finally:
                    if paused:
                        gc.enable()
                loaded = live_cache.get(run_id)
                raise Rollback
        except Rollback:
            pass
        finally:
            live_cache.pop(run_id, None)
        if loaded is None:
            raise RuntimeError("Driver.acquire_all did not load the parked run")
        return elapsed

    try:
        rate = events / best_of(once, repeat)
    except TypeError as exc:  # the private signature changed
        return row(name, None, "events/s", target, None, f"skipped: {exc}")
    return row(name, rate, "events/s", target, at_least(rate, 200_000), f"{note}; acquire_all")


# --- 6. emit -> resume latency ---------------------------------------------------------------


def emit_latency(ws: Workspace, mode: str, trials: int) -> dict[str, list[float]]:
    """Per trial: seconds from ``emit`` to the next step's start and to its committed result."""
    engine = new_engine(ws, f"latency-{mode}", mode, parked_on_event)
    path = engine.store.path
    server = threading.Thread(
        target=engine.serve, kwargs={"install_signals": False}, name="bench-serve", daemon=True
    )
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    result: dict[str, list[float]] = {"started": [], "committed": [], "emit": []}
    try:
        _STARTED.clear()
        _SIGNALS.clear()
        for k in range(trials):
            _SIGNALS[k] = threading.Event()
        run_ids = [engine.start(parked_on_event.id, {"k": k}) for k in range(trials)]
        server.start()
        deadline = time.monotonic() + 60
        while True:
            (parked,) = reader.execute(
                "SELECT COUNT(*) FROM runs WHERE status = 'waiting'"
            ).fetchone()
            if parked == trials:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {parked} of {trials} runs parked on their wait")
            time.sleep(0.01)
        time.sleep(0.05)  # let the worker settle into its idle wait
        for k, run_id in enumerate(run_ids):
            start = time.perf_counter()
            engine.emit("bench.go", {"k": k})
            emitted = time.perf_counter()
            if not _SIGNALS[k].wait(10):
                raise RuntimeError(f"trial {k}: the step after the wait never started")
            while True:
                (status,) = reader.execute(
                    "SELECT status FROM runs WHERE id = ?", (run_id,)
                ).fetchone()
                if status == "completed":
                    break
                if time.perf_counter() - start > 10:
                    raise RuntimeError(f"trial {k}: run still {status} after 10 s")
                time.sleep(0.00005)
            committed = time.perf_counter()
            result["started"].append(_STARTED[k] - start)
            result["committed"].append(committed - start)
            result["emit"].append(emitted - start)
            time.sleep(0.002)  # trials apart: the worker is idle again at the next emit
    finally:
        engine.stop()
        server.join(30)
        reader.close()
        engine.close()
    return result


def bench_latency(ws: Workspace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    trials = sizes["latency_trials"]
    out = []
    normal = emit_latency(ws, "normal", trials)
    emit_ms = statistics.median(normal["emit"]) * 1e3
    note = f"{trials} trials, serve() on a thread; emit() itself {emit_ms:.3f} ms median"
    for key, label in (("started", "next step started"), ("committed", "step result committed")):
        values = normal[key]
        median, p95 = statistics.median(values) * 1e3, percentile(values, 95) * 1e3
        target = key == "started"
        extra = "" if target else "; polled every ~50 us from a 2nd connection"
        out.append(
            row(
                f"emit -> {label}, median (NORMAL)",
                median,
                "ms",
                "<= 1 ms" if target else "",
                at_most(median, 1.0) if target else None,
                note + extra,
            )
        )
        out.append(
            row(
                f"emit -> {label}, p95 (NORMAL)",
                p95,
                "ms",
                "<= 1 ms" if target else "",
                at_most(p95, 1.0) if target else None,
                note + extra,
            )
        )
    full = emit_latency(ws, "full", trials)
    emit_ms = statistics.median(full["emit"]) * 1e3
    note = f"{trials} trials; emit() itself {emit_ms:.3f} ms median (fsync)"
    out.append(
        row(
            "emit -> next step started, median (FULL)",
            statistics.median(full["started"]) * 1e3,
            "ms",
            note=note,
        )
    )
    out.append(
        row(
            "emit -> next step started, p95 (FULL)",
            percentile(full["started"], 95) * 1e3,
            "ms",
            note=note,
        )
    )
    return out


# --- 7. memory of parked runs ----------------------------------------------------------------


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best we have
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_child(n: int, root: str) -> dict[str, Any]:
    """In a fresh process: park ``n`` runs in a day-long sleep; memory and threads before/after."""
    clock = VirtualClock()
    engine = ironflow.Engine(os.path.join(root, "rss.db"), durability="normal", clock=clock)
    engine.register(day_nap)
    engine.start(day_nap.id)  # warm-up: lazy imports and first-use caches are not per run
    engine.run_until_idle()
    gc.collect()
    before, threads_before = rss_bytes(), threading.active_count()
    start = time.perf_counter()
    for _ in range(n):
        engine.start(day_nap.id)
    started = time.perf_counter()
    engine.run_until_idle()
    end = time.perf_counter()
    gc.collect()
    after, threads_after = rss_bytes(), threading.active_count()
    parked = count_status(engine, "waiting")
    (timers,) = engine.store.query("SELECT COUNT(*) FROM timers")[0]
    live = getattr(engine, "_live", None)
    engine.close()
    return {
        "runs": n,
        "parked": parked - 1,
        "timers": timers - 1,
        "rss_before": before,
        "rss_after": after,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "threads_before": threads_before,
        "threads_after": threads_after,
        "live_cached": len(live) if isinstance(live, dict) else None,
        "start_s": started - start,
        "drive_s": end - started,
    }


def bench_rss(ws: Workspace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["rss_runs"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    root = tempfile.mkdtemp(prefix="rss-", dir=ws.root)
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.engine", "--rss-child", str(n), "--dir", root],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"rss subprocess failed ({proc.returncode}):\n{proc.stderr}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    if data["parked"] != n:
        raise RuntimeError(f"only {data['parked']} of {n} runs parked: {data}")
    added_mb = (data["rss_after"] - data["rss_before"]) / 1e6
    threads = data["threads_after"] - data["threads_before"]
    note = (
        f"{n:,} runs, fresh process, virtual clock; RSS {data['rss_before'] / 1e6:.1f} -> "
        f"{data['rss_after'] / 1e6:.1f} MB, peak {data['peak_rss'] / 1e6:.1f} MB; "
        f"{data['timers']:,} timer rows; live cache {data['live_cached']}"
    )
    return [
        row(
            "parked runs: RSS added",
            added_mb,
            "MB",
            "< 50 MB" if n >= 100_000 else f"< 50 MB (at 100k; {n:,} here)",
            added_mb < 50,
            note,
        ),
        row("parked runs: RSS per 1k runs", added_mb / n * 1000, "MB/1k", note=note),
        row(
            "parked runs: threads added",
            threads,
            "threads",
            "0 per run (<= 2 total)",
            threads <= 2,
            f"{data['threads_before']} -> {data['threads_after']} threads",
        ),
        row(
            "parked runs: start rate",
            n / data["start_s"],
            "runs/s",
            note=f"engine.start x {n:,}, one transaction each, {data['start_s']:.1f} s",
        ),
        row(
            "parked runs: drive rate",
            n / data["drive_s"],
            "runs/s",
            note=f"run_until_idle to parked, {data['drive_s']:.1f} s",
        ),
    ]


# --- the table -------------------------------------------------------------------------------

BENCHES: dict[str, Callable[..., list[dict[str, Any]]]] = {
    "floor": bench_floor,
    "step": bench_step,
    "throughput": bench_throughput,
    "batch": bench_batch,
    "replay": bench_replay,
    "latency": bench_latency,
    "rss": bench_rss,
}


def fmt_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def verdict(ok: bool | None) -> str:
    return "" if ok is None else ("pass" if ok else "FAIL")


def format_table(table: list[dict[str, Any]]) -> str:
    name_w = max(len("name"), *(len(r["name"]) for r in table))
    target_w = max(len("target"), *(len(r["target"]) for r in table))
    header = (
        f"{'name':<{name_w}}  {'value':>11}  {'unit':<9}  {'target':<{target_w}}  "
        f"{'result':<6}  note"
    )
    lines = [header, "-" * (len(header) + 40)]
    for r in table:
        lines.append(
            f"{r['name']:<{name_w}}  {fmt_value(r['value']):>11}  {r['unit']:<9}  "
            f"{r['target']:<{target_w}}  {verdict(r['ok']):<6}  {r['note']}"
        )
    return "\n".join(lines)


def load_note() -> str:
    """The 1-minute load average, flagged when other processes compete for the CPUs."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return "load average unknown"
    cpus = os.cpu_count() or 1
    busy = " (BUSY MACHINE: timings inflated)" if load > cpus else ""
    return f"load average {load:.2f} on {cpus} CPUs{busy}"


def parse_only(values: list[str] | None) -> list[str]:
    if not values:
        return list(SECTIONS)
    chosen = {name.strip() for value in values for name in value.split(",") if name.strip()}
    unknown = sorted(chosen - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown section(s) {', '.join(unknown)}; choose from {SECTIONS}")
    return [name for name in SECTIONS if name in chosen]


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.engine", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a CI smoke run")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only these sections (repeatable or comma-separated): {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--repeat", type=int, default=None, help="best of N where repeated (default 3, quick 1)"
    )
    parser.add_argument("--dir", default=None, help="where the temporary databases go")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write rows as JSON")
    parser.add_argument(
        "--db",
        default=None,
        metavar="URL",
        help="also measure PostgreSQL on this server (postgresql://...); see engine_pg.py",
    )
    parser.add_argument(
        "--start-postgres",
        action="store_true",
        help="also measure PostgreSQL on a throwaway cluster (tests/pgcluster.py)",
    )
    parser.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.db is not None and not args.db.startswith(("postgresql://", "postgres://")):
        parser.error(f"--db takes a postgresql:// URL, got {args.db!r}")
    if args.db is not None and args.start_postgres:
        parser.error("--db and --start-postgres exclude each other")

    if args.rss_child is not None:
        print(json.dumps(rss_child(args.rss_child, args.dir or tempfile.gettempdir())))
        return []
    try:
        sections = parse_only(args.only)
    except ValueError as exc:
        parser.error(str(exc))
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    sizes = QUICK_SIZES if args.quick else FULL_SIZES

    table: list[dict[str, Any]] = []
    floors: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ironflow-bench-", dir=args.dir) as root:
        print(
            f"ironflow engine benchmark: Python {platform.python_version()}, SQLite "
            f"{sqlite3.sqlite_version}, {os.cpu_count()} CPUs, databases in {root}"
            f"{' (quick)' if args.quick else ''}; gc on, best of {repeat}; {load_note()}"
        )
        sys.stdout.flush()
        ws = Workspace(root)
        for section in sections:
            table.extend(BENCHES[section](ws, sizes, repeat, floors))
    pg_table: list[dict[str, Any]] = []
    if args.db is not None or args.start_postgres:
        from benchmarks import engine_pg  # psycopg is needed only here

        server = contextlib.nullcontext(args.db) if args.db else engine_pg.throwaway_server()
        with server as url:
            print(f"PostgreSQL rows on {engine_pg.server_line(url)}")
            sys.stdout.flush()
            pg_table = engine_pg.run_sections(url, sections, args.quick, repeat)
    print(format_table(table))
    if pg_table:
        print()
        print(format_table(pg_table))
        table = table + pg_table
    print(f"at the end: {load_note()}")
    failed = [r["name"] for r in table if r["ok"] is False]
    print(f"{len(table)} rows, {len(failed)} below target" + (f": {failed}" if failed else ""))
    sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2), encoding="utf-8")
    return table


if __name__ == "__main__":
    main()
