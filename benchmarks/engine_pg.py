"""The PostgreSQL rows of ``python -m benchmarks.engine --db postgresql://...``.

Each section of the SQLite table that has a PostgreSQL counterpart measures it in the same run,
on the given server, each measurement in a fresh schema dropped afterwards:

* ``floor``: the PostgreSQL commit floor, one ``INSERT`` of a history-like row that commits
  (autocommit: one round trip over the URL's connection, TCP for a host), with
  ``synchronous_commit`` on (FULL) and off (NORMAL); and the engine's round commit beside it
  (``benchmarks/postgres_floor.py`` measures both).
* ``step``: per-step overhead of one sequential run of trivial steps, and x the floor.
* ``batch``: 1,000 runs x 3 steps, all started at once, then one ``run_until_idle``.
* ``latency``: emit -> resume across processes: a serving worker process holds runs parked on
  an event; this process (a separate emitter, an ``Engine`` with nothing registered) emits, and
  the worker's next step body reports when it starts (``perf_counter`` is CLOCK_MONOTONIC,
  shared by the processes of one host).
* ``throughput``: 1-step runs with 1, 2 and 4 worker processes: the runs are created from this
  process first (not timed), then the (already connected, idle) workers are released together;
  timed until every run is completed (polled every 10 ms). Each repeat measures 1, 2 and 4 side
  by side; the best of each is reported, every figure in the note.
* ``replay``: cold replay of a long history from the store (``Engine.history`` + ``replay``),
  beside its floor: the rows fetched with the store's statement and one ``json.loads``.

``--start-postgres`` starts a throwaway cluster (``tests/pgcluster.py``) for the run instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

import ironflow
from benchmarks import engine as bench
from benchmarks import postgres_floor
from ironflow import step
from ironflow.interpreter import replay
from ironflow.runtime.store import rows
from ironflow.runtime.store.postgres_tx import HISTORIES

SECTIONS = ("floor", "step", "throughput", "batch", "replay", "latency")
WORKER_COUNTS = (1, 2, 4)
READY_TIMEOUT_S = 60
DONE_TIMEOUT_S = 600

ROWS: dict[str, list[str]] = {
    "floor": [
        name
        for m in bench.MODES
        for name in (f"PG commit floor ({m.upper()})", f"PG round commit ({m.upper()})")
    ],
    "step": [
        name
        for m in bench.MODES
        for name in (f"PG per-step wall ({m.upper()})", f"PG per-step / floor ({m.upper()})")
    ],
    "throughput": [f"PG 1-step runs/s, {n} worker process(es)" for n in WORKER_COUNTS]
    + ["PG 2 workers / 1 worker", "PG 4 workers / 2 workers"],
    "batch": ["PG 1k x 3-step, all at once (NORMAL)"],
    "replay": [
        "PG read floor: rows + json.loads",
        "PG store read+decode (Engine.history)",
        "PG cold replay: history + replay",
    ],
    "latency": [
        "PG emit -> resume, other process, median",
        "PG emit -> resume, other process, p99",
    ],
}
ROW_NAMES = [name for section in SECTIONS for name in ROWS[section]]

FULL_SIZES = {
    "floor_commits": 2_000,
    "steps": 2_000,
    "throughput": 6_000,
    "batch": 1_000,
    "replay_steps": 20_000,
    "latency_trials": 200,
}
QUICK_SIZES = {
    "floor_commits": 50,
    "steps": 50,
    "throughput": 60,
    "batch": 30,
    "replay_steps": 200,
    "latency_trials": 10,
}


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


# --- workflows run by the worker processes -------------------------------------------------


def report(k: int) -> int:
    """Step body after the wait: tell the parent (our stdout) when it started."""
    sys.stdout.write(f"resumed {k} {time.perf_counter()!r}\n")
    sys.stdout.flush()
    return k


@ironflow.function(id="pg-parked")
def pg_parked(ctx: Any) -> Any:
    event = yield step.wait_for_event("wake", event="bench.pg.go", match="data.k", timeout="1d")
    return (yield step.run("after", report, event.data["k"]))


WORKER_FUNCTIONS = (bench.one_step, pg_parked)


def worker_main(url: str, poll: str, durability: str) -> int:
    """A worker process: connect, say ``ready``, wait for ``go`` on stdin, serve until SIGTERM."""
    engine = ironflow.Engine(url, durability=durability, poll=poll)
    for fn in WORKER_FUNCTIONS:
        engine.register(fn)
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        engine.close()
        return 1
    cpu = time.process_time()  # the start (imports, connecting, registering) not counted
    try:
        engine.serve()  # SIGTERM: finish what is held, return
        # Read by ``Workers.stop``: the engine's counts, and the CPU this process used.
        stats = dict(engine.stats, cpu_ms=int((time.process_time() - cpu) * 1000))
        print("stats " + json.dumps(stats), flush=True)
    finally:
        engine.close()
    return 0


class Workers:
    """``n`` worker processes on ``url``; ``go()`` releases them, ``stop()`` ends them."""

    def __init__(self, url: str, n: int, poll: str, durability: str = "normal") -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(bench.ROOT), env.get("PYTHONPATH")]))
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "benchmarks.engine_pg", "--worker", url, poll, durability],
                cwd=bench.ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for _ in range(n)
        ]
        self.server_cpu_ms = 0  # the server's CPU before the part measured (see ``stop``)
        for proc in self.procs:
            line = self.readline(proc, READY_TIMEOUT_S)
            if line.strip() != "ready":
                raise RuntimeError(f"worker {proc.pid} did not get ready: {line!r}")

    @staticmethod
    def readline(proc: subprocess.Popen[str], timeout: float) -> str:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            raise RuntimeError(f"worker {proc.pid}: nothing on stdout within {timeout:g} s")
        return proc.stdout.readline()

    def go(self) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()

    def stop(self, url: str | None = None) -> dict[str, int]:
        """End the workers; their ``Engine.stats`` summed (those that reported them), with
        the CPU they used after ``go`` (``cpu_ms``) and, given the ``url``, the CPU the
        server's sessions of that database used since ``server_cpu_ms`` was read (from
        ``/proc``, before the workers' sessions end with them)."""
        total: dict[str, int] = {}
        if url is not None:
            total["server_cpu_ms"] = server_cpu_ms(url) - self.server_cpu_ms
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
                continue
            for line in out.splitlines():
                if line.startswith("stats "):
                    for key, value in json.loads(line[len("stats ") :]).items():
                        total[key] = total.get(key, 0) + value
        return total


