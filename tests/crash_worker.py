"""Worker process for ``tests/test_crash.py``: drives one run on a database, then exits.

Usage::

    python tests/crash_worker.py DB JOURNAL RUN_ID [--block STEP_ID] [--deadline SECONDS]

It builds an ``Engine`` on ``DB`` (a SQLite path or a ``postgresql://`` URL;
``durability="full"``, a short lease on the system clock), registers the crash-test workflows
and serves until the run ``RUN_ID`` is terminal (or ``blocked``), then exits 0.
``IRONFLOW_CRASH_AT`` in the environment makes it SIGKILL itself at an injection point (see
``ironflow/runtime/faults.py``).

Every step body appends ``<step-id> <pid>\\n`` to ``JOURNAL`` (``O_APPEND``, fsync) before it
returns or raises, so the test can count how often each body ran and in which process. The
step id is passed to the body explicitly, since a body cannot see its own id or attempt.
``--block STEP_ID`` makes that step's body, after journaling, wait for a file that never
appears: the test then kills the process with SIGKILL while the body is running.

Exit codes: 0 done, 3 deadline passed (state printed on stderr), 4 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from typing import Any

import ironflow
from ironflow import InvokeError, NonRetryableError, RetryPolicy, step

FLOW_ID = "crash-flow"
SAGA_ID = "crash-saga"
RESUME_ID = "crash-resume"
EVENT = "crash.approved"
LEASE = "400ms"
POLL = "20ms"
SLEEP = "200ms"

# Set by main() in the worker process; unused in the test process (bodies never run there).
_journal: str | None = None
_block: str | None = None
_block_file: str | None = None


def journal_lines(path: str) -> list[tuple[str, int]]:
    """The journal as ``(step_id, pid)`` pairs, in append order."""
    if not os.path.exists(path):
        return []
    found = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line:
                sid, pid = line.rsplit(" ", 1)
                found.append((sid, int(pid)))
    return found


def _record(step_id: str) -> int:
    """Append ``step_id pid`` to the journal, durably; the number of earlier runs of the body."""
    assert _journal is not None, "crash_worker bodies only run inside the worker process"
    before = sum(1 for sid, _ in journal_lines(_journal) if sid == step_id)
    fd = os.open(_journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{step_id} {os.getpid()}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    if step_id == _block:
        _wait_forever(step_id)
    return before


def _wait_forever(step_id: str) -> None:
    """Block the body until the test kills the process (bounded, so nothing hangs for good)."""
    assert _block_file is not None
    deadline = time.monotonic() + 60
    while not os.path.exists(_block_file):
        if time.monotonic() > deadline:
            raise RuntimeError(f"step {step_id!r} was blocked for 60s and nobody killed us")
        time.sleep(0.01)


def body(step_id: str, *args: Any) -> str:
    _record(step_id)
    return ":".join([step_id, *map(str, args)])


def flaky(step_id: str) -> str:
    """Fails the first time its body ever runs (counted in the journal), then succeeds."""
    if _record(step_id) == 0:
        raise RuntimeError(f"{step_id} fails on its first execution")
    return f"{step_id}:ok"


def boom(step_id: str) -> None:
    _record(step_id)
    raise NonRetryableError(f"{step_id} always fails")


def undo(step_id: str, value: str) -> str:
    _record(step_id)
    return f"undone {value}"


@ironflow.function(id=SAGA_ID, retry=RetryPolicy(max_attempts=2, initial_delay="50ms"))
def saga(ctx: Any) -> Any:
    held = yield step.run("hold", body, "hold", ctx.event.data["n"])
    yield step.compensate("hold", undo, "compensate:hold", held)
    yield step.run("boom", boom, "boom")
    return "unreachable"


@ironflow.function(id=FLOW_ID, retry=RetryPolicy(max_attempts=3, initial_delay="50ms"))
def flow(ctx: Any) -> Any:
    data = ctx.event.data
    fetched = yield step.run("fetch", body, "fetch", data["n"])
    flaky_result = yield step.run("flaky", flaky, "flaky")
    yield step.sleep("nap", SLEEP)
    approval = yield step.wait_for_event("approval", event=EVENT, match="data.key", timeout="1h")
    pair = yield step.parallel(
        "pair",
        [
            lambda s: s.run("left", body, "pair/0/left"),
            lambda s: s.run("right", body, "pair/1/right"),
        ],
        concurrency=2,
    )
    # Registered but never run: the run succeeds.
    yield step.compensate("fetch", undo, "compensate:fetch", fetched)
    try:
        yield step.invoke("saga", saga, {"n": data["n"]})
        saga_outcome = "saga succeeded?!"
    except InvokeError as exc:
        saga_outcome = "saga failed: " + type(exc).__name__
    finished = yield step.run("finish", body, "finish", len(pair))
    return {
        "fetch": fetched,
        "flaky": flaky_result,
        "approvedBy": approval.data["by"],
        "pair": pair,
        "saga": saga_outcome,
        "finish": finished,
    }


def gate(step_id: str) -> str:
    """Fails, not to be retried, until the test opens the gate (a file beside the journal)."""
    _record(step_id)
    assert _journal is not None
    if not os.path.exists(_journal + ".open"):
        raise NonRetryableError(f"{step_id}: the gate is closed")
    return f"{step_id}:open"


@ironflow.function(id=RESUME_ID)
def resumable(ctx: Any) -> Any:
    """Fails at its gate (its undo runs) until the test opens it and resumes the run."""
    first = yield step.run("first", body, "first")
    yield step.compensate("first", undo, "compensate:first", first)
    opened = yield step.run("gate", gate, "gate")
    last = yield step.run("last", body, "last")
    return [first, opened, last]


def expected_output(n: int, approved_by: str) -> dict[str, Any]:
    return {
        "fetch": f"fetch:{n}",
        "flaky": "flaky:ok",
        "approvedBy": approved_by,
        "pair": ["pair/0/left", "pair/1/right"],
        "saga": "saga failed: InvokeError",
        "finish": "finish:2",
    }


def make_engine(db: str) -> ironflow.Engine:
    engine = ironflow.Engine(db, durability="full", lease=LEASE, poll=POLL)
    engine.register(flow)
    engine.register(saga)
    engine.register(resumable)
    return engine


def main(argv: list[str] | None = None) -> int:
    global _journal, _block, _block_file
    parser = argparse.ArgumentParser(prog="crash_worker")
    parser.add_argument("db")
    parser.add_argument("journal")
    parser.add_argument("run_id")
    parser.add_argument("--block", default=None)
    parser.add_argument("--deadline", type=float, default=30.0)
    args = parser.parse_args(argv)
    _journal, _block = args.journal, args.block
    _block_file = args.journal + ".never"

    engine = make_engine(args.db)

    def watchdog() -> None:
        try:
            run = engine.get_run(args.run_id)
            state = f"status={run.status} error={run.error}"
        except Exception as exc:  # pragma: no cover - diagnostics only
            state = f"(could not read run: {exc!r})"
        print(f"crash_worker: deadline of {args.deadline}s passed; {state}", file=sys.stderr)
        sys.stderr.flush()
        os._exit(3)

    timer = threading.Timer(args.deadline, watchdog)
    timer.daemon = True
    timer.start()

    def on_idle() -> None:
        if engine.get_run(args.run_id).status in ("completed", "failed", "cancelled", "blocked"):
            engine.stop()

    engine.serve(install_signals=False, on_idle=on_idle)
    timer.cancel()
    run = engine.get_run(args.run_id)
    print(f"crash_worker: run {args.run_id} is {run.status}; stats {engine.stats}")
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
