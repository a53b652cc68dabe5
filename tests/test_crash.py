"""Crash tests: real worker processes SIGKILLed mid-run, then a fresh worker finishes the run.

Each scenario starts a run of ``crash-flow`` (steps, a retried step, a 200ms sleep, a
wait_for_event, a parallel of two steps, a compensation registered in the run and one run by
the invoked child ``crash-saga``; see ``tests/crash_worker.py``) on each store (``[sqlite]``: a
fresh file, ``[postgres]``: a fresh schema of the session's server; the worker takes the URL),
then:

1. runs ``tests/crash_worker.py`` as a subprocess that dies by SIGKILL, either through
   ``IRONFLOW_CRASH_AT=point:n`` (``ironflow/runtime/faults.py``) or because the test calls
   ``os.kill(pid, SIGKILL)`` while a step body is blocked (the body journals, then waits for a
   file that never appears);
2. snapshots what was committed when it died (every run's history; on PostgreSQL once the
   server has ended the dead worker's session, which may still apply a COMMIT it had sent)
   and runs the worker again
   without a crash point: it is a new process with a new worker id, so it must wait for the dead
   worker's lease (400ms) to expire before it takes the run over;
3. emits the awaited event from the test through a separate ``Engine`` on the same file, as soon
   as the run has scheduled the wait (so it is delivered through the inbox of a waiting run);
4. checks: the output, status ``completed``; histories contiguous (seq 0..n-1), append-only (the
   snapshot is a prefix of the final history), no duplicate completion / timer / wait match /
   child start for an id; and, from the journal every step body appends to (``step-id pid``,
   fsynced before the body returns): no step whose completion was committed before the crash
   ran again after it, every body run after the crash has its outcome committed, and a body ran
   once more than its recorded outcomes only if that run was in the killed process and lost
   before its outcome was committed (at-least-once, never more).

A second matrix kills a worker driving a run that was resumed after it failed (the cause
fixed, its undo already run) at each of its first commits and around its first step: the
recovery worker completes it, nothing that ran before the resume runs again, and the history
keeps the failure, one RunResumed and what followed.

No sleeps are used for synchronisation: the test polls the database, the journal and the
process with bounded waits and fails with the worker's output and the run's history.

Repeat the whole matrix N times (it is timing dependent, so repetition finds more); the
default is once per store (about 25 s on SQLite and 37 s on PostgreSQL on a 2-core box)::

    IRONFLOW_CRASH_REPEAT=20 .venv/bin/python -m pytest tests/test_crash.py -q
    IRONFLOW_CRASH_REPEAT=20 .venv/bin/python -m pytest tests/test_crash.py -q -k postgres
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import crash_worker as cw
import pytest

from ironflow.commands import kinds
from ironflow.history.events import (
    ChildStarted,
    CommandScheduled,
    RetryScheduled,
    RunCompleted,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
)
from ironflow.runtime.store import is_postgres_url

WORKER = Path(__file__).with_name("crash_worker.py")
REPEAT = int(os.environ.get("IRONFLOW_CRASH_REPEAT", "1"))
RUN_ID = "crash-run"
CHILD_ID = f"{RUN_ID}/saga"
DATA = {"key": "k1", "n": 3}
APPROVER = "tester"
PHASE_TIMEOUT = 30.0  # seconds one worker process may take before the test gives up on it
POLL = 0.005

# Injection points and hit counts. A clean run makes 14-15 driver commits (``dispatch`` is
# reached right after each ``commit``, ``fold`` right before it, between the round's take and
# its commit); step bodies start in this order: fetch, flaky (fails), flaky, pair/0/left,
# pair/1/right, hold, boom (fails), compensate:hold, finish; ``step-end`` is only reached by
# bodies that return. ``timer-fire`` 1 is flaky's retry timer, 2 the 200ms sleep.
CRASH_POINTS = [
    "commit:1",
    "commit:4",
    "commit:6",
    "commit:8",
    "commit:10",
    "commit:12",
    "dispatch:1",
    "dispatch:5",
    "step-start:1",
    "step-start:4",
    "step-start:8",
    "step-end:1",
    "step-end:3",
    "step-end:6",
    "timer-fire:1",
    "timer-fire:2",
    "event-deliver:1",
    # Between a round's two transactions: leases taken and mail read, nothing committed.
    "fold:1",
    "fold:5",
    "fold:9",
]
# Step bodies the test kills the worker in, with os.kill(pid, SIGKILL), while they run.
KILL_IN = ["fetch", "pair/1/right", "compensate:hold"]

SCENARIOS = [("crash", point) for point in CRASH_POINTS] + [("kill", sid) for sid in KILL_IN]
PARAMS = [
    pytest.param(rep, mode, arg, id=f"{mode}={arg}" + (f"-r{rep}" if REPEAT > 1 else ""))
    for rep in range(REPEAT)
    for mode, arg in SCENARIOS
]

BACKENDS_NAMED = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = %s"


def _with_param(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query, keep_blank_values=True), (key, value)]
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


# Once per id and run: these must never be recorded twice.
ONCE = (StepCompleted, TimerFired, WaitMatched, ChildStarted, CommandScheduled)


class Worker:
    """One crash_worker process with its output files."""

    def __init__(
        self,
        tmp: Path,
        db: str,
        journal: Path,
        name: str,
        env: dict[str, str],
        block: str | None = None,
        run_id: str = RUN_ID,
    ) -> None:
        self.out = tmp / f"{name}.out"
        self.err = tmp / f"{name}.err"
        # On PostgreSQL the worker's session is named, so that the test can see it end.
        self.tag = f"ironflow-crash-{name}-{uuid.uuid4().hex[:8]}"
        if is_postgres_url(db):
            db = _with_param(db, "application_name", self.tag)
        cmd = [sys.executable, str(WORKER), db, str(journal), run_id]
        if block is not None:
            cmd += ["--block", block]
        cmd += ["--deadline", str(PHASE_TIMEOUT - 5)]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        self.pid = self.proc.pid

    def output(self) -> str:
        return (
            f"--- stdout of worker {self.pid}:\n{self.out.read_text(errors='replace')}"
            f"--- stderr of worker {self.pid}:\n{self.err.read_text(errors='replace')}"
        )


class Scenario:
    def __init__(self, tmp: Path, store_url: str) -> None:
        self.tmp = tmp
        self.db = store_url  # a SQLite file or a fresh PostgreSQL schema (tests/conftest.py)
        self.journal = tmp / "journal.txt"
        self.engine = cw.make_engine(self.db)  # the test's own engine: start, emit, read
        self.emitted = False

    def close(self) -> None:
        self.engine.close()

    def env(self, crash_at: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("IRONFLOW_CRASH")}
        if crash_at is not None:
            env["IRONFLOW_CRASH_AT"] = crash_at
        return env

    def histories(self) -> dict[str, list[Any]]:
        return {run.id: self.engine.history(run.id) for run in self.engine.list_runs()}

    def describe(self) -> str:
        lines = []
        for run in self.engine.list_runs():
            lines.append(f"run {run.id}: {run.status} output={run.output!r} error={run.error}")
            for event in self.engine.history(run.id):
                detail = getattr(event, "id", "")
                if hasattr(event, "attempt"):
                    detail += f" attempt={event.attempt}"
                lines.append(f"  {event.seq:3} {type(event).__name__} {detail}")
        lines.append("journal: " + ", ".join(f"{s}@{p}" for s, p in self.lines()))
        return "\n".join(lines)

    def lines(self) -> list[tuple[str, int]]:
        return cw.journal_lines(str(self.journal))

    def settle(self, dead: Worker) -> None:
        """Wait until the server has finished with ``dead``'s session: a worker SIGKILLed
        right after sending COMMIT still has that commit applied by the server, a moment
        after the process is gone. What was committed "when it died" is what is there then.
        (On SQLite a commit is done in the process, before it can die.)"""
        if not is_postgres_url(self.db):
            return
        deadline = time.monotonic() + PHASE_TIMEOUT
        while self.engine.store.query(BACKENDS_NAMED, (dead.tag,))[0][0]:
            if time.monotonic() > deadline:
                pytest.fail(f"the server kept worker {dead.pid}'s session for {PHASE_TIMEOUT}s")
            time.sleep(POLL)

    def maybe_emit(self) -> None:
        """Emit the awaited event once the run has scheduled its wait (committed)."""
        if self.emitted:
            return
        if any(
            isinstance(event, CommandScheduled) and event.id == "approval"
            for event in self.engine.history(RUN_ID)
        ):
            self.engine.emit(
                cw.EVENT, {"key": DATA["key"], "by": APPROVER}, idempotency_key="crash-approval"
            )
            self.emitted = True

    def drive(self, worker: Worker, kill_in: str | None = None) -> int:
        """Serve ``worker`` (emit the event when due, kill it in ``kill_in``) until it exits."""
        deadline = time.monotonic() + PHASE_TIMEOUT
        while True:
            code = worker.proc.poll()
            if code is not None:
                return code
            self.maybe_emit()
            if kill_in is not None and (kill_in, worker.pid) in self.lines():
                os.kill(worker.pid, signal.SIGKILL)
                try:
                    return worker.proc.wait(timeout=PHASE_TIMEOUT)
                except subprocess.TimeoutExpired:
                    pytest.fail(f"worker {worker.pid} survived SIGKILL\n{worker.output()}")
            if time.monotonic() > deadline:
                worker.proc.kill()
                worker.proc.wait()
                what = f"reach step {kill_in!r}" if kill_in else "exit"
                pytest.fail(
                    f"worker {worker.pid} did not {what} within {PHASE_TIMEOUT}s\n"
                    f"{worker.output()}\n{self.describe()}"
                )
            time.sleep(POLL)


def _outcomes(histories: dict[str, list[Any]]) -> collections.Counter[str]:
    return collections.Counter(
        event.id
        for history in histories.values()
        for event in history
        if isinstance(event, StepCompleted | StepFailed)
    )


def _check_history(run_id: str, history: list[Any], context: str) -> None:
    seqs = [event.seq for event in history]
    assert seqs == list(range(len(history))), f"run {run_id}: seq not 0..n-1: {seqs}\n{context}"
    assert isinstance(history[0], RunStarted), f"run {run_id}: starts with {history[0]}\n{context}"
    terminal = [i for i, e in enumerate(history) if isinstance(e, RunCompleted | RunFailed)]
    assert terminal == [len(history) - 1], (
        f"run {run_id}: terminal events at {terminal}, history has {len(history)}\n{context}"
    )
    for cls in ONCE:
        ids = collections.Counter(e.id for e in history if isinstance(e, cls))
        dups = {sid: n for sid, n in ids.items() if n > 1}
        assert not dups, f"run {run_id}: duplicate {cls.__name__} for {dups}\n{context}"
    attempts = collections.Counter(
        (e.id, e.attempt) for e in history if isinstance(e, StepCompleted | StepFailed)
    )
    dups = {key: n for key, n in attempts.items() if n > 1}
    assert not dups, f"run {run_id}: an attempt recorded twice: {dups}\n{context}"
    retries = collections.Counter(
        (e.id, e.attempt) for e in history if isinstance(e, RetryScheduled)
    )
    dups = {key: n for key, n in retries.items() if n > 1}
    assert not dups, f"run {run_id}: a retry scheduled twice: {dups}\n{context}"


@pytest.mark.parametrize(("rep", "mode", "arg"), PARAMS)
def test_crash_and_recover(tmp_path: Path, store_url: str, rep: int, mode: str, arg: str) -> None:
    sc = Scenario(tmp_path, store_url)
    try:
        _scenario(sc, mode, arg)
    finally:
        sc.close()


def _scenario(sc: Scenario, mode: str, arg: str) -> None:
    assert sc.engine.start(cw.FLOW_ID, DATA, run_id=RUN_ID) == RUN_ID

    # Phase 1: a worker that dies by SIGKILL.
    if mode == "crash":
        first = Worker(sc.tmp, sc.db, sc.journal, "first", sc.env(arg))
        code = sc.drive(first)
    else:
        first = Worker(sc.tmp, sc.db, sc.journal, "first", sc.env(None), block=arg)
        code = sc.drive(first, kill_in=arg)
    assert code == -signal.SIGKILL, (
        f"first worker should have died by SIGKILL ({mode} {arg}), exit code {code}\n"
        f"{first.output()}\n{sc.describe()}"
    )
    sc.settle(first)
    snapshot = sc.histories()
    committed_before = {e.id for h in snapshot.values() for e in h if isinstance(e, StepCompleted)}
    outcomes_before = _outcomes(snapshot)
    lines_at_crash = sc.lines()

    # Phase 2: a fresh worker (new worker id) takes over after the lease expires and finishes.
    second = Worker(sc.tmp, sc.db, sc.journal, "second", sc.env(None))
    code = sc.drive(second)
    context = f"scenario {mode}={arg}\n{first.output()}\n{second.output()}\n{sc.describe()}"
    assert code == 0, f"recovery worker exited with {code}\n{context}"

    # The run and its child ended as they would have without a crash.
    run = sc.engine.get_run(RUN_ID)
    assert run.status == "completed", f"run is {run.status}: {run.error}\n{context}"
    assert run.output == cw.expected_output(DATA["n"], APPROVER), context
    runs = {r.id: r for r in sc.engine.list_runs()}
    assert set(runs) == {RUN_ID, CHILD_ID}, f"unexpected runs {sorted(runs)}\n{context}"
    child = runs[CHILD_ID]
    assert child.status == "failed", f"child is {child.status}\n{context}"
    assert child.error is not None and child.error.message == "boom always fails", context

    # Histories: contiguous, append-only across the crash, no duplicates.
    final = sc.histories()
    for run_id, history in final.items():
        _check_history(run_id, history, context)
    for run_id, before in snapshot.items():
        after = final[run_id]
        assert after[: len(before)] == before, (
            f"run {run_id}: history committed before the crash changed\n{context}"
        )

    # Step bodies: at-least-once, and never again once their completion was committed.
    scheduled = {
        e.id
        for h in final.values()
        for e in h
        if isinstance(e, CommandScheduled) and e.kind in (kinds.RUN, kinds.COMPENSATE)
    }
    assert scheduled == {
        "fetch",
        "flaky",
        "pair/0/left",
        "pair/1/right",
        "compensate:fetch",
        "hold",
        "boom",
        "compensate:hold",
        "finish",
    }, context
    lines = sc.lines()
    assert lines[: len(lines_at_crash)] == lines_at_crash, context
    assert {sid for sid, _ in lines} <= scheduled, f"journal names unknown steps\n{context}"
    crashed = collections.Counter(sid for sid, pid in lines if pid == first.pid)
    after = collections.Counter(sid for sid, pid in lines if pid != first.pid)
    assert first.pid != second.pid and {pid for _, pid in lines} <= {first.pid, second.pid}, context
    outcomes = _outcomes(final)
    lost: dict[str, int] = {}
    for sid in sorted(scheduled):
        assert not (sid in committed_before and after[sid]), (
            f"step {sid!r} had a committed completion before the crash and its body ran "
            f"again after it ({after[sid]} time(s))\n{context}"
        )
        assert after[sid] == outcomes[sid] - outcomes_before[sid], (
            f"step {sid!r}: its body ran {after[sid]} time(s) after the crash but "
            f"{outcomes[sid] - outcomes_before[sid]} outcome(s) were committed after it\n"
            f"{context}"
        )
        lost[sid] = crashed[sid] - outcomes_before[sid]
        assert lost[sid] in (0, 1), (
            f"step {sid!r}: {crashed[sid]} body run(s) in the killed worker but "
            f"{outcomes_before[sid]} outcome(s) committed (expected at most one lost run)\n"
            f"{context}"
        )
    # compensate:fetch never runs (the run succeeded), boom always fails; the rest completed once.
    completed = collections.Counter(
        e.id for h in final.values() for e in h if isinstance(e, StepCompleted)
    )
    assert completed == collections.Counter(scheduled - {"compensate:fetch", "boom"}), context
    lost_steps = sorted(sid for sid, n in lost.items() if n)
    assert len(lost_steps) <= 2, f"more lost bodies than can be in flight: {lost_steps}\n{context}"
    if mode == "kill":
        assert lost_steps in ([arg], sorted([arg, "pair/0/left"])), (
            f"killed inside {arg!r}, lost body runs of {lost_steps}\n{context}"
        )
    elif arg.startswith("step-end"):
        assert lost_steps, f"crashed after a body returned, yet no body run was lost\n{context}"


# --- a resumed run ------------------------------------------------------------------------------

RESUME_RUN = "resume-run"
# The resumed worker's commits: 1 = the retry of "gate" decided, 2 = gate done and "last"
# scheduled, 3 = the run completed.
RESUME_POINTS = [
    "commit:1",
    "commit:2",
    "fold:1",
    "fold:2",
    "dispatch:1",
    "step-start:1",
    "step-end:1",
]
RESUME_PARAMS = [
    pytest.param(rep, point, id=point + (f"-r{rep}" if REPEAT > 1 else ""))
    for rep in range(REPEAT)
    for point in RESUME_POINTS
]


@pytest.mark.parametrize(("rep", "point"), RESUME_PARAMS)
def test_a_resumed_run_survives_a_crash(
    tmp_path: Path, store_url: str, rep: int, point: str
) -> None:
    sc = Scenario(tmp_path, store_url)
    sc.emitted = True  # this run waits for no event
    try:
        _resume_scenario(sc, point)
    finally:
        sc.close()


def _resume_scenario(sc: Scenario, point: str) -> None:
    sc.engine.start(cw.RESUME_ID, run_id=RESUME_RUN)

    # Phase 0: the gate is closed, the run fails and its undo runs.
    failing = Worker(sc.tmp, sc.db, sc.journal, "failing", sc.env(None), run_id=RESUME_RUN)
    assert sc.drive(failing) == 0, f"{failing.output()}\n{sc.describe()}"
    assert sc.engine.get_run(RESUME_RUN).status == "failed", sc.describe()
    before_resume = collections.Counter(sid for sid, _ in sc.lines())
    assert before_resume == {"first": 1, "gate": 1, "compensate:first": 1}, sc.describe()

    # The cause is fixed, the run resumed; then a worker dies at ``point``.
    Path(str(sc.journal) + ".open").touch()
    sc.engine.resume(RESUME_RUN)
    first = Worker(sc.tmp, sc.db, sc.journal, "first", sc.env(point), run_id=RESUME_RUN)
    code = sc.drive(first)
    assert code == -signal.SIGKILL, (
        f"worker should have died by SIGKILL at {point}, exit code {code}\n"
        f"{first.output()}\n{sc.describe()}"
    )
    sc.settle(first)
    snapshot = sc.engine.history(RESUME_RUN)

    second = Worker(sc.tmp, sc.db, sc.journal, "second", sc.env(None), run_id=RESUME_RUN)
    code = sc.drive(second)
    context = f"resume crash at {point}\n{first.output()}\n{second.output()}\n{sc.describe()}"
    assert code == 0, f"recovery worker exited with {code}\n{context}"

    run = sc.engine.get_run(RESUME_RUN)
    assert run.status == "completed", f"run is {run.status}: {run.error}\n{context}"
    assert run.output == ["first", "gate:open", "last"], context
    history = sc.engine.history(RESUME_RUN)
    assert history[: len(snapshot)] == snapshot, f"committed history changed\n{context}"
    assert [e.seq for e in history] == list(range(len(history))), context
    kinds = [type(e).__name__ for e in history]
    assert kinds.count("RunResumed") == 1 and kinds.count("RunFailed") == 1, context
    assert kinds.index("RunFailed") < kinds.index("RunResumed"), context
    assert kinds[-1] == "RunCompleted", context
    completed = collections.Counter(e.id for e in history if isinstance(e, StepCompleted))
    assert completed == {"first": 1, "compensate:first": 1, "gate": 1, "last": 1}, context
    # What ran before the resume never ran again; the rest ran at least once.
    ran = collections.Counter(sid for sid, _ in sc.lines())
    assert ran["first"] == 1 and ran["compensate:first"] == 1, context
    assert ran["gate"] >= 2 and ran["last"] >= 1, context
