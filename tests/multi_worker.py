"""Workflows and a worker process for ``tests/test_multi.py`` (many workers, one database).

Usage::

    python tests/multi_worker.py DB JOURNAL [--lease 2s] [--poll 20ms] [--block-after N]
                                            [--deadline SECONDS]

It builds an ``Engine`` on ``DB`` (a SQLite path or a ``postgresql://`` URL), registers the
workflows below and serves until SIGTERM (a graceful stop: running steps finish and are
committed, leases let go), then prints its stats and exits 0. ``IRONFLOW_CRASH_AT`` makes it
SIGKILL itself at an injection point (``ironflow/runtime/faults.py``).

Every step body appends ``<run-id> <step-id> <pid>\\n`` to ``JOURNAL`` (one ``O_APPEND`` write,
atomic between processes; no fsync: a SIGKILL loses no written byte, only a host crash would)
and returns ``<step-id>@<pid>``, so the history names the process whose run was committed.
``--block-after N``: the N-th body run in this process journals, writes its line also to
``JOURNAL.blocked``, then blocks (its run stays held, its result uncommitted) until the test
SIGKILLs the process.

Exit codes: 0 stopped by SIGTERM, 3 deadline passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

import ironflow
from ironflow import step

MULTI_ID = "multi-flow"
STEPS = ("s0", "s1", "s2")
TIMER_ID = "timer-flow"
RACE_ID = "race-flow"
RACE_EVENT = "race.go"

_journal: str | None = None  # set in a worker process; tests set it to run bodies in-process
_block_after = 0  # the body run that blocks (--block-after); 0: none
_bodies = 0
_count_lock = threading.Lock()


def journal_lines(path: str) -> list[tuple[str, str, int]]:
    """The journal as ``(run_id, step_id, pid)``, in append order."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [
            (run_id, step_id, int(pid))
            for run_id, step_id, pid in (line.split() for line in fh if line.strip())
        ]


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def body(run_id: str, step_id: str) -> str:
    global _bodies
    assert _journal is not None, "multi_worker bodies run where a journal is set"
    line = f"{run_id} {step_id} {os.getpid()}\n"
    _append(_journal, line)
    with _count_lock:
        _bodies += 1
        block = _bodies == _block_after
    if block:
        _append(_journal + ".blocked", line)
        threading.Event().wait(120)  # until SIGKILLed (bounded: nothing hangs for good)
        raise RuntimeError(f"{run_id} {step_id}: blocked for 120s and nobody killed us")
    return f"{step_id}@{os.getpid()}"


@ironflow.function(id=MULTI_ID)
def multi(ctx: Any) -> Any:
    results = []
    for sid in STEPS:
        results.append((yield step.run(sid, body, ctx.run_id, sid)))
    return results


@ironflow.function(id=TIMER_ID)
def timer_flow(ctx: Any) -> Any:
    """Sleeps until the instant in its data (the same for every run), then one step."""
    yield step.sleep_until("nap", ctx.event.data["at"])
    return (yield step.run("after", body, ctx.run_id, "after"))


@ironflow.function(id=RACE_ID)
def race(ctx: Any) -> Any:
    """Two waits in a row for ``race.go`` events of this run's key: one event each."""
    first = yield step.wait_for_event("w1", event=RACE_EVENT, match="data.key", timeout="1h")
    second = yield step.wait_for_event("w2", event=RACE_EVENT, match="data.key", timeout="1h")
    return [first.data["tag"], second.data["tag"]]


FUNCTIONS = (multi, timer_flow, race)


def make_engine(db: str, **options: Any) -> ironflow.Engine:
    engine = ironflow.Engine(db, **options)
    for fn in FUNCTIONS:
        engine.register(fn)
    return engine


def main(argv: list[str] | None = None) -> int:
    global _journal, _block_after
    parser = argparse.ArgumentParser(prog="multi_worker")
    parser.add_argument("db")
    parser.add_argument("journal")
    parser.add_argument("--lease", default="2s")
    parser.add_argument("--poll", default="20ms")
    parser.add_argument("--block-after", type=int, default=0)
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args(argv)
    _journal, _block_after = args.journal, args.block_after
    engine = make_engine(args.db, lease=args.lease, poll=args.poll)

    def watchdog() -> None:
        print(f"multi_worker: deadline of {args.deadline}s passed", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(args.deadline, watchdog)
    timer.daemon = True
    timer.start()
    print(f"multi_worker: {os.getpid()} serving as {engine.worker_id}", flush=True)
    engine.serve(install_signals=True)  # SIGTERM: a graceful stop
    timer.cancel()
    print(f"multi_worker: {os.getpid()} stopped; stats {engine.stats}", flush=True)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
