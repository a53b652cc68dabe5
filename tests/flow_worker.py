"""Workflows with start gates and a worker process for ``tests/test_flow_gates.py``.

Usage::

    python tests/flow_worker.py DB JOURNAL [--lease 1s] [--poll 20ms] [--block]
                                          [--deadline SECONDS]

Serves the functions below on ``DB`` until SIGTERM. Every step body appends
``<run-id> <pid>\\n`` to ``JOURNAL`` (one ``O_APPEND`` write). ``--block``: the first body of
``crashy`` in this process journals, writes ``JOURNAL.blocked``, then blocks until the test
SIGKILLs the process (its run holds the one concurrency slot). Exit 3: deadline passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from typing import Any

import ironflow
from ironflow import Concurrency, Singleton, Throttle, step

HELD_ID = "flow-held"  # concurrency 2 per key; each run holds its slot until "go" for it
THROTTLED_ID = "flow-throttled"  # 3 starts per hour
CRASHY_ID = "flow-crashy"  # concurrency 1; the first body in a --block process blocks
# Keyed by code (callables): an emitter without it defers their events to these workers.
SOLO_ID = "flow-solo"  # on "solo.ev", singleton skip per data.k; holds until "flow.go" i
ONCE_ID = "flow-once"  # on "once.ev", idempotency per data.order

_journal: str | None = None
_block = False
_blocked = threading.Event()


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def body(run_id: str) -> int:
    assert _journal is not None
    _append(_journal, f"{run_id} {os.getpid()}\n")
    return os.getpid()


def crashy_body(run_id: str) -> int:
    assert _journal is not None
    _append(_journal, f"{run_id} {os.getpid()}\n")
    if _block and not _blocked.is_set():
        _blocked.set()
        _append(_journal + ".blocked", f"{run_id} {os.getpid()}\n")
        threading.Event().wait(120)  # until SIGKILLed (bounded: nothing hangs for good)
        raise RuntimeError("blocked for 120s and nobody killed us")
    return os.getpid()


@ironflow.function(id=HELD_ID, concurrency=Concurrency(2, key="data.customer"))
def held(ctx: Any) -> Any:
    yield step.wait_for_event("go", event="flow.go", match="data.i", timeout="1h")
    return (yield step.run("body", body, ctx.run_id))


@ironflow.function(id=THROTTLED_ID, throttle=Throttle(3, "1h"))
def throttled(ctx: Any) -> Any:
    return (yield step.run("body", body, ctx.run_id))


@ironflow.function(id=CRASHY_ID, concurrency=1)
def crashy(ctx: Any) -> Any:
    return (yield step.run("body", crashy_body, ctx.run_id))


def solo_key(event: Any) -> Any:
    return event.data["k"]


def order_key(event: Any) -> Any:
    return event.data["order"]


@ironflow.function(id=SOLO_ID, on="solo.ev", singleton=Singleton(key=solo_key))
def solo(ctx: Any) -> Any:
    yield step.wait_for_event("go", event="flow.go", match="data.i", timeout="1h")
    return (yield step.run("body", body, ctx.run_id))


@ironflow.function(id=ONCE_ID, on="once.ev", idempotency=order_key)
def once(ctx: Any) -> Any:
    return (yield step.run("body", body, ctx.run_id))


FUNCTIONS = (held, throttled, crashy, solo, once)


def make_engine(db: str, **options: Any) -> ironflow.Engine:
    engine = ironflow.Engine(db, **options)
    for fn in FUNCTIONS:
        engine.register(fn)
    return engine


def main(argv: list[str] | None = None) -> int:
    global _journal, _block
    parser = argparse.ArgumentParser(prog="flow_worker")
    parser.add_argument("db")
    parser.add_argument("journal")
    parser.add_argument("--lease", default="1s")
    parser.add_argument("--poll", default="20ms")
    parser.add_argument("--block", action="store_true")
    parser.add_argument("--deadline", type=float, default=120.0)
    args = parser.parse_args(argv)
    _journal, _block = args.journal, args.block
    engine = make_engine(args.db, lease=args.lease, poll=args.poll)

    def watchdog() -> None:
        print(f"flow_worker: deadline of {args.deadline}s passed", file=sys.stderr, flush=True)
        os._exit(3)

    timer = threading.Timer(args.deadline, watchdog)
    timer.daemon = True
    timer.start()
    print(f"flow_worker: {os.getpid()} serving as {engine.worker_id}", flush=True)
    engine.serve(install_signals=True)
    timer.cancel()
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
