"""The embedded engine: runs workflows durably on SQLite.

A round folds new events into each run's interpreter and commits the events and the decisions
together, many runs per transaction. Rounds run under one drive lock: in the thread that called
``run_until_idle``/``serve``, or on the pool thread that just finished a step, which then runs
that run's next step itself. Every write to a run's history happens under that run's lease,
so one run has one writer.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
import logging
import os
import queue
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from ironflow.commands.durations import parse_duration
from ironflow.commands.event import MISSING, Event, lookup
from ironflow.commands.function import Function, check_workflow_fn
from ironflow.commands.jsonvalue import NotJSONError, public_error, to_json_value
from ironflow.commands.names import (
    RUN_IDS_SHOWN,
    check_event_name,
    check_function_id,
    check_idempotency_key,
    check_shown_name,
)
from ironflow.errors import CancelledError, NonDeterminismError
from ironflow.history.errors import decode_error, encode_error, type_name
from ironflow.history.events import (
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    ErrorInfo,
    EventPublished,
    HistoryEvent,
    RunCancelled,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
)
from ironflow.interpreter import Decision, Interpreter, Work
from ironflow.runtime import rows
from ironflow.runtime.clock import SystemClock
from ironflow.runtime.executor import Executor, Job, Outcome, is_async
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.ids import new_id
from ironflow.runtime.models import STATUSES, TERMINAL, Run, RunError
from ironflow.runtime.store import DURABILITY, SQLiteStore, StoreError, parse_url, unusable

Input = tuple[type, dict[str, Any]]
_STEP_KINDS = ("run", "undo")
_INBOX_TYPES: dict[str, type] = {
    "WaitMatched": WaitMatched,
    "ChildCompleted": ChildCompleted,
    "ChildFailed": ChildFailed,
    "RunCancelled": RunCancelled,
    # resume() now writes RunResumed into the history itself; a database written by an
    # earlier version may still hold one as mail.
    "RunResumed": RunResumed,
}


def canonical(value: Any) -> str:
    """The JSON text two equal match values share (key order does not matter)."""
    return rows.dumps_sorted(value)


@attrs.define
class _Live:
    """A run this engine holds the lease of, with its cached interpreter."""

    run_id: str
    function: Function
    interpreter: Interpreter
    event_pos: int
    parent_run_id: str | None
    parent_step_id: str | None
    notify_parent: bool
    status: str
    decision: Decision | None = None  # from a rebuild, not acted on yet
    pending: tuple[Work, ...] | None = None  # outstanding work after the last drive
    resumed: bool = False  # rebuilt from a history that ends with RunResumed

    @property
    def next_seq(self) -> int:
        return len(self.interpreter.events)


_NEVER = 2**63 - 1
# One WARNING per run that fails or blocks (never per step): ``ironflow worker`` shows them.
# Silent unless the application configures logging (a library must not print on its own).
_RUNS_LOG = logging.getLogger("ironflow.runs")
_RUNS_LOG.addHandler(logging.NullHandler())
_TICK_RUNS = 1000  # runs driven per transaction at most


class _Broken(Exception):
    """Runs that could not be driven (a damaged row, history and code diverge, a bug), each
    with its error: the batch is rolled back and they are blocked, all in one go."""

    def __init__(self, runs: dict[str, BaseException]) -> None:
        super().__init__(*runs)
        self.runs = runs


@attrs.define
class _Batch:
    """What one driving transaction writes, gathered so that it is written in bulk."""

    history: list[tuple[Any, ...]] = attrs.Factory(list)
    running: list[tuple[Any, ...]] = attrs.Factory(list)
    # Runs that stay running: their row is not rewritten (the history says how far they
    # are), only their lease is checked.
    fenced: list[str] = attrs.Factory(list)
    waiting: list[tuple[Any, ...]] = attrs.Factory(list)
    ended: list[tuple[Any, ...]] = attrs.Factory(list)
    notify: list[tuple[Any, ...]] = attrs.Factory(list)
    timers_done: list[tuple[str, str]] = attrs.Factory(list)
    waits_done: list[tuple[str, str]] = attrs.Factory(list)
    jobs: list[Job] = attrs.Factory(list)
    parked: list[str] = attrs.Factory(list)
    finished: list[str] = attrs.Factory(list)
    failed: list[tuple[str, str, BaseException | None]] = attrs.Factory(list)

    def write(self, conn: Any, owner: str, now_us: int) -> None:
        if self.timers_done:
            conn.executemany(
                "DELETE FROM timers WHERE run_id = ? AND step_id = ?", self.timers_done
            )
        if self.waits_done:
            conn.executemany("DELETE FROM waits WHERE run_id = ? AND step_id = ?", self.waits_done)
        if self.history:
            conn.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?)", self.history)
        expected = len(self.running) + len(self.waiting) + len(self.ended) + len(self.fenced)
        changed = 0
        for chunk in _chunks(self.fenced):
            changed += conn.execute(
                f"SELECT COUNT(*) FROM runs WHERE id IN ({_marks(chunk)}) AND lease_owner = ?",
                (*chunk, owner),
            ).fetchone()[0]
        if self.running:
            changed += conn.executemany(
                "UPDATE runs SET status = 'running', updated_us = ? "
                f"WHERE id = ? AND lease_owner = '{_quote(owner)}'",
                self.running,
            ).rowcount
        if self.waiting:
            changed += conn.executemany(
                "UPDATE runs SET status = 'waiting', updated_us = ?, "
                f"lease_owner = NULL, lease_until_us = NULL WHERE id = ? "
                f"AND lease_owner = '{_quote(owner)}'",
                self.waiting,
            ).rowcount
        if self.ended:
            changed += conn.executemany(
                "UPDATE runs SET status = ?, output = ?, error = ?, ready = 0, "
                "updated_us = ?, ended_us = ?, lease_owner = NULL, lease_until_us = NULL "
                f"WHERE id = ? AND lease_owner = '{_quote(owner)}'",
                self.ended,
            ).rowcount
            for chunk in _chunks(self.finished):
                marks = _marks(chunk)
                for table in ("timers", "waits", "inbox"):
                    conn.execute(f"DELETE FROM {table} WHERE run_id IN ({marks})", chunk)
        if changed != expected:
            # A run's lease moved to another worker under us: write nothing of this batch.
            raise sqlite3.IntegrityError(f"lease lost: {changed} of {expected} runs still ours")
        if self.notify:
            # A parent that already ended (its invoke timed out, say) is not told.
            conn.executemany(
                "INSERT INTO inbox (run_id, type, ts_us, body) SELECT ?, ?, ?, ? WHERE EXISTS "
                "(SELECT 1 FROM runs WHERE id = ?1 "
                "AND status NOT IN ('completed', 'failed', 'cancelled'))",
                self.notify,
            )
            conn.executemany(
                "UPDATE runs SET ready = 1 WHERE id = ? "
                "AND status NOT IN ('completed', 'failed', 'cancelled')",
                [(row[0],) for row in self.notify],
            )


def _take(pool: set[str], most: int) -> set[str]:
    """Remove and return up to ``most`` items of ``pool`` (a bounded batch per round)."""
    if len(pool) <= most:
        taken = set(pool)
        pool.clear()
        return taken
    return {pool.pop() for _ in range(most)}


def _quote(text: str) -> str:
    return text.replace("'", "''")


def _marks(values: Any) -> str:
    return ",".join("?" * len(values))


def _chunks(values: list[str], size: int = 400) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]


class Engine:
    """Runs registered workflows durably. See the README for the whole API."""

    def __init__(
        self,
        store: Any = None,
        *,
        clock: Any = None,
        durability: str = "full",
        lease: Any = "30s",
        max_workers: int | None = None,
        poll: Any = "1s",
    ) -> None:
        # Every argument is checked before the database is opened: a bad one creates nothing.
        if clock is not None and not callable(getattr(clock, "now", None)):
            raise TypeError(
                f"clock must have a now() method returning an aware datetime, got {clock!r}"
            )
        if not isinstance(durability, str) or durability not in DURABILITY:
            raise ValueError(
                f"durability must be {' or '.join(map(repr, DURABILITY))}, got {durability!r}"
            )
        if max_workers is not None and (
            type(max_workers) is not int or max_workers <= 0  # a bool is no count
        ):
            raise ValueError(
                f"max_workers must be a positive int (threads running sync steps) or None for "
                f"the default, got {max_workers!r}"
            )
        self.lease = parse_duration(lease, what="lease")
        self.poll = parse_duration(poll, what="poll").total_seconds()
        if isinstance(store, SQLiteStore):
            self.store = store
        else:
            self.store = SQLiteStore(parse_url(store), durability=durability)
        self.clock = clock if clock is not None else SystemClock()
        self._closed = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self.functions: dict[str, Function] = {}
        self._live: dict[str, _Live] = {}
        # Steps handed to the executor and not yet committed, per run: never dispatched twice.
        self._in_flight: dict[str, dict[str, int]] = {}
        self._results: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outcomes: list[Outcome] = []
        self._outstanding = 0  # jobs submitted whose outcome this engine has not drained yet
        self._executor = Executor(self._results, max_workers, self._on_outcome)
        self._drive_lock = threading.RLock()
        self._failure: BaseException | None = None  # raised by a pool thread while driving
        self._drivers = 0  # threads in run_until_idle/serve
        self._done = threading.Condition()
        self._serving = False
        self._stopping = threading.Event()
        self._next_renewal_us = 0
        # When to look in the database for work: on in-process news (dirty), when the
        # nearest known timer falls due, and every poll interval for other processes' news.
        self._dirty = True
        # Runs this engine itself just made ready, driven next round without asking the
        # database: new ones (no mail possible, no ``ready`` flag) and ones sent mail.
        self._fresh: set[str] = set()
        self._woken: set[str] = set()
        self._next_timer_us = 0
        self._next_poll = 0.0
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
        self._committing: tuple[int, _Batch] | None = None
        # Damaged events rows that waits skip: each is reported once (by id), after the
        # transaction that found it (no logging handler runs under the write lock).
        self._damaged_events: set[str] = set()
        self._unreported_events: list[tuple[str, str, str]] = []
        # Test kit hook: step functions replaced by step name (see ironflow.testing.mock_steps).
        self.step_mocks: dict[str, Callable[..., Any]] = {}

    # --- registration ------------------------------------------------------------------------

    def register(self, fn: Any) -> Function:
        """Make a function declared with ``@ironflow.function`` runnable by this engine."""
        if not isinstance(fn, Function):
            check_workflow_fn(fn)
            raise TypeError(
                f"register() takes a function declared with @ironflow.function(id=...), got "
                f"{getattr(fn, '__qualname__', fn)!r}"
            )
        self._check_open()
        check_function_id(fn.id)  # a Function made without @ironflow.function has no check
        existing = self.functions.get(fn.id)
        if existing is not None and existing != fn:
            # Replacing it would silently drop the first one's triggers.
            raise ValueError(
                f"function id {fn.id!r} is already registered with this engine (by "
                f"{getattr(existing.fn, '__qualname__', existing.fn)!r}); give the function "
                f"another id, or use a new Engine to replace it"
            )
        self.functions[fn.id] = fn  # the same function again changes nothing
        return fn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(
                f"the engine on {self.store.path} is closed; open a new Engine to use it again"
            )

    def _function(self, function: Any) -> Function:
        fid = function.id if isinstance(function, Function) else function
        if type(fid) is not str or not fid.strip():
            raise ValueError(
                f"function must be a function id or a declared function, got {function!r}"
            )
        found = self.functions.get(fid)
        if found is None:
            known = ", ".join(sorted(self.functions)) or "none"
            raise ValueError(f"unknown function {fid!r}; registered functions: {known}")
        return found

    # --- time ------------------------------------------------------------------------------

    def _now_us(self) -> int:
        if type(self.clock) is SystemClock:  # the common case, without a datetime round trip
            return self.clock.now_us()
        return rows.to_us(rows.utc(self.clock.now()))

    def _now(self) -> tuple[_dt.datetime, int]:
        now_us = self._now_us()
        return rows.from_us(now_us), now_us

    # --- starting runs -----------------------------------------------------------------------

    def start(self, function_id: Any, data: Any = None, *, run_id: str | None = None) -> str:
        """Start a run of ``function_id`` with ``data``; a given ``run_id`` is idempotent."""
        self._check_open()
        function = self._function(function_id)
        payload = _json(data, "start data")
        if run_id is not None:
            check_run_id(run_id)
        now_us = self._now_us()
        with self.store.transaction() as conn:
            if run_id is not None:
                existing = conn.execute(
                    "SELECT function_id FROM runs WHERE id = ?", (run_id,)
                ).fetchone()
                if existing is not None:
                    if existing[0] != function.id:
                        raise ValueError(
                            f"run id {run_id!r} already belongs to a run of {existing[0]!r}, "
                            f"not {function.id!r}"
                        )
                    return run_id
            rid = run_id or new_id()
            self._create_run(conn, rid, function.id, _trigger(function.id, payload, now_us), now_us)
        self._kick()
        return rid

    def _create_run(
        self,
        conn: Any,
        run_id: str,
        function_id: str,
        trigger: str,
        now_us: int,
        parent: tuple[str, str, bool] | None = None,
    ) -> None:
        """Insert a pending run; ``trigger`` is its triggering event as stored (JSON)."""
        # The run's RunStarted event is written by the first drive, from this row: one row
        # per start keeps starting a run one small commit.
        parent_run, parent_step, notify = parent if parent else (None, None, False)
        conn.execute(
            "INSERT INTO runs (id, function_id, status, parent_run_id, parent_step_id, "
            "notify_parent, trigger, created_us, updated_us, ready, event_pos) "
            "VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, 0, "
            "(SELECT COALESCE(MAX(pos), 0) FROM events))",
            (run_id, function_id, parent_run, parent_step, int(notify), trigger, now_us, now_us),
        )
        # Not flagged ready: a pending run without a lease is found by discovery anyway.
        self._fresh.add(run_id)

    def emit(self, name: str, data: Any = None, *, idempotency_key: str | None = None) -> list[str]:
        """Emit an event: start the functions it triggers and satisfy matching waits."""
        self._check_open()
        check_event_name(name)
        payload = _json(data, f"data of event {name!r}")
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        now, _ = self._now()
        with self.store.transaction() as conn:
            started = self._emit_in(conn, name, payload, new_id(), idempotency_key, now)
        self._kick()
        return started

    def _emit_in(
        self,
        conn: Any,
        name: str,
        data: Any,
        event_id: str,
        idempotency_key: str | None,
        now: _dt.datetime,
    ) -> list[str]:
        if idempotency_key is not None:
            row = conn.execute(
                "SELECT started FROM events WHERE idempotency_key = ?", (idempotency_key,)
            ).fetchone()
            if row is not None:
                try:
                    return list(json.loads(row[0]))
                except (TypeError, ValueError) as exc:
                    raise StoreError(
                        f"event with idempotency key {idempotency_key!r}: its events row "
                        f"(started) cannot be decoded: {_problem(exc)}"
                    ) from None
        now_us = rows.to_us(now)
        cursor = conn.execute(
            "INSERT INTO events (id, name, data, ts_us, idempotency_key) VALUES (?, ?, ?, ?, ?)",
            (event_id, name, rows.dumps(data), now_us, idempotency_key),
        )
        pos = cursor.lastrowid
        event = Event(event_id, name, data, now)
        self._match_waits(conn, event, now_us)
        started = []
        trigger = None
        for function in self.functions.values():
            if function.triggered_by(name):
                trigger = trigger or rows.dumps(rows.event_body(event))
                run_id = new_id()
                self._create_run(conn, run_id, function.id, trigger, now_us)
                started.append(run_id)
        if started:  # the column's default says none
            conn.execute("UPDATE events SET started = ? WHERE pos = ?", (rows.dumps(started), pos))
        return started

    def _match_waits(self, conn: Any, event: Event, now_us: int) -> None:
        """Hand ``event`` to the first matching wait of each run waiting for it."""
        paths = conn.execute(
            "SELECT DISTINCT match_path FROM waits WHERE event_name = ?", (event.name,)
        ).fetchall()
        found: dict[str, tuple[int, str]] = {}
        for (path,) in paths:
            if path is None:
                hits = conn.execute(
                    "SELECT run_id, step_id, seq FROM waits "
                    "WHERE event_name = ? AND match_path IS NULL",
                    (event.name,),
                ).fetchall()
            else:
                value = lookup(event, path)
                if value is MISSING:
                    continue
                hits = conn.execute(
                    "SELECT run_id, step_id, seq FROM waits "
                    "WHERE event_name = ? AND match_path = ? AND match_key = ?",
                    (event.name, path, canonical(value)),
                ).fetchall()
            for run_id, step_id, seq in hits:
                if run_id not in found or seq < found[run_id][0]:
                    found[run_id] = (seq, step_id)
        body = rows.event_body(event)
        for run_id, (_, step_id) in found.items():
            self._consume(conn, run_id, step_id, event.id)
            conn.execute(
                "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (?, 'WaitMatched', ?, ?)",
                (run_id, now_us, rows.dumps({"id": step_id, "event": body})),
            )
            conn.execute("UPDATE runs SET ready = 1 WHERE id = ?", (run_id,))
            self._woken.add(run_id)

    def _consume(self, conn: Any, run_id: str, step_id: str, event_id: str) -> None:
        conn.execute("DELETE FROM waits WHERE run_id = ? AND step_id = ?", (run_id, step_id))
        conn.execute("DELETE FROM timers WHERE run_id = ? AND step_id = ?", (run_id, step_id))
        conn.execute("INSERT OR IGNORE INTO consumed VALUES (?, ?)", (run_id, event_id))

    # --- driving -----------------------------------------------------------------------------

    def _wake(self) -> None:
        """Make the thread in run_until_idle/serve look again."""
        self._results.put(None)

    def _kick(self) -> None:
        """Runs were just started or woken (``_fresh``, ``_woken``): while serving, a free pool
        thread drives them and runs a step it decides itself (one thread hop from here to a
        running step)."""
        if not (self._serving and not self._halting() and self._executor.submit_drive()):
            self._wake()  # not serving, or no pool thread free: the driving thread takes them

    def run_until_idle(self) -> None:
        """Do all work due now (steps, due timers, matched events); return when none is left."""
        self._check_open()
        self._dirty = True
        with self._driving():
            while True:
                # The lock is held per round only: a pool thread that finishes a step may
                # drive in between (see _on_outcome).
                with self._drive_lock:
                    self._raise_failure()
                    if self._tick():
                        continue
                    if not self._outstanding:
                        return
                    timeout = self._executor.expire() or 0.05
                self._wait_for_outcome(timeout)

    @contextlib.contextmanager
    def _driving(self) -> Iterator[None]:
        """Count a thread in run_until_idle/serve: pool threads drive only while one is."""
        with self._drive_lock:
            self._drivers += 1
        try:
            yield
        finally:
            with self._drive_lock:
                self._drivers -= 1

    def _wait_for_outcome(self, timeout: float) -> None:
        try:
            item = self._results.get(timeout=timeout)
        except queue.Empty:
            return
        if item is not None:
            with self._drive_lock:
                self._outcomes.append(item)

    def _on_outcome(self, outcome: Outcome | None) -> Job | None:
        """On a pool thread that ran a step (or was sent to drive, ``None``): commit the
        outcome now if no one else is driving, and return a next step for this thread to
        run (no hop to another thread)."""
        if self._halting() or not self._drive_lock.acquire(blocking=False):
            if outcome is not None:
                self._results.put(outcome)
            else:
                self._wake()  # the thread driving now takes the woken runs next round
            return None
        wake = True
        try:
            if not self._drivers or self._halting():  # nobody to report to: leave it queued
                if outcome is not None:
                    self._results.put(outcome)
                return None
            if outcome is not None:
                self._outcomes.append(outcome)
            timer_before = self._next_timer_us
            jobs = self._round_gc_paused() or []
            prefer = outcome.job.run_id if outcome is not None else ""
            kept = self._dispatch(jobs, prefer=prefer)
            # The thread in run_until_idle/serve sleeps on a timeout it computed before this
            # round: it must look again if the round left it new runs, an earlier timer or a
            # step deadline to watch, or if this thread goes back to waiting for jobs.
            wake = (
                kept is None
                or bool(self._woken or self._fresh or self._dirty)
                or self._next_timer_us < timer_before
                or any(job.timeout is not None for job in jobs)
            )
            return kept
        except BaseException as exc:  # handed to the thread that called run_until_idle/serve
            self._failure = exc
            return None
        finally:
            self._drive_lock.release()
            if wake:
                self._wake()

    def _halting(self) -> bool:
        """serve() was asked to stop: start no more steps."""
        return self._serving and self._stopping.is_set()

    def _raise_failure(self) -> None:
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def _drain(self) -> list[Outcome]:
        outcomes, self._outcomes = self._outcomes, []
        results = self._results
        while not results.empty():
            try:
                item = results.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                outcomes.append(item)
        self._outstanding -= len(outcomes)
        return outcomes

    def _tick(self, dispatch: bool = True) -> bool:
        """One round of work; True if anything happened. ``dispatch=False`` starts no step."""
        jobs = self._round_gc_paused()
        if jobs is None:
            return False
        if dispatch:
            self._dispatch(jobs)
        return True

    def _dispatch(self, jobs: list[Job], prefer: str | None = None) -> Job | None:
        """Start ``jobs``; with ``prefer``, keep one sync job (of the run ``prefer`` names
        if there is one) for the calling pool thread and return it. Once serve() is asked to
        stop, nothing starts: what was decided stays committed for whoever drives next."""
        if self._halting():
            return None
        self._outstanding += len(jobs)
        kept = None
        if prefer is not None and len(jobs) == 1:
            if not is_async(jobs[0].fn):
                kept = jobs[0]
        elif prefer is not None:
            sync = [job for job in jobs if not is_async(job.fn)]
            kept = next((job for job in sync if job.run_id == prefer), None)
            if kept is None and sync:
                kept = sync[0]
        for job in jobs:
            if job is kept:
                self._executor.track(job)  # its deadline is watched before the lock is let go
            else:
                self._executor.submit(job)
            if _FAULTS:
                crash_point("dispatch")  # some of the batch's steps started, not all
        return kept

    def _round_gc_paused(self) -> list[Job] | None:
        # A round decodes histories and builds interpreters that live on: the cyclic GC
        # would walk them again and again and free nothing. It catches up once afterwards.
        if not gc.isenabled():
            return self._round()
        gc.disable()
        try:
            return self._round()
        finally:
            gc.enable()

    def _round(self) -> list[Job] | None:
        """Fold outcomes, woken and due runs into one transaction; the jobs it decided to
        start, or None if there was nothing to do."""
        self._executor.expire()
        now, now_us = self._now()
        self._renew_leases(now_us)
        work: dict[str, list[Input]] = {}
        timers: dict[str, list[tuple[str, str, int]]] = {}
        for outcome in self._drain():
            job = outcome.job
            in_flight = self._in_flight.get(job.run_id)
            if in_flight is not None and in_flight.get(job.step_id) == job.attempt:
                del in_flight[job.step_id]
                if not in_flight and job.run_id not in self._live:
                    del self._in_flight[job.run_id]  # the last step of a run that ended
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
        if self._woken or self._fresh:  # one woken after this check kicks another round
            with self.store.lock:
                discovered = _take(self._woken, _TICK_RUNS)
                fresh = _take(self._fresh, _TICK_RUNS - len(discovered))
            for run_id in discovered:
                work.setdefault(run_id, [])
            for run_id in fresh:
                work.setdefault(run_id, [])
        if self.functions and len(work) < _TICK_RUNS and self._should_discover(now_us):
            discovered |= self._discover(now_us, work, timers)
        if not work:
            return None
        try:
            while True:
                try:
                    with self.store.transaction() as conn:
                        jobs = self._drive_all(conn, work, timers, discovered, now, now_us)
                    self._report_committed()
                    break
                except _Broken as broken:
                    # The whole batch was rolled back: interpreters that moved on in memory are
                    # dropped (rebuilt from the store on next use); the broken runs are parked,
                    # together, and the rest driven again (once, however many runs broke).
                    for run_id in work:
                        self._live.pop(run_id, None)
                    with self.store.transaction() as conn:
                        blocked = [
                            (run_id, error, self._block(conn, run_id, error, now_us))
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
                            _report_run(run_id, function_id, "blocked", error)
                    if not work:
                        return []
                except sqlite3.IntegrityError:
                    # Another worker took one of these runs (our lease ran out): let all go.
                    for run_id in work:
                        self._live.pop(run_id, None)
                        self._in_flight.pop(run_id, None)
                    return []
                except BaseException:
                    # Interpreters moved on in memory past what was committed: rebuild them. The
                    # runs taken for this round are found again by the next discovery.
                    for run_id in work:
                        self._live.pop(run_id, None)
                    self._dirty = True
                    raise
        finally:
            if self._unreported_events:  # after the transaction: no handler under its lock
                self._report_damaged_events()
        self.stats["commits"] += 1
        for job in jobs:
            self._in_flight.setdefault(job.run_id, {})[job.step_id] = job.attempt
        if _FAULTS:
            crash_point("commit")
        return jobs

    def _report_damaged_events(self) -> None:
        found, self._unreported_events = self._unreported_events, []
        for event_id, name, problem in found:
            _RUNS_LOG.warning(
                "event %s (%s): its events row (data) cannot be decoded: %s; waits for %r skip it",
                event_id,
                name,
                problem,
                name,
                extra={"event_id": event_id, "event_name": name},
            )

    def _should_discover(self, now_us: int) -> bool:
        """Look for new work in the database only when something may have changed."""
        return self._dirty or now_us >= self._next_timer_us or time.monotonic() >= self._next_poll

    def _discover(
        self,
        now_us: int,
        work: dict[str, list[Input]],
        timers: dict[str, list[tuple[str, str, int]]],
    ) -> set[str]:
        """Due timers and runs that need driving (new, woken, or orphaned by a dead worker)."""
        fids = tuple(self.functions)
        # CROSS JOIN keeps SQLite walking timers by due time; +function_id keeps it off the
        # function index (which would visit every run of the function, parked or ended).
        due = self.store.query(
            "SELECT t.run_id, t.step_id, t.kind, t.attempt FROM timers t "
            "CROSS JOIN runs r ON r.id = t.run_id WHERE t.due_us <= ? AND r.status != 'blocked' "
            f"AND +r.function_id IN ({_marks(fids)}) AND (r.lease_owner IS NULL "
            "OR r.lease_owner = ? OR r.lease_until_us < ?) "
            f"ORDER BY t.due_us LIMIT {_TICK_RUNS}",
            (now_us, *fids, self.worker_id, now_us),
        )
        for run_id, step_id, kind, attempt in due:
            timers.setdefault(run_id, []).append((step_id, kind, attempt))
            work.setdefault(run_id, [])
        lease = "(lease_owner IS NULL OR lease_owner = ? OR lease_until_us < ?)"
        ready = self.store.query(
            "SELECT id FROM runs WHERE ready = 1 "
            "AND status NOT IN ('blocked', 'completed', 'failed', 'cancelled') "
            f"AND +function_id IN ({_marks(fids)}) AND {lease} "
            "UNION SELECT id FROM runs WHERE status IN ('pending', 'running') "
            "AND (lease_owner IS NULL OR lease_until_us < ?) "
            f"AND +function_id IN ({_marks(fids)}) AND {lease} LIMIT {_TICK_RUNS}",
            (*fids, self.worker_id, now_us, now_us, *fids, self.worker_id, now_us),
        )
        for (run_id,) in ready:
            work.setdefault(run_id, [])
        found = {row[0] for row in ready}
        found.update(row[0] for row in due)
        nearest = self.store.query("SELECT MIN(due_us) FROM timers WHERE due_us > ?", (now_us,))
        self._next_timer_us = nearest[0][0] if nearest and nearest[0][0] is not None else _NEVER
        # A full page means there may be more: look again on the next tick.
        self._dirty = len(due) >= _TICK_RUNS or len(ready) >= _TICK_RUNS
        self._next_poll = time.monotonic() + self.poll
        return found

    def _renew_leases(self, now_us: int) -> None:
        if now_us < self._next_renewal_us or not self._live:
            return
        lease_us = int(self.lease.total_seconds() * 1_000_000)
        with self.store.transaction() as conn:
            # The runs held are the live ones (a parked or ended run lets its lease go).
            for chunk in _chunks(list(self._live)):
                conn.execute(
                    f"UPDATE runs SET lease_until_us = ? WHERE id IN ({_marks(chunk)}) "
                    "AND lease_owner = ?",
                    (now_us + lease_us, *chunk, self.worker_id),
                )
        self._next_renewal_us = now_us + lease_us // 3

    def _acquire_all(
        self,
        conn: Any,
        run_ids: list[str],
        now_us: int,
        mail: set[str],
        broken: dict[str, BaseException],
    ) -> int:
        """Take the leases of ``run_ids`` that are free and rebuild their interpreters; return
        how many of them start here (their ``RunStarted`` is written now).

        Runs in ``mail`` have their ``ready`` flag cleared in the same statement (their
        inbox is read next, in this transaction). Runs that cannot be rebuilt (a damaged
        row, a divergence) go to ``broken``, all of them, and get no interpreter."""
        new_runs = 0
        lease_us = int(self.lease.total_seconds() * 1_000_000)
        fids = tuple(self.functions)
        with_mail = [run_id for run_id in run_ids if run_id in mail]
        without = [run_id for run_id in run_ids if run_id not in mail]
        groups = [(chunk, ", ready = 0") for chunk in _chunks(with_mail)]
        groups += [(chunk, "") for chunk in _chunks(without)]
        for chunk, clear in groups:
            # A pending run is running from here (its first round starts its first steps, or
            # parks or ends it): marked so in the same statement, not with one more update.
            taken = conn.execute(
                f"UPDATE runs SET lease_owner = ?, lease_until_us = ?{clear}, "
                "status = CASE status WHEN 'pending' THEN 'running' ELSE status END "
                f"WHERE id IN ({_marks(chunk)}) "
                "AND status NOT IN ('completed', 'failed', 'cancelled', 'blocked') "
                f"AND function_id IN ({_marks(fids)}) "
                "AND (lease_owner IS NULL OR lease_owner = ? OR lease_until_us < ?) "
                "RETURNING id, function_id, event_pos, parent_run_id, parent_step_id, "
                "notify_parent, status, trigger",
                (self.worker_id, now_us + lease_us, *chunk, *fids, self.worker_id, now_us),
            ).fetchall()
            if not taken:
                continue
            ids = [row[0] for row in taken]
            corrupt: dict[str, StoreError] = {}  # runs with a damaged row: blocked, not driven
            stored = rows.read_histories(conn, f"run_id IN ({_marks(ids)})", ids, corrupt)
            histories = {run_id: stored.get(run_id, []) for run_id in ids}
            unwritten = []
            for row in taken:
                run_id, function_id, _, parent_run, _, _, _, trigger = row
                if not histories[run_id] and run_id not in corrupt:
                    try:
                        started = _run_started(run_id, function_id, trigger, parent_run)
                    except rows.CorruptRow as bad:  # a damaged trigger
                        corrupt[run_id] = bad.error
                        continue
                    histories[run_id].append(started)
                    unwritten.append((run_id, *rows.encode(started)))
            broken.update(corrupt)
            conn.executemany("INSERT INTO history VALUES (?, ?, ?, ?, ?)", unwritten)
            new_runs += len(unwritten)
            for row in taken:
                run_id, function_id, event_pos, parent_run, parent_step, notify, status, _ = row
                if run_id in corrupt:
                    continue
                history = histories[run_id]
                if history[-1].seq != len(history) - 1:
                    broken[run_id] = _gap(run_id, history)
                    continue
                self.stats["runs_taken"] += 1
                function = self.functions[function_id]
                interpreter = Interpreter(function)
                live = _Live(
                    run_id,
                    function,
                    interpreter,
                    event_pos,
                    parent_run,
                    parent_step,
                    bool(notify),
                    status,
                )
                # Resumed and not driven since: what the failure abandoned is indexed again.
                live.resumed = type(history[-1]) is RunResumed
                self._live[run_id] = live
                try:
                    live.decision = interpreter.feed(history)
                except Exception as exc:
                    broken[run_id] = exc
                    del self._live[run_id]
        return new_runs

    def _drive_all(
        self,
        conn: Any,
        work: dict[str, list[Input]],
        timers: dict[str, list[tuple[str, str, int]]],
        discovered: set[str],
        now: _dt.datetime,
        now_us: int,
    ) -> list[Job]:
        self._committing = None
        # Runs that cannot be driven: all are found in this one pass, then _round blocks them
        # together and drives the rest again (not once per broken run: that was quadratic).
        broken: dict[str, BaseException] = {}
        cold = [run_id for run_id in work if run_id not in self._live]
        started = self._acquire_all(conn, cold, now_us, discovered, broken) if cold else 0
        drivable = [run_id for run_id in work if run_id in self._live]
        cold_set = set(cold)
        inbox: dict[str, list[Input]] = {}
        # Only runs found by discovery can have mail: producers set ``ready`` with it.
        for chunk in _chunks(
            [run_id for run_id in drivable if run_id in discovered] if discovered else []
        ):
            # Cleared as the mail is taken (for cold runs, by _acquire_all): mail that
            # arrives later in this same transaction (another run publishes, a child ends)
            # sets it again and is read next round.
            warm = [run_id for run_id in chunk if run_id not in cold_set]
            if warm:
                conn.execute(f"UPDATE runs SET ready = 0 WHERE id IN ({_marks(warm)})", warm)
            found = conn.execute(
                f"DELETE FROM inbox WHERE run_id IN ({_marks(chunk)}) "
                "RETURNING pos, run_id, type, body",
                chunk,
            ).fetchall()
            mail = iter(sorted(found))
            while True:
                try:  # free unless raised
                    for item in mail:
                        _, run_id, kind, body = item
                        if _FAULTS and kind == "WaitMatched":
                            crash_point("event-deliver")
                        inbox.setdefault(run_id, []).append(_inbox_input(kind, json.loads(body)))
                    break
                except Exception as exc:  # damaged mail blocks the run it was sent to
                    pos, run_id, kind, _ = item
                    known = kind in _INBOX_TYPES
                    problem = _problem(exc) if known else f"unknown mail type {kind!r}"
                    row = f"inbox row pos {pos} ({kind})"
                    broken.setdefault(run_id, rows.corrupt_row(run_id, row, problem).error)
        if broken:
            drivable = [run_id for run_id in drivable if run_id not in broken]
        batch = _Batch()
        for run_id in drivable:
            live = self._live[run_id]
            inputs = list(work[run_id])  # a copy: a rolled-back batch is driven again
            for step_id, kind, _attempt in timers.get(run_id, ()):
                if _FAULTS:
                    crash_point("timer-fire")
                batch.timers_done.append((run_id, step_id))
                if kind == "sleep":
                    inputs.append((TimerFired, {"id": step_id}))
                elif kind == "wait":
                    batch.waits_done.append((run_id, step_id))
                    inputs.append((WaitTimedOut, {"id": step_id}))
                elif kind == "invoke":
                    inputs.append(
                        (
                            ChildFailed,
                            {
                                "id": step_id,
                                "child_run_id": f"{run_id}/{step_id}",
                                "error": live.interpreter.invoke_timeout(
                                    step_id, f"{run_id}/{step_id}"
                                ),
                            },
                        )
                    )
            inputs.extend(inbox.get(run_id, ()))
            try:
                self._drive_live(conn, live, inputs, now, now_us, batch)
            except Exception as exc:
                broken[run_id] = exc  # the others are driven on to find all broken ones
        if broken:
            raise _Broken(broken)
        batch.write(conn, self.worker_id, now_us)
        self._committing = (started, batch)
        self._woken.update(row[0] for row in batch.notify)  # parents told that a child ended
        for run_id in batch.parked:
            self._live.pop(run_id, None)
        for run_id in batch.finished:
            self._live.pop(run_id, None)
            # Steps the end abandoned may still be running: remembered until they report, so
            # that a resume in the meantime does not start them a second time.
            if not self._in_flight.get(run_id):
                self._in_flight.pop(run_id, None)
        if batch.finished:
            with self._done:
                self._done.notify_all()
        return batch.jobs

    def _report_committed(self) -> None:
        """Count what the transaction just committed started and ended; log runs that failed."""
        if self._committing is None:
            return
        started, batch = self._committing
        self._committing = None
        self.stats["runs_started"] += started
        self.stats["runs_ended"] += len(batch.finished)
        self.stats["runs_failed"] += len(batch.failed)
        for run_id, function_id, error in batch.failed:
            _report_run(run_id, function_id, "failed", error)

    def _block(
        self, conn: Any, run_id: str, exc: BaseException, now_us: int
    ) -> tuple[str, int] | None:
        """Set ``run_id`` blocked with ``exc``; its function id and whether its RunStarted was
        written now (1 or 0), or None if it is gone. The caller counts and logs once committed.
        """
        self._live.pop(run_id, None)
        self._in_flight.pop(run_id, None)
        # Blocked at its first drive, the run's RunStarted went with the rolled-back batch.
        unstarted = conn.execute(
            "SELECT function_id, trigger, parent_run_id FROM runs WHERE id = ?1 "
            "AND NOT EXISTS (SELECT 1 FROM history WHERE run_id = ?1)",
            (run_id,),
        ).fetchone()
        started = 0
        if unstarted is not None:
            with contextlib.suppress(rows.CorruptRow):  # a damaged trigger is why it blocks
                event = _run_started(run_id, *unstarted)
                conn.execute(
                    "INSERT INTO history VALUES (?, ?, ?, ?, ?)", (run_id, *rows.encode(event))
                )
                started = 1
        # A divergence or a damaged row says all there is; a bug needs its traceback.
        plain = isinstance(exc, NonDeterminismError | StoreError)
        info = encode_error(exc, with_traceback=not plain)
        blocked = conn.execute(
            "UPDATE runs SET status = 'blocked', error = ?, ready = 0, lease_owner = NULL, "
            "lease_until_us = NULL, updated_us = ? WHERE id = ? RETURNING function_id",
            (rows.dumps(rows.error_body(info)), now_us, run_id),
        ).fetchone()
        return None if blocked is None else (blocked[0], started)

    def _drive_live(
        self,
        conn: Any,
        live: _Live,
        inputs: list[Input],
        now: _dt.datetime,
        now_us: int,
        batch: _Batch,
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
            accepted = self._accepted(live, pending, inputs, now)
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
            inputs = self._apply(conn, live, decision, now, now_us, resumed)
            if not inputs:
                break
        if decision.done:
            self._finish(live, decision, now_us, batch)
            return
        live.pending = pending
        in_flight = self._in_flight.setdefault(run_id, {})
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
                # Marked in flight only once the batch commits (see _round): a batch rolled
                # back and driven again decides the same steps and must start them.
                if in_flight.get(work.id) != work.attempt:
                    batch.jobs.append(_job(run_id, work, self.step_mocks))
        else:
            batch.waiting.append((now_us, run_id))
            batch.parked.append(run_id)
            self._in_flight.pop(run_id, None)

    def _accepted(
        self, live: _Live, expected: tuple[Work, ...], inputs: list[Input], now: _dt.datetime
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

    def _apply(
        self,
        conn: Any,
        live: _Live,
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
                    self._timer(conn, run_id, work.id, "retry", due_us, work.attempt)
            elif kind in ("sleep", "sleep_until"):
                assert due_us is not None
                self._timer(conn, run_id, work.id, "sleep", due_us, 1)
            elif kind == "wait_event":
                found = self._register_wait(conn, live, work)
                if found is not None:
                    inputs.append((WaitMatched, {"id": work.id, "event": found}))
                else:
                    assert due_us is not None
                    self._timer(conn, run_id, work.id, "wait", due_us, 1)
            elif kind in ("invoke", "invoke_async"):
                inputs.append(self._start_child(conn, live, work, now, now_us))
                if kind == "invoke" and due_us is not None:
                    self._timer(conn, run_id, work.id, "invoke", due_us, 1)
            elif kind == "publish":
                detail = work.detail
                event_id = detail["event_id"]
                self._emit_in(conn, detail["event"], detail["data"], event_id, event_id, now)
                inputs.append((EventPublished, {"id": work.id, "event_id": event_id}))
        return inputs

    def _timer(
        self, conn: Any, run_id: str, step_id: str, kind: str, due_us: int, attempt: int
    ) -> None:
        self._next_timer_us = min(self._next_timer_us, due_us)
        conn.execute(
            "INSERT OR REPLACE INTO timers VALUES (?, ?, ?, ?, ?)",
            (run_id, step_id, kind, due_us, attempt),
        )

    def _register_wait(self, conn: Any, live: _Live, work: Work) -> Event | None:
        """Index a wait; if an event emitted since the run started matches, take it now."""
        detail = work.detail
        name, path = detail["event"], detail.get("match")
        key = None if path is None else canonical(detail.get("match_value"))
        for event_id, data, ts_us in conn.execute(
            "SELECT id, data, ts_us FROM events WHERE name = ? AND pos > ? AND id NOT IN "
            "(SELECT event_id FROM consumed WHERE run_id = ?) ORDER BY pos",
            (name, live.event_pos, live.run_id),
        ).fetchall():
            try:
                event = Event(event_id, name, json.loads(data), rows.from_us(ts_us))
            except (TypeError, ValueError) as exc:
                # Matches no wait: it may be another order's, and blocking every run waiting
                # for this name would stop the one whose own event is intact. Said once.
                if event_id not in self._damaged_events:
                    self._damaged_events.add(event_id)
                    self._unreported_events.append((event_id, name, _problem(exc)))
                continue
            if path is None or (
                (value := lookup(event, path)) is not MISSING and canonical(value) == key
            ):
                conn.execute(
                    "INSERT OR IGNORE INTO consumed VALUES (?, ?)", (live.run_id, event_id)
                )
                return event
        conn.execute(
            "INSERT OR REPLACE INTO waits VALUES (?, ?, ?, ?, ?, ?)",
            (live.run_id, work.id, name, path, key, live.next_seq),
        )
        return None

    def _start_child(
        self, conn: Any, live: _Live, work: Work, now: _dt.datetime, now_us: int
    ) -> Input:
        detail = work.detail
        child_id, function_id = detail["child_run_id"], detail["function"]
        if function_id not in self.functions:
            # Both kinds fail at the yield: a child nobody can run would stay pending forever.
            known = ", ".join(sorted(self.functions)) or "none"
            return _child_refused(
                work.id,
                child_id,
                f"unknown function {function_id!r}; registered functions: {known}",
            )
        found = conn.execute(
            "SELECT status, output, error, function_id, parent_run_id, parent_step_id "
            "FROM runs WHERE id = ?",
            (child_id,),
        ).fetchone()
        if found is not None and (found[3], found[4], found[5]) != (
            function_id,
            live.run_id,
            work.id,
        ):
            # Taken by a run that is not this child (a run id chosen with a '/' by a version
            # that allowed it): waiting for that run would wait for someone else's.
            return _child_refused(
                work.id,
                child_id,
                f"the child run id {child_id!r} is taken by another run (of {found[3]!r}); "
                f"run ids with '/' are reserved for child runs",
            )
        if found is None:
            trigger = _trigger(function_id, detail["data"], now_us)
            parent = (live.run_id, work.id, work.kind == "invoke")
            self._create_run(conn, child_id, function_id, trigger, now_us, parent)
        elif work.kind == "invoke" and found[0] in TERMINAL:
            # Waited for again after a resume: the child ended while this run was failed
            # (it was not told then), or the child's failure is what failed it.
            return _child_outcome(work.id, child_id, *found[:3])
        return (ChildStarted, {"id": work.id, "child_run_id": child_id})

    def _finish(self, live: _Live, decision: Decision, now_us: int, batch: _Batch) -> None:
        run_id = live.run_id
        error = None
        if decision.error is not None and decision.status != "completed":
            error = rows.dumps(rows.error_body(encode_error(decision.error, with_traceback=True)))
        output = rows.dumps(decision.output) if decision.status == "completed" else None
        batch.ended.append((decision.status, output, error, now_us, now_us, run_id))
        batch.finished.append(run_id)
        if decision.status == "failed":
            batch.failed.append((run_id, live.function.id, decision.error))
        if live.parent_run_id and live.notify_parent:
            if decision.status == "completed":
                kind, body = (
                    "ChildCompleted",
                    {"id": live.parent_step_id, "child_run_id": run_id, "output": decision.output},
                )
            else:
                failure = decision.error or CancelledError("child run was cancelled")
                kind, body = (
                    "ChildFailed",
                    {
                        "id": live.parent_step_id,
                        "child_run_id": run_id,
                        "error": rows.error_body(encode_error(failure)),
                    },
                )
            batch.notify.append((live.parent_run_id, kind, now_us, rows.dumps(body)))

    # --- long-running worker ------------------------------------------------------------------

    def serve(
        self, *, install_signals: bool = True, on_idle: Callable[[], None] | None = None
    ) -> None:
        """Work until ``stop()`` or SIGTERM/SIGINT: then finish what is held and return."""
        self._check_open()
        previous: dict[signal.Signals, Any] = {}
        if install_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, lambda *_: self.stop())
        self._serving = True
        self._stopping.clear()
        try:
            with self._driving():
                self._serve(on_idle)
        finally:
            self._serving = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _serve(self, on_idle: Callable[[], None] | None) -> None:
        while not self._stopping.is_set():
            with self._drive_lock:
                self._raise_failure()
                if self._tick():
                    continue
                timeout = self._idle_timeout()
            # Idle means no step running either: a long step is not a quiet worker.
            if on_idle is not None and not self._outstanding:
                on_idle()
                with self._drive_lock:
                    timeout = self._idle_timeout()
            self._wait_for_outcome(timeout)
        # Graceful stop: let running steps finish and commit them, then let go.
        while True:
            with self._drive_lock:
                self._raise_failure()
                if self._outstanding - len(self._outcomes) <= 0:
                    self._tick(dispatch=False)
                    self._release_all()
                    return
                timeout = self._executor.expire() or 0.05
            self._wait_for_outcome(timeout)

    def _release_all(self) -> None:
        with self.store.transaction() as conn:
            conn.execute(
                "UPDATE runs SET lease_owner = NULL, lease_until_us = NULL WHERE lease_owner = ?",
                (self.worker_id,),
            )
        self._live.clear()
        self._in_flight.clear()

    def _idle_timeout(self) -> float:
        timeout = max(0.0, self._next_poll - time.monotonic())
        nearest = self._executor.expire()
        if nearest is not None:
            timeout = min(timeout, nearest)
        if self._next_timer_us < _NEVER and not getattr(self.clock, "is_virtual", False):
            _, now_us = self._now()
            timeout = min(timeout, max(0.0, (self._next_timer_us - now_us) / 1e6))
        return timeout

    def stop(self) -> None:
        """Ask ``serve()`` to stop taking work and return once what it holds is committed."""
        self._stopping.set()
        self._wake()

    def close(self) -> None:
        """Stop the executor and close the database; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        self.store.close()

    # --- waiting for results ------------------------------------------------------------------

    def wait(self, run_id: str, timeout: float | None = None) -> Any:
        """The run's output once it ends, or raise its error; drives the engine if idle."""
        self._check_open()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run.status in TERMINAL or run.status == "blocked":
                return _outcome_of(run)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"run {run_id!r} is still {run.status} after {timeout}s")
            if self._serving:
                with self._done:
                    self._done.wait(min(remaining or 1.0, 1.0))
                continue
            self.run_until_idle()
            run = self.get_run(run_id)
            if run.status in TERMINAL or run.status == "blocked":
                continue
            row = self.store.query("SELECT MIN(due_us) FROM timers")
            next_due = row[0][0] if row else None
            if getattr(self.clock, "is_virtual", False) or next_due is None:
                raise TimeoutError(
                    f"run {run_id!r} is {run.status} and nothing is due: it waits for an event, "
                    f"a timer in the future or another worker (advance the clock, emit the "
                    f"event, or call serve())"
                )
            _, now_us = self._now()
            pause = max(0.0, (next_due - now_us) / 1e6)
            if remaining is not None:
                pause = min(pause, remaining)
            time.sleep(min(pause, self.poll))

    # --- inspection and control --------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The stored run ``run_id``; ``KeyError`` naming it if there is none."""
        self._check_open()
        found = self.store.query(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ?",
            (run_id,),
        )
        if not found:
            raise KeyError(f"no run with id {run_id!r}")
        return _run(found[0])

    def list_runs(
        self,
        status: str | None = None,
        function: str | Function | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally filtered by status and function id."""
        self._check_open()
        if status is not None and status not in STATUSES:
            raise ValueError(
                f"unknown run status {status!r}; a run is one of: {', '.join(STATUSES)}"
            )
        if isinstance(function, Function):
            function = function.id
        if function is not None and type(function) is not str:
            raise TypeError(
                f"function must be a function id or a declared function, got {function!r}"
            )
        if limit is not None and (type(limit) is not int or limit <= 0):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        where, params = [], []
        if status is not None:
            where.append("status = ?")
            params.append(status)
        if function is not None:
            where.append("function_id = ?")
            params.append(function)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_us DESC, id"
        if limit is not None:
            sql += f" LIMIT {limit}"
        return [_run(row) for row in self.store.query(sql, params)]

    def history(self, run_id: str) -> list[HistoryEvent]:
        """The run's history events, in order."""
        self._check_open()
        with self.store.lock:
            found = self.store.query(
                "SELECT function_id, trigger, parent_run_id FROM runs WHERE id = ?", (run_id,)
            )
            if not found:
                raise KeyError(f"no run with id {run_id!r}")
            try:
                events = rows.read_histories(self.store.conn, "run_id = ?", (run_id,))
                if not events:  # started, not driven yet: its first event is not written yet
                    return [_run_started(run_id, *found[0])]
            except rows.CorruptRow as bad:
                raise bad.error from None
            except sqlite3.Error as exc:
                store_error = unusable(self.store.path, exc)
                if store_error is None:
                    raise
                raise store_error from exc
        return events[run_id]

    def cancel(self, run_id: str, *, compensate: bool = False, reason: str = "") -> None:
        """Cancel a run and its child runs; ``compensate=True`` runs its undos first."""
        self._check_open()
        self.get_run(run_id)
        _, now_us = self._now()
        with self.store.transaction() as conn:
            self._cancel_in(conn, run_id, compensate, reason or "cancelled", now_us)
        self._kick()

    def _cancel_in(
        self, conn: Any, run_id: str, compensate: bool, reason: str, now_us: int
    ) -> None:
        status, next_seq = conn.execute(
            "SELECT status, (SELECT COUNT(*) FROM history WHERE run_id = ?1) FROM runs "
            "WHERE id = ?1",
            (run_id,),
        ).fetchone()
        if status in TERMINAL:
            return
        if status == "blocked":
            event = RunCancelled(next_seq, rows.from_us(now_us), reason, False)
            conn.execute(
                "INSERT INTO history VALUES (?, ?, ?, ?, ?)", (run_id, *rows.encode(event))
            )
            conn.execute(
                "UPDATE runs SET status = 'cancelled', ended_us = ?, updated_us = ? WHERE id = ?",
                (now_us, now_us, run_id),
            )
        else:
            conn.execute(
                "INSERT INTO inbox (run_id, type, ts_us, body) VALUES (?, 'RunCancelled', ?, ?)",
                (run_id, now_us, rows.dumps({"reason": reason, "compensate": compensate})),
            )
            conn.execute("UPDATE runs SET ready = 1 WHERE id = ?", (run_id,))
            self._woken.add(run_id)
        for (child,) in conn.execute(
            "SELECT id FROM runs WHERE parent_run_id = ? AND status NOT IN "
            "('completed', 'failed', 'cancelled')",
            (run_id,),
        ).fetchall():
            self._cancel_in(conn, child, compensate, f"parent run {run_id} was cancelled", now_us)

    def resume(self, run_id: str) -> None:
        """Resume a ``blocked`` run (after a code fix) or a ``failed`` one (failed step reruns)."""
        self._check_open()
        self.get_run(run_id)
        now, now_us = self._now()
        with self.store.transaction() as conn:
            status, seq = conn.execute(
                "SELECT status, (SELECT COUNT(*) FROM history WHERE run_id = ?1) FROM runs "
                "WHERE id = ?1",
                (run_id,),
            ).fetchone()
            if status == "blocked":
                conn.execute(
                    "UPDATE runs SET status = 'running', error = NULL, ready = 1, "
                    "lease_owner = NULL, updated_us = ? WHERE id = ?",
                    (now_us, run_id),
                )
            elif status == "failed":
                # Straight into the history: an ended run has no lease, so no worker appends
                # to it, and code fixed since the failure must see the resume in the same
                # fold as the failure it takes back.
                resumed = RunResumed(seq=seq, ts=now, reason="resumed")
                conn.execute(
                    "INSERT INTO history VALUES (?, ?, ?, ?, ?)", (run_id, *rows.encode(resumed))
                )
                conn.execute(
                    "UPDATE runs SET status = 'running', error = NULL, ended_us = NULL, "
                    "ready = 1, lease_owner = NULL, lease_until_us = NULL, updated_us = ? "
                    "WHERE id = ?",
                    (now_us, run_id),
                )
            else:
                raise ValueError(
                    f"run {run_id!r} is {status}; only failed or blocked runs can be resumed"
                )
        self._live.pop(run_id, None)
        with self.store.lock:
            self._woken.add(run_id)
        self._kick()


def check_run_id(run_id: Any) -> str:
    """Return ``run_id`` if a caller may choose it; ``ValueError`` naming it if not."""
    check_shown_name(run_id, "run id", RUN_IDS_SHOWN)
    if "/" in run_id:
        # Child runs are named "<parent run id>/<step id>": a chosen id with a '/' could take
        # a child's id before the child starts.
        raise ValueError(
            f"run id {run_id!r} contains '/', which is reserved for the ids of child runs "
            f"(<parent run id>/<step id>); choose an id without '/'"
        )
    return run_id


def _report_run(run_id: str, function_id: str, how: str, error: BaseException | None) -> None:
    """One WARNING on ``ironflow.runs``: the run, its function and the error's first line."""
    if error is None:
        detail = "no error recorded"
    else:
        info = encode_error(error)
        lines = info.message.strip().splitlines()
        detail = f"{info.type}: {lines[0]}" if lines else info.type
    _RUNS_LOG.warning(
        "run %s (%s) %s: %s",
        run_id,
        function_id,
        how,
        detail,
        extra={"run_id": run_id, "function_id": function_id, "run_status": how},
    )


def _json(value: Any, what: str) -> Any:
    try:
        return to_json_value(value, what)
    except NotJSONError as exc:
        raise public_error(exc) from None


def _run_started(
    run_id: str, function_id: str, trigger: str, parent_run_id: str | None
) -> RunStarted:
    """The first event of a run not driven yet, from its row; ``CorruptRow`` if damaged."""
    try:
        event = rows.event_from_body(json.loads(trigger))
        return RunStarted(0, event.ts, run_id, function_id, event, parent_run_id)
    except Exception as exc:
        raise rows.corrupt_row(run_id, "its runs row (trigger)", _problem(exc)) from None


def _gap(run_id: str, history: list[HistoryEvent]) -> StoreError:
    """The error of a history whose rows are not numbered 0, 1, 2, ... (rows went missing)."""
    at = next(i for i, event in enumerate(history) if event.seq != i)
    event = history[at]
    row = f"history row seq {event.seq} ({type(event).__name__})"
    return rows.corrupt_row(run_id, row, f"expected seq {at} there (a row is missing)").error


def _problem(exc: BaseException) -> str:
    """What is wrong with a stored value that did not decode, in a few words."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc})"
    if isinstance(exc, KeyError):
        return f"no {exc} field"
    return f"{type(exc).__name__}: {exc}"


def _column(run_id: str, column: str, text: Any) -> Any:
    """A JSON column of the runs row of ``run_id``; ``StoreError`` naming it if damaged."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise rows.corrupt_row(run_id, f"its runs row ({column})", _problem(exc)).error from None


def _trigger(name: str, data: Any, now_us: int) -> str:
    """The stored triggering event of a run started by ``start`` or ``invoke`` (JSON)."""
    return rows.dumps({"id": new_id(), "name": name, "data": data, "ts": now_us})


def _child_outcome(
    step_id: str, child_id: str, status: str, output: str | None, error: str | None
) -> Input:
    """What an ended child run reports to the run that invoked it."""
    if status == "completed":
        value = None if output is None else _column(child_id, "output", output)
        return (ChildCompleted, {"id": step_id, "child_run_id": child_id, "output": value})
    if error is not None:
        info = _run_error(child_id, error)
    else:
        info = encode_error(CancelledError("child run was cancelled"))
    return (ChildFailed, {"id": step_id, "child_run_id": child_id, "error": info})


def _child_refused(step_id: str, child_id: str, message: str) -> Input:
    """A child run that could not be started: the invoke fails at its yield."""
    return (
        ChildFailed,
        {"id": step_id, "child_run_id": child_id, "error": ErrorInfo("LookupError", message)},
    )


def _inbox_input(kind: str, body: dict[str, Any]) -> Input:
    cls = _INBOX_TYPES[kind]
    if cls is WaitMatched:
        return (cls, {"id": body["id"], "event": rows.event_from_body(body["event"])})
    if cls is ChildFailed:
        return (
            cls,
            {
                "id": body["id"],
                "child_run_id": body["child_run_id"],
                "error": rows.error_info(body["error"]),
            },
        )
    return (cls, body)


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


# A running run's row is not rewritten per step: its last history event says when it moved.
_RUN_COLUMNS = (
    "id, function_id, status, output, error, created_us, MAX(updated_us, COALESCE((SELECT "
    "ts_us FROM history WHERE run_id = runs.id ORDER BY seq DESC LIMIT 1), 0)), ended_us, "
    "parent_run_id"
)


def _run_error(run_id: str, text: Any) -> ErrorInfo:
    """The stored error of a run (its ``error`` column); ``StoreError`` naming it if damaged."""
    body = _column(run_id, "error", text)
    try:
        return ErrorInfo(str(body["type"]), str(body["message"]), body.get("traceback"))
    except Exception as exc:
        raise rows.corrupt_row(run_id, "its runs row (error)", _problem(exc)).error from None


def _run(row: tuple[Any, ...]) -> Run:
    run_id, function_id, status, output, error, created, updated, ended, parent = row
    run_error = value = None
    # A damaged column is reported as the run's error, not raised: one bad row must not
    # make a listing fail. ``wait`` raises it (see _outcome_of).
    try:
        if error is not None:
            info = _run_error(run_id, error)
            run_error = RunError(info.type, info.message, info.traceback)
        if output is not None:
            value = _column(run_id, "output", output)
    except StoreError as exc:
        run_error = RunError(type_name(StoreError), str(exc))
    return Run(
        id=run_id,
        function=function_id,
        status=status,
        output=value,
        error=run_error,
        created_at=None if created is None else rows.from_us(created),
        updated_at=None if updated is None else rows.from_us(updated),
        ended_at=None if ended is None else rows.from_us(ended),
        parent_run_id=parent,
    )


def _outcome_of(run: Run) -> Any:
    if run.status == "completed" and run.error is None:
        return run.output
    error = run.error or RunError(
        "ironflow.errors.CancelledError", f"run {run.id} was {run.status}"
    )
    if error.type == type_name(StoreError):  # a damaged row, not what the run did
        raise StoreError(error.message)
    if run.status == "cancelled":
        raise CancelledError(error.message)
    if run.status == "blocked":
        raise NonDeterminismError(error.message)
    raise decode_error(ErrorInfo(error.type, error.message))
