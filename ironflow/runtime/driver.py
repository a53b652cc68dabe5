"""One round of driving, the hot path: take, fold with no transaction open, one commit.

A round gathers what is new for the runs it drives (step outcomes, woken and fresh runs, due
timers and runs found by discovery). Then, in three parts:

1. take (a short transaction, only if there are runs not held yet or mail to read): the
   leases and histories of runs not held, and the mail of runs found by discovery;
2. fold, with no transaction open: the new events go into each run's interpreter (this is
   where the workflows' code runs, however long it takes) and the decisions are applied in
   memory (``decisions``): writes wait in ``later``, and what a run receives at once (a
   wait's event emitted before, a child started, a publish) is read outside a transaction
   and folded right away;
3. commit (a short transaction): ``later``, the mail taken, and the events and decisions of
   every run (``Transaction.commit_round``), under the lease fence.

Mail and due timers are dropped only by the commit: a round that fails or dies in between
loses neither. The commit claims the due timers the fold fired (``timers.claim``) before
anything else: one gone since discovery (an emit took its wait meanwhile) voids the fold
(``timers.Unclaimed``, nothing written), and the round is folded again without it, the
event's mail read instead. An ordinary step (a warm run, an outcome in) is one transaction,
the commit. A run that cannot be driven (a divergence, damaged rows, a bug) is blocked and
the batch is driven again without it; a lost lease drops the batch (``settle``).

Kept inline on purpose: per step a round costs about 120 µs of Python over a 20 µs commit,
so it builds no objects per step beyond the events, and calls the store once per round.
"""

from __future__ import annotations

import datetime as _dt
import threading
from collections.abc import Callable
from typing import Any

import pendulum

from ironflow.commands.flow import Flow
from ironflow.commands.function import Function
from ironflow.history.events import (
    HistoryEvent,
    RunResumed,
    StepCompleted,
    StepFailed,
)
from ironflow.runtime import (
    children,
    decisions,
    discovery,
    events,
    flow,
    leases,
    registry,
    settle,
    telemetry,
    timers,
)
from ironflow.runtime.clock import SystemClock
from ironflow.runtime.discovery import TICK_RUNS
from ironflow.runtime.executor import Job, Outcome
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.flow_plan import FlowCache
from ironflow.runtime.live import Broken, Input, Live
from ironflow.runtime.models import STATS
from ironflow.runtime.store import Batch, Store, StoreUnavailable, Transaction, rows