def server_cpu_ms(url: str) -> int:
    """CPU (user + system, ms) used so far by the server's other sessions of ``url``'s
    database, read from ``/proc`` (the server runs on this host); 0 where it cannot be read."""
    tick = os.sysconf("SC_CLK_TCK")
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        pids = [
            row[0]
            for row in conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid != pg_backend_pid()"
            )
        ]
    used = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        used += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return used * 1000 // tick


class PgSpace:
    """Fresh schemas on one server, each dropped when its measurement ends."""

    def __init__(self, url: str) -> None:
        self.url = url

    @contextmanager
    def schema(self, label: str) -> Iterator[str]:
        name = f"ironflow_bench_{uuid.uuid4().hex[:10]}_{label}"
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f"CREATE SCHEMA {name}")
        try:
            yield postgres_floor.with_schema(self.url, name)
        finally:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as admin:
                admin.execute("SET lock_timeout = '30s'")
                admin.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def wait_completed(engine: Any, n: int, what: str, every: float = 0.005) -> None:
    """Poll until ``n`` runs are completed (bounded)."""
    deadline = time.monotonic() + DONE_TIMEOUT_S
    while (done := engine.store.count_runs("completed", None)) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: {done} of {n} runs completed in {DONE_TIMEOUT_S} s")
        time.sleep(every)


# --- sections ----------------------------------------------------------------------------


