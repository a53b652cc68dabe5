"""`make demo`: a real workflow on a fresh SQLite file, a worker SIGKILLed mid-run, a resume.

1. start an order run; 2. a worker process takes it, runs `fetch-user`, parks in a sleep;
3. the demo SIGKILLs the worker; 4. a new worker takes over; 5. the demo emits the approval;
6. the run completes, and the journal shows every step body ran exactly once.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from examples.order import make_engine

HERE = Path.cwd()
DB = HERE / "demo.db"
JOURNAL = HERE / "demo-journal.txt"


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def worker() -> subprocess.Popen[bytes]:
    env = dict(os.environ, IRONFLOW_DEMO_JOURNAL=str(JOURNAL))
    return subprocess.Popen([sys.executable, "-m", "examples.order", str(DB)], env=env)


def wait_for(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: gave up waiting for {what} after {timeout}s")
        time.sleep(0.05)


def main() -> None:
    for path in (DB, JOURNAL, Path(f"{DB}-wal"), Path(f"{DB}-shm")):
        path.unlink(missing_ok=True)
    engine = make_engine(str(DB))
    order = {"orderId": "A-17", "userId": "u-42", "total": 99.5, "items": ["book", "lamp"]}
    [run_id] = engine.emit("order.created", order)
    say(f"order.created emitted: run {run_id} started on {DB.name}")

    def has(event_type: str, step_id: str | None = None) -> bool:
        return any(
            type(e).__name__ == event_type and getattr(e, "id", None) in (step_id, None)
            for e in engine.history(run_id)
        )

    first = worker()
    say(f"worker {first.pid} started")
    wait_for("fetch-user to commit", lambda: has("StepCompleted", "fetch-user"))
    first.send_signal(signal.SIGKILL)
    first.wait()
    say(f"worker {first.pid} SIGKILLed mid-run (fetch-user committed, cool-off sleep pending)")

    second = worker()
    say(f"worker {second.pid} started; it takes the run over from the database")
    wait_for("the run to wait for approval", lambda: has("CommandScheduled", "wait-approval"))
    engine.emit("order.approved", {"orderId": "A-17", "approvedBy": "ann"})
    say("order.approved emitted")
    wait_for("the run to complete", lambda: engine.get_run(run_id).status == "completed")
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=30)

    run = engine.get_run(run_id)
    say(f"run {run.status}: {run.output}")
    subprocess.run(
        [sys.executable, "-m", "ironflow", "runs", "show", run_id, "--db", str(DB)], check=True
    )
    counts = collections.Counter(JOURNAL.read_text().split())
    say("step bodies executed (from the journal):")
    for name, count in sorted(counts.items()):
        print(f"   {name:<15} {count}x")
    assert run.status == "completed", run
    assert all(count == 1 for count in counts.values()), counts
    say("every committed step ran exactly once across the crash")

    say("the saga path: a payment fails and the undos run in reverse order")
    from examples import saga

    undone = saga.main()
    assert undone == ["hotel-lisbon", "flight-lisbon"], undone


if __name__ == "__main__":
    main()
