"""Start gates across worker processes (``tests/flow_worker.py``), on each store.

- ``test_concurrency_holds_across_two_workers``: two workers serve runs of a function with
  ``concurrency=2`` per key, created by a third process without the code; each run holds its
  slot until the test sends it ``go``. At every point, at most two runs of a key have left
  pending; as each ends, the next starts, and all complete.
- ``test_throttle_holds_across_two_workers``: ``Throttle(3, "1h")``: of ten runs, exactly
  three start, whichever worker takes them; the other seven stay pending, saying why.
- ``test_a_killed_workers_slot_comes_back``: ``concurrency=1``; the worker holding the slot is
  SIGKILLed inside its step; the queued run stays pending until another worker takes the
  orphan over (after its lease), finishes it, and so frees the slot.

Waits are bounded and fail with the state found; nothing sleeps to synchronise.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import flow_worker as fw
import pytest

from ironflow import Engine

WORKER = Path(__file__).with_name("flow_worker.py")
DEADLINE = 60.0


def wait_until(what: str, check: Callable[[], bool], describe: Callable[[], str]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {DEADLINE}s\n{describe()}")
        time.sleep(0.01)


class Proc:
    def __init__(
        self, tmp: Path, db: str, journal: Path, name: str, *extra: str, crash_at: str = ""
    ) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_CRASH")}
        if crash_at:
            env["IRONFLOW_CRASH_AT"] = crash_at
        self.out, self.err = tmp / f"{name}.out", tmp / f"{name}.err"
        cmd = [sys.executable, str(WORKER), db, str(journal), "--lease", "1s", *extra]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)

    def output(self) -> str:
        return (
            f"--- {self.proc.pid} stdout:\n{self.out.read_text(errors='replace')}"
            f"--- {self.proc.pid} stderr:\n{self.err.read_text(errors='replace')}"
        )


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM)
            try:
                proc.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.proc.kill()
                proc.proc.wait()


def registered(engine: Engine, procs: list[Proc]) -> None:
    """Wait until the workers have registered the functions in the database."""
    wait_until(
        "the workers registered their functions",
        lambda: all(engine.store.registration(fn.id) for fn in fw.FUNCTIONS),
        lambda: "\n".join(p.output() for p in procs),
    )


def _statuses(engine: Engine, ids: list[str]) -> list[str]:
    return [engine.get_run(run_id).status for run_id in ids]


def test_concurrency_holds_across_two_workers(
    tmp_path: Path, store_url: str, procs: list[Proc]
) -> None:
    journal = tmp_path / "journal.txt"
    engine = Engine(store_url)  # no code: creates runs and reads, like the CLI
    try:
        procs.extend(Proc(tmp_path, store_url, journal, f"w{n}") for n in range(2))
        registered(engine, procs)
        ids = {
            key: [engine.start(fw.HELD_ID, {"customer": key, "i": f"{key}-{i}"}) for i in range(5)]
            for key in ("a", "b")
        }
        every = ids["a"] + ids["b"]

        def describe() -> str:
            found = collections.Counter(_statuses(engine, every))
            return f"statuses {dict(found)}\n" + "\n".join(p.output() for p in procs)

        def started(key: str) -> int:
            return sum(s != "pending" for s in _statuses(engine, ids[key]) if s != "completed")

        for step in range(5):
            # Both keys fill their two slots (or what is left), never more.
            for key in ("a", "b"):
                wait_until(
                    f"key {key}: runs started after {step} ended",
                    lambda key=key, step=step: started(key) == min(2, 5 - step),
                    describe,
                )
                assert started(key) <= 2

            # Runs this process created are plain pending until a worker takes them and
            # decides: then each held one says why.
            def pending_reasons() -> list[str | None]:
                return [run.waiting_for for run in engine.list_runs(status="pending")]

            left = 2 * max(0, 3 - step)
            seen: list[list[str | None]] = []

            def decided(left: int = left, seen: list[list[str | None]] = seen) -> bool:
                # One read per look: the reasons asserted below are the ones that passed.
                seen.append(pending_reasons())
                return all(seen[-1]) and len(seen[-1]) == left

            wait_until("every pending run decided", decided, describe)
            assert all("concurrency: 2 of 2 for key" in str(w) for w in seen[-1]), seen[-1]
            for key in ("a", "b"):
                holders = [
                    r for r in ids[key] if engine.get_run(r).status in ("waiting", "running")
                ]
                engine.emit("flow.go", {"i": _data_i(engine, holders[0])})
                wait_until(
                    f"{holders[0]} ended",
                    lambda r=holders[0]: engine.get_run(r).status == "completed",
                    describe,
                )
        wait_until(
            "every run completed",
            lambda: _statuses(engine, every) == ["completed"] * 10,
            describe,
        )
    finally:
        engine.close()


def _data_i(engine: Engine, run_id: str) -> str:
    return engine.history(run_id)[0].event.data["i"]  # type: ignore[attr-defined,no-any-return]


def test_throttle_holds_across_two_workers(
    tmp_path: Path, store_url: str, procs: list[Proc]
) -> None:
    journal = tmp_path / "journal.txt"
    engine = Engine(store_url)
    try:
        procs.extend(Proc(tmp_path, store_url, journal, f"w{n}") for n in range(2))
        registered(engine, procs)
        ids = [engine.start(fw.THROTTLED_ID, {"i": i}) for i in range(10)]

        def describe() -> str:
            found = collections.Counter(_statuses(engine, ids))
            return f"statuses {dict(found)}\n" + "\n".join(p.output() for p in procs)

        def settled() -> bool:
            # Every run decided once: admitted (and then run) or queued with its reason.
            runs = [engine.get_run(r) for r in ids]
            done = [r for r in runs if r.status == "completed"]
            held = [
                r
                for r in runs
                if r.status == "pending"
                and r.waiting_for
                and r.waiting_for.startswith("throttle: next start at")
            ]
            return len(done) + len(held) == 10 and len(done) >= 3

        wait_until("three runs started, seven held", settled, describe)
        assert _statuses(engine, ids).count("completed") == 3, describe()
        lines = [line.split() for line in journal.read_text().splitlines()]
        assert len(lines) == 3  # three bodies ran, whichever worker took them
    finally:
        engine.close()


def test_a_killed_workers_slot_comes_back(
    tmp_path: Path, store_url: str, procs: list[Proc]
) -> None:
    journal = tmp_path / "journal.txt"
    blocked = Path(f"{journal}.blocked")
    engine = Engine(store_url)
    try:
        doomed = Proc(tmp_path, store_url, journal, "doomed", "--block")
        procs.append(doomed)
        registered(engine, procs)
        first = engine.start(fw.CRASHY_ID, {"i": 0})

        def describe() -> str:
            return f"statuses {_statuses(engine, [first, second])}\n" + "\n".join(
                p.output() for p in procs
            )

        second = ""
        wait_until("the doomed worker blocks in the body", blocked.exists, lambda: doomed.output())
        second = engine.start(fw.CRASHY_ID, {"i": 1})
        wait_until(
            "the second run is held back",
            lambda: engine.get_run(second).waiting_for == "concurrency: 1 of 1",
            describe,
        )
        doomed.proc.send_signal(signal.SIGKILL)
        doomed.proc.wait()
        # The slot is still held: by a run whose worker died, until the run is taken over.
        assert engine.get_run(first).status == "running"
        assert engine.get_run(second).status == "pending"
        procs.append(Proc(tmp_path, store_url, journal, "survivor"))
        wait_until(
            "both runs completed",
            lambda: _statuses(engine, [first, second]) == ["completed", "completed"],
            describe,
        )
        pids = [int(pid) for _, pid in (line.split() for line in journal.read_text().splitlines())]
        assert pids[0] == doomed.proc.pid and len(pids) == 3  # first ran again, then second
    finally:
        engine.close()