def pg_floor(space: PgSpace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    out = []
    for mode in bench.MODES:
        with space.schema(f"floor_{mode}") as url:
            found = postgres_floor.measure(url, mode, sizes["floor_commits"], repeat)
        floors[mode] = found["floor"][1]
        note = f"{sizes['floor_commits']:,} ops, best of {repeat}; median"
        out.append(
            row(
                f"PG commit floor ({mode.upper()})",
                found["floor"][1] * 1e6,
                "us/commit",
                note=f"mean; {note} {found['floor'][0] * 1e6:.0f} us; INSERT autocommit over TCP",
            )
        )
        out.append(
            row(
                f"PG round commit ({mode.upper()})",
                found["round"][1] * 1e6,
                "us/round",
                note=f"mean; {note} {found['round'][0] * 1e6:.0f} us; fence + 3 rows + run update",
            )
        )
    return out


def pg_step(space: PgSpace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["steps"]
    flow = bench.sequential(n)
    out = []
    for mode in bench.MODES:
        if mode not in floors:
            with space.schema(f"floor_{mode}") as url:
                floors[mode] = postgres_floor.measure(url, mode, sizes["floor_commits"], 1)[
                    "floor"
                ][1]

        def once(mode: str = mode) -> float:
            with space.schema(f"step_{mode}") as url:
                engine = ironflow.Engine(url, durability=mode)
                try:
                    engine.register(flow)
                    run_id = engine.start(flow.id)
                    start = time.perf_counter()
                    engine.run_until_idle()
                    elapsed = time.perf_counter() - start
                    run = engine.get_run(run_id)
                    if run.status != "completed" or run.output != n * (n - 1) // 2:
                        raise RuntimeError(f"sequential run ended {run.status}: {run}")
                    return elapsed / n
                finally:
                    engine.close()

        per_step = bench.best_of(once, repeat)
        ratio = per_step / floors[mode]
        out.append(
            row(
                f"PG per-step wall ({mode.upper()})",
                per_step * 1e6,
                "us/step",
                note=f"best of {repeat}, one run of {n:,} trivial steps",
            )
        )
        out.append(
            row(
                f"PG per-step / floor ({mode.upper()})",
                ratio,
                "x floor",
                "<= 1.5x",
                bench.at_most(ratio, 1.5),
                note=f"floor {floors[mode] * 1e6:.0f} us (same server, this run)",
            )
        )
    return out


def pg_batch(space: PgSpace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["batch"]
    split: list[tuple[float, float]] = []

    def once() -> float:
        with space.schema("batch") as url:
            engine = ironflow.Engine(url, durability="normal")
            try:
                engine.register(bench.three_steps)
                start = time.perf_counter()
                for _ in range(n):
                    engine.start(bench.three_steps.id)
                started = time.perf_counter()
                engine.run_until_idle()
                end = time.perf_counter()
                runs = engine.list_runs(function=bench.three_steps.id)
                bad = [r for r in runs if r.status != "completed" or r.output != 6]
                if len(runs) != n or bad:
                    raise RuntimeError(f"{len(runs)} runs, {len(bad)} not completed with 6")
                split.append((started - start, end - started))
                return end - start
            finally:
                engine.close()

    total = bench.best_of(once, repeat)
    starts, drive = min(split, key=sum)
    limit = 1.5 * n / 1000
    scaled = "" if n == 1000 else f" (1.5 s scaled to {n:,})"
    return [
        row(
            "PG 1k x 3-step, all at once (NORMAL)",
            total,
            "s",
            f"<= {limit:g} s{scaled}",
            bench.at_most(total, limit),
            note=f"best of {repeat}, {n:,} runs, one process; starts {starts:.3f} s + "
            f"drive {drive:.3f} s",
        )
    ]


def start_runs(engine: Any, function_id: str, n: int) -> None:
    """``n`` pending runs of ``function_id``, 500 per transaction (the setup, not timed)."""
    from ironflow.runtime.live import create_run, trigger

    driver = engine._driver
    for first in range(0, n, 500):
        with engine.store.transaction() as tx:
            for _ in range(first, min(n, first + 500)):
                now_us = driver.now_us()
                body = trigger(function_id, None, now_us)
                create_run(driver, tx, uuid.uuid4().hex, function_id, body, now_us)


def pg_throughput(space: PgSpace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["throughput"]
    seen: dict[int, list[float]] = {count: [] for count in WORKER_COUNTS}
    waste: dict[int, dict[str, int]] = {count: {} for count in WORKER_COUNTS}
    # Side by side: each repeat measures every worker count once, so a noisy moment of a shared
    # machine falls on all of them alike; the best of each is reported, with the spread.
    for _ in range(repeat):
        for count in WORKER_COUNTS:
            with space.schema(f"tp{count}") as url:
                starter = ironflow.Engine(url, durability="normal")  # serves nothing
                starter.register(bench.one_step)
                workers = None
                try:
                    workers = Workers(url, count, poll="20ms")  # connected, registered, idle
                    start_runs(starter, bench.one_step.id, n)
                    workers.server_cpu_ms = server_cpu_ms(url)  # counted from here on
                    started = time.perf_counter()
                    workers.go()  # from the workers' start to the last run completed
                    wait_completed(starter, n, f"{count} workers", every=0.01)
                    seen[count].append(n / (time.perf_counter() - started))
                finally:
                    if workers is not None:
                        for key, value in workers.stop(url).items():
                            waste[count][key] = waste[count].get(key, 0) + value
                    starter.close()
    rates = {count: max(found) for count, found in seen.items()}
    notes = {
        count: f"best of {repeat} (all: {', '.join(f'{r:,.0f}' for r in found)}), {n:,} runs "
        f"created first (not timed), timed from the workers' start to the last completed; "
        f"{sharing(waste[count])}"
        for count, found in seen.items()
    }
    out = [
        row(f"PG 1-step runs/s, {c} worker process(es)", rates[c], "runs/s", note=notes[c])
        for c in WORKER_COUNTS
    ]
    two, four = rates[2] / rates[1], rates[4] / rates[2]

    def each(a: int, b: int) -> str:  # the ratio within each repeat (measured side by side)
        return ", ".join(f"{x / y:.2f}" for x, y in zip(seen[a], seen[b], strict=True))

    out.append(
        row(
            "PG 2 workers / 1 worker",
            two,
            "x",
            ">= 1.5x",
            bench.at_least(two, 1.5),
            f"{os.cpu_count()} CPUs; per repeat {each(2, 1)}",
        )
    )
    out.append(
        row(
            "PG 4 workers / 2 workers",
            four,
            "x",
            ">= 1.0x",
            bench.at_least(four, 1.0),
            f"no slower; per repeat {each(4, 2)}",
        )
    )
    return out


def sharing(stats: dict[str, int]) -> str:
    """What sharing the work cost, from the workers' summed ``Engine.stats`` (counts)."""
    ended = stats.get("runs_ended", 0)
    if not ended:
        return "no stats reported"
    claims, won = stats.get("claims", 0), stats.get("claims_won", 0)
    lost = (claims - won) / claims if claims else 0.0
    return (
        f"claims lost {lost:.0%} ({claims - won:,} of {claims:,}), "
        f"looks {stats.get('looks', 0) / ended * 1000:.1f} per 1k runs "
        f"({stats.get('looks_empty', 0):,} empty), "
        f"commits {stats.get('commits', 0) / ended:.3f} per run, CPU per run "
        f"{stats.get('cpu_ms', 0) / ended * 1000:.0f} us workers + "
        f"{stats.get('server_cpu_ms', 0) / ended * 1000:.0f} us server"
    )


def pg_replay(space: PgSpace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    n = sizes["replay_steps"]
    flow = bench.long_then_park(n)
    with space.schema("replay") as url:
        engine = ironflow.Engine(url, durability="normal")
        try:
            engine.register(flow)
            run_id = engine.start(flow.id)
            events = bench.synthesize_history(engine, flow, run_id)

            def read() -> float:
                start = time.perf_counter()
                history = engine.history(run_id)
                elapsed = time.perf_counter() - start
                if len(history) != events:
                    raise RuntimeError(f"read {len(history)} events, stored {events}")
                return elapsed

            store = engine.store

            def floor() -> float:
                # The store's own statement and one json.loads of the bodies, no events built.
                start = time.perf_counter()
                with store.lock, rows.gc_paused():
                    found = store.conn.execute(HISTORIES, ([run_id],)).fetchall()
                    bodies = json.loads("[" + ",".join([row[4] for row in found]) + "]")
                elapsed = time.perf_counter() - start
                if len(bodies) != events:
                    raise RuntimeError(f"read {len(bodies)} bodies, stored {events}")
                return elapsed

            def cold() -> float:
                start = time.perf_counter()
                decision = replay(flow, engine.history(run_id))
                elapsed = time.perf_counter() - start
                if decision.done or decision.commands or decision.events:
                    raise RuntimeError(f"cold replay decided something new: {decision}")
                return elapsed

            note = f"best of {repeat}, {events:,} events ({n:,} steps), over TCP"
            floor_rate = events / bench.best_of(floor, repeat)
            read_rate = events / bench.best_of(read, repeat)
            cold_rate = events / bench.best_of(cold, repeat)
        finally:
            engine.close()
    return [
        row("PG read floor: rows + json.loads", floor_rate, "events/s", note=note),
        row("PG store read+decode (Engine.history)", read_rate, "events/s", note=note),
        row(
            "PG cold replay: history + replay",
            cold_rate,
            "events/s",
            ">= 200,000/s",
            bench.at_least(cold_rate, 200_000),
            note,
        ),
    ]


def pg_latency(space: PgSpace, sizes: dict[str, int], repeat: int, floors: dict[str, float]):
    trials = sizes["latency_trials"]
    poll = "1s"  # the wake-up is the NOTIFY an emit sends; polling is only the fallback
    with space.schema("latency") as url:
        emitter = ironflow.Engine(url, durability="normal")  # nothing registered
        workers = None
        try:
            workers = Workers(url, 1, poll=poll)
            proc = workers.procs[0]
            workers.go()
            run_ids = [emitter.start(pg_parked.id, {"k": k}) for k in range(trials)]
            deadline = time.monotonic() + DONE_TIMEOUT_S
            while (parked := emitter.store.count_runs("waiting", None)) < trials:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {parked} of {trials} runs parked")
                time.sleep(0.01)
            time.sleep(0.1)  # the worker settles into its idle wait
            seen: list[float] = []
            emits: list[float] = []
            for k in range(trials):
                start = time.perf_counter()
                emitter.emit("bench.pg.go", {"k": k})
                emits.append(time.perf_counter() - start)
                line = workers.readline(proc, 10).split()
                if line[:2] != ["resumed", str(k)]:
                    raise RuntimeError(f"trial {k}: worker said {line!r}")
                seen.append(float(line[2]) - start)
                time.sleep(0.003)  # trials apart: the worker's poll phase varies
            wait_completed(emitter, trials, "latency runs")
            if len(run_ids) != trials:
                raise RuntimeError("lost a run")
        finally:
            if workers is not None:
                workers.stop()
            emitter.close()
    note = (
        f"{trials} trials; worker process poll={poll}, woken by LISTEN/NOTIFY; "
        f"emit() itself {statistics.median(emits) * 1e3:.2f} ms median"
    )
    median, p99 = statistics.median(seen) * 1e3, bench.percentile(seen, 99) * 1e3
    return [
        row(
            "PG emit -> resume, other process, median",
            median,
            "ms",
            "<= 5 ms",
            bench.at_most(median, 5.0),
            note,
        ),
        row("PG emit -> resume, other process, p99", p99, "ms", note=note),
    ]


BENCHES = {
    "floor": pg_floor,
    "step": pg_step,
    "throughput": pg_throughput,
    "batch": pg_batch,
    "replay": pg_replay,
    "latency": pg_latency,
}


def server_line(url: str) -> str:
    with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        found: Any = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
            "current_setting('fsync'), inet_server_addr()"
        ).fetchone()
    return (
        f"PostgreSQL {found[0]} (address {found[3] or 'unix socket'}, "
        f"synchronous_commit={found[1]}, fsync={found[2]})"
    )


def run_sections(url: str, sections: list[str], quick: bool, repeat: int) -> list[dict[str, Any]]:
    sizes = QUICK_SIZES if quick else FULL_SIZES
    space = PgSpace(url)
    floors: dict[str, float] = {}
    table: list[dict[str, Any]] = []
    for section in sections:
        if section in BENCHES:
            table.extend(BENCHES[section](space, sizes, repeat, floors))
    return table


@contextmanager
def throwaway_server() -> Iterator[str]:
    """A private PostgreSQL cluster from ``tests/pgcluster.py``, stopped afterwards."""
    sys.path.insert(0, str(bench.ROOT / "tests"))
    import pgcluster  # type: ignore[import-not-found]

    found = pgcluster.detect()
    if found.kind == "external":
        yield found.url
        return
    if found.kind != "cluster":
        raise SystemExit(f"--start-postgres: {found.message}")
    cluster = pgcluster.Cluster(found.bindir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        sys.exit(worker_main(*sys.argv[2:]))
    print(json.dumps({"usage": "python -m benchmarks.engine --db postgresql://..."}))
    sys.exit(2)