_STEP_KINDS = decisions.STEP_KINDS
_NO_MAIL: set[str] = set()  # ready flags are cleared by the commit (drop_mail), not the take


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
        # This engine's functions with start gates (concurrency, throttle, priority, start
        # timeouts; see ``flow``): empty, the only cost to others is testing it.
        self.gated: dict[str, Flow] = {}
        # timeouts.finish by function id: a timer set when a run leaves pending (flow.py).
        self.finishing: dict[str, pendulum.Duration] = {}
        # The function registry in the database (see ``registry``): this engine's code
        # version of each of its functions, the registry as last read, and the heartbeat.
        self.versions: dict[str, str] = {}
        self.registry = registry.Registry()
        self.plans = FlowCache()  # flow control applied at arrival (see flow_plan)
        self.next_heartbeat_us = 0
        self.heartbeats = False  # whether this worker's heartbeat row may exist
        self.live: dict[str, Live] = {}
        # Steps handed to the executor and not yet committed, per run: never dispatched twice.
        self.in_flight: dict[str, dict[str, int]] = {}
        self.next_renewal_us = 0
        # When to look in the database for work: on in-process news (dirty), when the
        # nearest known timer falls due, and every poll interval for other processes' news.
        self.dirty = True
        # Another process may have left work (set by the wake-up listener's thread): anywhere
        # (``hinted``), or in the runs it named (``hinted_runs``, under ``hint_lock``).
        self.hinted = False
        self.hinted_runs: set[str] = set()
        self.hint_lock = threading.Lock()
        # The live workers sharing a function with this one (itself included, sorted), read
        # with each heartbeat: which of them chases a named run first (``discovery.named``).
        self.peers: tuple[str, ...] = ()
        self.next_chase = float("inf")  # when the grace of a run left to its chaser ends
        # The most runs this worker holds at once (see ``discovery.room``; set by the worker).
        self.capacity = TICK_RUNS
        # Runs this engine itself just made ready, driven next round without asking the
        # database: new ones (no mail possible, no ``ready`` flag) and ones sent mail.
        # Changed under the store's lock (inside transactions, or holding it).
        self.fresh: set[str] = set()
        self.woken: set[str] = set()
        # Runs the store's claim leased here (already running: ``Store.claim``), kept until a
        # take of them commits: a round that failed before its take leaves them to the next.
        self.claimed: set[str] = set()
        self.next_timer_us = 0
        self.next_poll = 0.0
        self.stats = dict.fromkeys(STATS, 0)  # Engine.stats: see models.STATS
        # What the driving transaction in progress started and ended, counted once it commits.
        self.committing: tuple[int, Batch] | None = None
        # Damaged events rows that waits skip: each is reported once (by id), after the
        # transaction that found it (no logging handler runs under the write lock).
        self.damaged_events: set[str] = set()
        self.unreported_events: list[tuple[str, str, str]] = []
        # Test kit hook: step functions replaced by step name (see ironflow.testing.mock_steps).
        self.step_mocks: dict[str, Callable[..., Any]] = {}
        self.done = threading.Condition()  # notified when runs end
        # Writes the fold decided, done by the round's commit in order: (fn, args), called
        # as fn(driver, tx, *args). Events the fold took for waits, consumed by then.
        self.later: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.consumed: set[tuple[str, str]] = set()
        # Invoke spans the fold started, ended once the round commits (telemetry.committed):
        # a round that fails to commit leaves them unended, never exported.
        self.pending_spans: list[Any] = []
        # The run whose workflow code runs now (None between folds) and a count of folds,
        # read by the watchdog thread to warn of code stuck between yields.
        self.folding: Live | None = None
        self.folds = 0

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
        telemetry.refresh()  # tracing follows the provider set when the engine runs
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
        if self.claimed:  # claimed by a round that failed before taking them
            for run_id in self.claimed:
                work.setdefault(run_id, [])
        if self.hinted_runs and self.functions:
            discovered |= discovery.named(self, work)
        if self.functions and len(work) < TICK_RUNS and discovery.due(self, now_us):
            discovered |= discovery.find(self, now_us, work, due)
        if not work:
            return None
        try:
            jobs = settle.commit(self, work, due, discovered, now, now_us)
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

    def drive_all(
        self,
        work: dict[str, list[Input]],
        due: dict[str, list[tuple[str, str, int]]],
        discovered: set[str],
        now: _dt.datetime,
        now_us: int,
    ) -> list[Job]:
        """Take, fold, commit: the round's three parts, the workflows' code in the middle
        with no transaction open. ``Broken`` (nothing written) if a run cannot be driven."""
        self.committing = None
        self.later.clear()
        self.pending_spans.clear()
        self.consumed.clear()
        live_runs = self.live
        # Runs that cannot be driven: all are found in this one pass, then ``settle.commit`` blocks
        # them together and drives the rest again (not once per broken run: quadratic).
        broken: dict[str, BaseException] = {}
        batch = Batch()
        started = 0
        cold = [run_id for run_id in work if run_id not in live_runs]
        with_mail: list[str] = []
        positions: list[int] = []
        inbox: dict[str, list[Input]] = {}
        if cold or discovered:
            histories: dict[str, list[HistoryEvent]] = {}
            unwritten: list[tuple[Any, ...]] = []
            mail: list[tuple[Any, ...]] = []
            # 1. Take (a short transaction): leases and histories of the runs not held, and
            # the mail of runs found by discovery (only they can have any: producers set
            # ``ready`` with it). Mail and timers are dropped only by the commit, so a round
            # that fails in between loses neither; the ready flags stay set until then too.
            taken: list[Any] = []
            with self.store.take_transaction() as tx:  # synced by the commit (3.)
                if cold:
                    taken, histories, unwritten = leases.take(
                        self, tx, cold, now_us, _NO_MAIL, broken
                    )
                if discovered:
                    held = {row[0] for row in taken}
                    with_mail = [
                        run_id
                        for run_id in work
                        if run_id in discovered and (run_id in held or run_id in live_runs)
                    ]
                    mail = tx.mail_of(with_mail) if with_mail else []
            if self.claimed:  # taken (or ended meanwhile): the take committed
                self.claimed.difference_update(cold)
            if taken:
                started = len(unwritten)
                batch.history.extend(unwritten)  # their RunStarted first
                leases.rebuild(self, taken, histories, broken)
            if mail:
                inbox, positions = events.decode_mail(mail, broken)
        # 2. Fold, with no transaction open: workflow code may take its time here without
        # holding the write lock (the watchdog warns when it takes too long).
        fired_in: list[str] = []  # runs whose due timers this fold fired
        for run_id in work:
            live = live_runs.get(run_id)
            if live is None or run_id in broken:
                continue
            inputs = list(work[run_id])  # a copy: a batch that broke is driven again
            fired = due.get(run_id)
            if fired:
                fired_in.append(run_id)
                timers.fired(live, fired, inputs, batch)
            if inbox:
                inputs.extend(inbox.get(run_id, ()))
            try:
                self.drive_live(live, inputs, now, now_us, batch)
            except StoreUnavailable:
                raise  # a read the fold made failed: the database's, not the run's
            except Exception as exc:
                broken[run_id] = exc  # the others are driven on to find all broken ones
        if broken:
            raise Broken(broken)
        if _FAULTS:
            crash_point("fold")  # taken (leases, mail read), folded, nothing committed
        # 3. Commit (a short transaction): what the fold decided, under the lease fence.
        later = self.later
        with self.store.transaction() as tx:
            if fired_in:
                # The timers the fold fired are claimed here, with what they led to: one
                # gone since discovery (an emit took its wait, another round fired it)
                # voids the fold (``Unclaimed``, nothing written), and a round that fails
                # or dies before this commit leaves them set, to fire next round.
                timers.claim(tx, due, fired_in, now_us)
            if later:
                # A child run made meanwhile by a worker that took the run over fails an
                # insert here: that is a lost lease too.
                tx.fence()
                # The store's per-name locks, all at once, before the writes that need them.
                events.reserve(tx, later)
            for action, args in later:
                action(self, tx, *args)
            if with_mail:
                tx.drop_mail(positions, with_mail)
            tx.commit_round(batch, self.worker_id)
            if self.gated and batch.finished:  # their slots free: queued runs move up
                flow.released(self, tx, batch.finished, now_us)
        self.committing = (started, batch)
        if telemetry.ON:  # what this round committed, reported before ended runs leave
            telemetry.committed(self, batch, now_us)
        self.woken.update(row[0] for row in batch.notify)  # parents told that a child ended
        # Dropped runs let go of their workflow code (see ``Interpreter.release``).
        for run_id in batch.parked:
            if (dropped := live_runs.pop(run_id, None)) is not None:
                dropped.interpreter.release()
        for run_id in batch.finished:
            if (dropped := live_runs.pop(run_id, None)) is not None:
                dropped.interpreter.release()
            # Steps the end abandoned may still be running: remembered until they report, so
            # that a resume in the meantime does not start them a second time.
            if not self.in_flight.get(run_id):
                self.in_flight.pop(run_id, None)
        if batch.finished:
            with self.done:
                self.done.notify_all()
        return batch.jobs

    def drive_live(
        self,
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
            accepted = decisions.accepted(live, pending, inputs, now)
            inputs = []
            # The workflow's code runs in feed/decide: watched (see watchdog), never with a
            # transaction open.
            self.folds += 1
            self.folding = live
            try:
                if accepted:
                    batch.history.extend((run_id, *rows.encode(event)) for event in accepted)
                    decision = interpreter.feed(accepted)
                elif decision is None or acted:
                    decision = interpreter.decide()
            finally:
                self.folding = None
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
            inputs = decisions.apply(self, live, decision, now, now_us, resumed)
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
                    batch.jobs.append(decisions.job(live, work, self.step_mocks))
        else:
            batch.waiting.append((now_us, run_id))
            batch.parked.append(run_id)
            self.in_flight.pop(run_id, None)
