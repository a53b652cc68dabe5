"""One round of driving, the hot path: outcomes and mail in, fold, apply, one commit.

A round gathers what is new for the runs it drives (step outcomes, woken and fresh runs, due
timers and runs found by discovery), takes the leases of runs not held yet, folds the new
events into each run's interpreter, applies the decisions (timers, waits, children,
publishes) and commits the events and the decisions of every run in one transaction
(``Transaction.commit_round``). A run that cannot be driven (a divergence, damaged rows, a
bug) is blocked and the batch is driven again without it; a lost lease drops the batch.

Kept inline on purpose: per step a round costs about 120 µs of Python over a 20 µs commit,
so it builds no objects per step beyond the events, and calls the store once per round.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Callable
from typing import Any

from ironflow.commands.function import Function
from ironflow.history.events import (
    ChildStarted,
    EventPublished,
    HistoryEvent,
    RunResumed,
    StepCompleted,
    StepFailed,
    WaitMatched,
)
from ironflow.interpreter import Decision, Work
from ironflow.runtime import children, control, discovery, events, leases, timers
from ironflow.runtime.clock import SystemClock
from ironflow.runtime.discovery import TICK_RUNS
from ironflow.runtime.executor import Job, Outcome
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.live import Broken, Input, Live
from ironflow.runtime.store import Batch, LeaseLost, Store, Transaction, rows

_STEP_KINDS = ("run", "undo")


class Driver:
    """The runs this engine drives, and the round that drives them (under the drive lock)."""

    def __init__(
        self, store: Store, clock: Any, worker_id: str, lease: _dt.timedelta, poll: float
    ) -> None:
        self.store = store
        self.clock = clock
        self.worker_id = worker_id
        self.lease_us = int(lease.total_seconds() * 1_000_000)
        self.poll = poll
        self.functions: dict[str, Function] = {}
        self.live: dict[str, Live] = {}
        # Steps handed to the executor and not yet committed, per run: never dispatched twice.
        self.in_flight: dict[str, dict[str, int]] = {}
        self.next_renewal_us = 0
        # When to look in the database for work: on in-process news (dirty), when the
        # nearest known timer falls due, and every poll interval for other processes' news.
        self.dirty = True
        # Runs this engine itself just made ready, driven next round without asking the
        # database: new ones (no mail possible, no ``ready`` flag) and ones sent mail.
        # Changed under the store's lock (inside transactions, or holding it).
        self.fresh: set[str] = set()
        self.woken: set[str] = set()
        self.next_timer_us = 0
        self.next_poll = 0.0
        # runs_taken counts leases taken (a run parked and taken again counts again);
        # runs_started/_ended/_failed/_blocked count runs, each once, as this engine commits.
        self.stats = {
            "runs_taken": 0,
            "steps_executed": 0,
            "commits": 0,
            "runs_started": 0,
            "runs_ended": 0,
            "runs_failed": 0,
            "runs_blocked": 0,
        }
        # What the driving transaction in progress started and ended, counted once it commits.
        self.committing: tuple[int, Batch] | None = None
        # Damaged events rows that waits skip: each is reported once (by id), after the
        # transaction that found it (no logging handler runs under the write lock).
        self.damaged_events: set[str] = set()
        self.unreported_events: list[tuple[str, str, str]] = []
        # Test kit hook: step functions replaced by step name (see ironflow.testing.mock_steps).
        self.step_mocks: dict[str, Callable[..., Any]] = {}
        self.done = threading.Condition()  # notified when runs end

    def now_us(self) -> int:
        if type(self.clock) is SystemClock:  # the common case, without a datetime round trip
            return self.clock.now_us()
        return rows.to_us(rows.utc(self.clock.now()))

    def now(self) -> tuple[_dt.datetime, int]:
        now_us = self.now_us()
        return rows.from_us(now_us), now_us

    def acquire_all(
        self,
        tx: Transaction,
        run_ids: list[str],
        now_us: int,
        mail: set[str],
        broken: dict[str, BaseException],
    ) -> int:
        """Take and rebuild runs (see ``leases.acquire_all``; the benchmarks time this)."""
        return leases.acquire_all(self, tx, run_ids, now_us, mail, broken)

    def round(self, drain: Callable[[], list[Outcome]]) -> list[Job] | None:
        """Fold outcomes (``drain``), woken and due runs into one transaction; the jobs it
        decided to start, or None if there was nothing to do."""
        now, now_us = self.now()
        leases.renew(self, now_us)
        work: dict[str, list[Input]] = {}
        due: dict[str, list[tuple[str, str, int]]] = {}
        in_flight_of = self.in_flight
        for outcome in drain():
            job = outcome.job
            in_flight = in_flight_of.get(job.run_id)
            if in_flight is not None and in_flight.get(job.step_id) == job.attempt:
                del in_flight[job.step_id]
                if not in_flight and job.run_id not in self.live:
                    del in_flight_of[job.run_id]  # the last step of a run that ended
            self.stats["steps_executed"] += 1
            if outcome.ok:
                item: Input = (
                    StepCompleted,
                    {"id": job.step_id, "attempt": job.attempt, "result": outcome.result},
                )
            else:
                item = (
                    StepFailed,
                    {
                        "id": job.step_id,
                        "attempt": job.attempt,
                        "error": outcome.error,
                        "retryable": outcome.retryable,
                    },
                )
            work.setdefault(job.run_id, []).append(item)
        discovered: set[str] = set()  # runs that may have mail
        if self.woken or self.fresh:  # one woken after this check kicks another round
            with self.store.lock:
                discovered = discovery.take(self.woken, TICK_RUNS)
                fresh = discovery.take(self.fresh, TICK_RUNS - len(discovered))
            for run_id in discovered:
                work.setdefault(run_id, [])
            for run_id in fresh:
                work.setdefault(run_id, [])
        if self.functions and len(work) < TICK_RUNS and discovery.due(self, now_us):
            discovered |= discovery.find(self, now_us, work, due)
        if not work:
            return None
        try:
            jobs = self.commit(work, due, discovered, now, now_us)
        finally:
            if self.unreported_events:  # after the transaction: no handler under its lock
                events.report_damaged(self)
        if jobs is None:
            return []
        self.stats["commits"] += 1
        for job in jobs:
            in_flight_of.setdefault(job.run_id, {})[job.step_id] = job.attempt
        if _FAULTS:
            crash_point("commit")
        return jobs

    def commit(
        self,
        work: dict[str, list[Input]],
        due: dict[str, list[tuple[str, str, int]]],
        discovered: set[str],
        now: _dt.datetime,
        now_us: int,
    ) -> list[Job] | None:
        """Drive ``work`` in one transaction until it commits; ``None`` if nothing of it is
        left to drive (all blocked, or the leases were lost)."""
        while True:
            try:
                with self.store.transaction() as tx:
                    jobs = self.drive_all(tx, work, due, discovered, now, now_us)
                self.report_committed()
                return jobs
            except Broken as broken:
                # The whole batch was rolled back: interpreters that moved on in memory are
                # dropped (rebuilt from the store on next use); the broken runs are parked,
                # together, and the rest driven again (once, however many runs broke).
                for run_id in work:
                    self.live.pop(run_id, None)
                with self.store.transaction() as tx:
                    blocked = [
                        (run_id, error, control.block(self, tx, run_id, error, now_us))
                        for run_id, error in broken.runs.items()
                    ]
                # Only once committed (a failed commit blocked nothing, and the next round
                # tries again), and outside the write lock (a logging handler may be slow).
                for run_id, error, done in blocked:
                    work.pop(run_id, None)
                    if done is not None:
                        function_id, started = done
                        self.stats["runs_started"] += started
                        self.stats["runs_blocked"] += 1
                        control.report_run(run_id, function_id, "blocked", error)
                if not work:
                    return None
            except LeaseLost as lost:
                # Another worker took one of these runs (our lease ran out): let all go.
                for run_id in work:
                    self.live.pop(run_id, None)
                    self.in_flight.pop(run_id, None)
                leases.report_lost(self.worker_id, lost, list(work))  # outside the transaction
                return None
            except BaseException:
                # Interpreters moved on in memory past what was committed: rebuild them. The
                # runs taken for this round are found again by the next discovery.
                for run_id in work:
                    self.live.pop(run_id, None)
                self.dirty = True
                raise

    def drive_all(
        self,
        tx: Transaction,
        work: dict[str, list[Input]],
        due: dict[str, list[tuple[str, str, int]]],
        discovered: set[str],
        now: _dt.datetime,
        now_us: int,
    ) -> list[Job]:
        self.committing = None
        live_runs = self.live
        # Runs that cannot be driven: all are found in this one pass, then ``commit`` blocks
        # them together and drives the rest again (not once per broken run: quadratic).
        broken: dict[str, BaseException] = {}
        cold = [run_id for run_id in work if run_id not in live_runs]
        started = leases.acquire_all(self, tx, cold, now_us, discovered, broken) if cold else 0
        drivable = [run_id for run_id in work if run_id in live_runs]
        # Only runs found by discovery can have mail: producers set ``ready`` with it.
        inbox = events.take_mail(tx, drivable, set(cold), discovered, broken) if discovered else {}
        if broken:
            drivable = [run_id for run_id in drivable if run_id not in broken]
        if due:  # only timers still set fire (an emit may have taken a wait first)
            due = timers.claim(tx, due, drivable, now_us)
        batch = Batch()
        for run_id in drivable:
            live = live_runs[run_id]
            inputs = list(work[run_id])  # a copy: a rolled-back batch is driven again
            fired = due.get(run_id)
            if fired:
                timers.fired(live, fired, inputs, batch)
            inputs.extend(inbox.get(run_id, ()))
            try:
                self.drive_live(tx, live, inputs, now, now_us, batch)
            except Exception as exc:
                broken[run_id] = exc  # the others are driven on to find all broken ones
        if broken:
            raise Broken(broken)
        tx.commit_round(batch, self.worker_id)
        self.committing = (started, batch)
        self.woken.update(row[0] for row in batch.notify)  # parents told that a child ended
        for run_id in batch.parked:
            live_runs.pop(run_id, None)
        for run_id in batch.finished:
            live_runs.pop(run_id, None)
            # Steps the end abandoned may still be running: remembered until they report, so
            # that a resume in the meantime does not start them a second time.
            if not self.in_flight.get(run_id):
                self.in_flight.pop(run_id, None)
        if batch.finished:
            with self.done:
                self.done.notify_all()
        return batch.jobs

    def report_committed(self) -> None:
        """Count what the transaction just committed started and ended; log runs that failed."""
        if self.committing is None:
            return
        started, batch = self.committing
        self.committing = None
        self.stats["runs_started"] += started
        self.stats["runs_ended"] += len(batch.finished)
        self.stats["runs_failed"] += len(batch.failed)
        for run_id, function_id, error in batch.failed:
            control.report_run(run_id, function_id, "failed", error)

    def drive_live(
        self,
        tx: Transaction,
        live: Live,
        inputs: list[Input],
        now: _dt.datetime,
        now_us: int,
        batch: Batch,
    ) -> None:
        run_id = live.run_id
        interpreter = live.interpreter
        decision, live.decision = live.decision, None
        # The last drive's pending work is still what the run expects: no decide() needed to
        # check new outcomes against it.
        pending = decision.pending if decision is not None else live.pending
        if pending is None:
            decision = interpreter.decide()
            pending = decision.pending
        acted = False  # whether ``decision`` was acted on already
        while True:
            accepted = _accepted(live, pending, inputs, now)
            inputs = []
            if accepted:
                batch.history.extend((run_id, *rows.encode(event)) for event in accepted)
                decision = interpreter.feed(accepted)
            elif decision is None or acted:
                decision = interpreter.decide()
            acted = True
            pending = decision.pending
            if decision.events:
                batch.history.extend((run_id, *rows.encode(event)) for event in decision.events)
                interpreter.record(decision.events)
            if decision.done:
                break
            # After a resume, work abandoned at the failure is pending again: index it all.
            resumed = live.resumed or any(type(event) is RunResumed for event in accepted)
            live.resumed = False
            inputs = self.apply(tx, live, decision, now, now_us, resumed)
            if not inputs:
                break
        if decision.done:
            children.finish(live, decision, now_us, batch)
            return
        live.pending = pending
        in_flight = self.in_flight.setdefault(run_id, {})
        due_steps = [
            work
            for work in decision.pending
            if work.kind in _STEP_KINDS and (work.due is None or rows.to_us(work.due) <= now_us)
        ]
        if due_steps or in_flight:
            if live.status == "running":
                batch.fenced.append(run_id)
            else:
                batch.running.append((now_us, run_id))
                live.status = "running"
            for work in due_steps:
                # Marked in flight only once the batch commits (see round): a batch rolled
                # back and driven again decides the same steps and must start them.
                if in_flight.get(work.id) != work.attempt:
                    batch.jobs.append(_job(run_id, work, self.step_mocks))
        else:
            batch.waiting.append((now_us, run_id))
            batch.parked.append(run_id)
            self.in_flight.pop(run_id, None)

    def apply(
        self,
        tx: Transaction,
        live: Live,
        decision: Decision,
        now: _dt.datetime,
        now_us: int,
        everything: bool = False,
    ) -> list[Input]:
        """Index the new work (timers, waits), start children, publish; return new inputs.

        With ``everything``, all pending work is (re)indexed; each action is idempotent."""
        run_id = live.run_id
        inputs: list[Input] = []
        for work in decision.pending if everything else decision.commands:
            kind = work.kind
            due_us = None if work.due is None else rows.to_us(rows.as_datetime(work.due))
            if kind in _STEP_KINDS:
                if due_us is not None and due_us > now_us:
                    timers.set_timer(self, tx, run_id, work.id, "retry", due_us, work.attempt)
            elif kind in ("sleep", "sleep_until"):
                assert due_us is not None
                timers.set_timer(self, tx, run_id, work.id, "sleep", due_us, 1)
            elif kind == "wait_event":
                found = events.register_wait(self, tx, live, work)
                if found is not None:
                    inputs.append((WaitMatched, {"id": work.id, "event": found}))
                else:
                    assert due_us is not None
                    timers.set_timer(self, tx, run_id, work.id, "wait", due_us, 1)
            elif kind in ("invoke", "invoke_async"):
                inputs.append(children.start_child(self, tx, live, work, now_us))
                if kind == "invoke" and due_us is not None:
                    timers.set_timer(self, tx, run_id, work.id, "invoke", due_us, 1)
            elif kind == "publish":
                detail = work.detail
                event_id = detail["event_id"]
                events.emit_in(self, tx, detail["event"], detail["data"], event_id, event_id, now)
                inputs.append((EventPublished, {"id": work.id, "event_id": event_id}))
        return inputs


def _accepted(
    live: Live, expected: tuple[Work, ...], inputs: list[Input], now: _dt.datetime
) -> list[HistoryEvent]:
    """Number the inputs the run still expects; drop stale ones (a late duplicate)."""
    if not inputs:
        return []
    pending = {work.id: work for work in expected}
    batch: list[HistoryEvent] = []
    seq = live.next_seq
    for cls, fields in inputs:
        sid = fields.get("id")
        if sid is not None:
            work = pending.get(sid)
            if work is None:
                continue
            if cls in (StepCompleted, StepFailed):
                if work.attempt != fields["attempt"]:
                    continue
                pending.pop(sid)
            elif cls is not ChildStarted:
                pending.pop(sid)
        batch.append(cls(seq=seq, ts=now, **fields))
        seq += 1
    return batch


def _job(run_id: str, work: Work, mocks: dict[str, Callable[..., Any]]) -> Job:
    command: Any = work.command
    timeout = getattr(command, "timeout", None)
    return Job(
        run_id,
        work.id,
        work.attempt,
        mocks.get(command.name, command.fn) if mocks else command.fn,
        command.args,
        None if timeout is None else timeout.total_seconds(),
    )
