"""The embedded engine's public face: what it offers, each a few lines over the modules below.

``driver`` runs one round (the hot path); ``worker`` decides when rounds run and on which
thread; ``leases``, ``timers``, ``events``, ``children`` and ``control`` hold the rest of
the runtime's jobs; ``store`` is the database behind a boundary of domain verbs. Every write
to a run's history happens under that run's lease, so one run has one writer.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

from ironflow.commands.durations import parse_duration
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
from ironflow.history.errors import decode_error, type_name
from ironflow.history.events import ErrorInfo, HistoryEvent
from ironflow.runtime import control, events, flow, flow_plan, lineage, paging, registry, telemetry
from ironflow.runtime.clock import SystemClock
from ironflow.runtime.driver import Driver
from ironflow.runtime.flow_events import SkippedEvent, list_skipped
from ironflow.runtime.ids import new_id
from ironflow.runtime.live import Live, column, create_run, run_error, run_started, trigger
from ironflow.runtime.models import STATUSES, Run, RunError, RunPage
from ironflow.runtime.store import DURABILITY, Store, StoreError, open_store, rows
from ironflow.runtime.worker import Worker


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
        self.store: Store = (
            store if isinstance(store, Store) else open_store(store, durability=durability)
        )
        self.clock = clock if clock is not None else SystemClock()
        telemetry.watch_store(self.store)  # the ironflow_runs gauge counts its runs
        self._closed = False
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[-8:]}"
        self._driver = driver = Driver(
            self.store, self.clock, self.worker_id, self.lease, self.poll
        )
        self._worker = Worker(driver, max_workers)
        self.functions: dict[str, Function] = driver.functions
        self.stats: dict[str, int] = driver.stats
        # Test kit hook: step functions replaced by step name (see ironflow.testing.mock_steps).
        self.step_mocks: dict[str, Callable[..., Any]] = driver.step_mocks

    @property
    def _live(self) -> dict[str, Live]:
        """The runs this engine holds, by id (the benchmarks' cold load empties it)."""
        return self._driver.live

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
        if existing is not None:
            return fn  # the same function again changes nothing
        # Recorded in the database too: emits and starts from any process see it, and the
        # latest registration of an id sets its triggers and settings.
        version = registry.code_version(fn)
        registry.record(self.store, fn, version, self._driver.now_us())
        self.functions[fn.id] = fn
        if flow.gated(fn.flow):
            self._driver.gated[fn.id] = fn.flow  # type: ignore[assignment]
        timeouts = fn.flow.timeouts if fn.flow is not None else None
        if timeouts is not None and timeouts.finish is not None:
            self._driver.finishing[fn.id] = timeouts.finish
        self._driver.versions[fn.id] = version
        flow_plan.add_local(self._driver, fn)
        self._driver.next_heartbeat_us = 0  # a live worker says at once it has it now
        return fn

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(
                f"the engine on {self.store.path} is closed; open a new Engine to use it again"
            )

    def check_function(self, function: Any) -> str:
        """The id of a function this engine has or the database registers; ``ValueError``
        naming the registered ones if neither does."""
        return self._function_id(function)

    def registered_functions(self) -> list[dict[str, Any]]:
        """The functions registered in the database (by any process), in id order: ``id``,
        ``triggers``, ``settings``, ``code_version`` and ``live`` (a live worker has it)."""
        self._check_open()
        with self.store.transaction() as tx:
            return registry.describe(self.store, tx, self._driver.now_us())

    def _function_id(self, function: Any) -> str:
        fid = function.id if isinstance(function, Function) else function
        if type(fid) is not str or not fid.strip():
            raise ValueError(
                f"function must be a function id or a declared function, got {function!r}"
            )
        if fid not in self.functions:  # registered by another process, perhaps
            with self.store.transaction() as tx:
                why = registry.unknown(self._driver, tx, fid)
            if why is not None:
                raise ValueError(why)
        return fid

    # --- starting runs and emitting events ---------------------------------------------------

    def start(self, function_id: Any, data: Any = None, *, run_id: str | None = None) -> str:
        """Start a run of ``function_id`` with ``data``; a given ``run_id`` is idempotent."""
        self._check_open()
        fid = self._function_id(function_id)
        payload = _json(data, "start data")
        if run_id is not None:
            check_run_id(run_id)
        now_us = self._driver.now_us()
        attributes = {"ironflow.function_id": fid}
        with (
            telemetry.caller_span(f"start {fid}", attributes) as span,
            self.store.transaction() as tx,
        ):
            if run_id is not None:
                existing = tx.run_function(run_id)
                if existing is not None:
                    if existing != fid:
                        raise ValueError(
                            f"run id {run_id!r} already belongs to a run of {existing!r}, "
                            f"not {fid!r}"
                        )
                    return run_id
            rid = run_id or new_id()
            stored = trigger(fid, payload, now_us, telemetry.traceparent() if span else None)
            if not create_run(self._driver, tx, rid, fid, stored, now_us, emitted=False):
                # singleton "skip": the run of this key that has not ended stands for it
                rid = flow.singleton_holder(self._driver, tx, fid, stored) or rid
            if span is not None:
                span.set_attribute("ironflow.run_id", rid)
        self._worker.kick()
        return rid

    def emit(self, name: str, data: Any = None, *, idempotency_key: str | None = None) -> list[str]:
        """Emit an event: start the functions it triggers and satisfy matching waits."""
        return self.emit_event(name, data, idempotency_key=idempotency_key)[1]

    def emit_event(
        self, name: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> tuple[str, list[str]]:
        """As ``emit``; also the event's id (the first event's, for a repeated key)."""
        self._check_open()
        check_event_name(name)
        payload = _json(data, f"data of event {name!r}")
        if idempotency_key is not None:
            check_idempotency_key(idempotency_key)
        now, _ = self._driver.now()
        event_id = new_id()
        with (
            telemetry.caller_span(f"emit {name}", {"ironflow.event.name": name}) as span,
            self.store.transaction() as tx,
        ):
            if idempotency_key is not None:
                event_id = tx.event_id_of(idempotency_key) or event_id
            traceparent = telemetry.traceparent() if span else None
            started = events.emit_in(
                self._driver, tx, name, payload, event_id, idempotency_key, now, traceparent
            )
            if span is not None:
                span.set_attribute("ironflow.run_ids", started)
        self._worker.kick()
        return event_id, started

    # --- driving -----------------------------------------------------------------------------

    def run_until_idle(self) -> None:
        """Do all work due now (steps, due timers, matched events); return when none is left."""
        self._check_open()
        self._worker.run_until_idle()

    def serve(
        self, *, install_signals: bool = True, on_idle: Callable[[], None] | None = None
    ) -> None:
        """Work until ``stop()`` or SIGTERM/SIGINT: then finish what is held and return."""
        self._check_open()
        self._worker.serve(install_signals, on_idle, self.stop)

    def stop(self) -> None:
        """Ask ``serve()`` to stop taking work and return once what it holds is committed."""
        self._worker.stop()

    def close(self) -> None:
        """Stop the executor and close the database; closing again does nothing."""
        if self._closed:
            return
        self._closed = True
        self._worker.executor.shutdown(wait=True)
        registry.forget(self._driver)  # a clean stop: its functions are no longer live here
        self.store.close()

    def wait(self, run_id: str, timeout: float | None = None) -> Any:
        """The run's output once it ends, or raise its error; drives the engine if idle."""
        self._check_open()
        return _outcome_of(self._worker.wait(run_id, timeout, self.get_run))

    # --- inspection and control --------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The stored run ``run_id``; ``KeyError`` naming it if there is none."""
        self._check_open()
        found = self.store.get_run(run_id)
        if found is None:
            raise KeyError(f"no run with id {run_id!r}")
        return _run(found, self._live_functions([found]), flow.reasons(self.store, [found]))

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
        paging.check_function_filter(function)
        if limit is not None and (type(limit) is not int or limit <= 0):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        found = self.store.list_runs(status, function, limit)
        live = self._live_functions(found)
        held = flow.reasons(self.store, found)
        return [_run(row, live, held) for row in found]

    def list_events(
        self,
        name: str | None = None,
        *,
        function: str | Function | None = None,
        limit: int | None = None,
    ) -> list[SkippedEvent]:
        """Events that started no run of a function they trigger (rate-limited, an
        idempotent duplicate, singleton-skipped), newest first, each with the function and
        the reason; optionally only events named ``name`` or of ``function``."""
        self._check_open()
        if name is not None:
            check_event_name(name)
        if isinstance(function, Function):
            function = function.id
        paging.check_function_filter(function)
        if limit is not None and (type(limit) is not int or limit <= 0):
            raise ValueError(f"limit must be a positive int or None, got {limit!r}")
        return list_skipped(self.store, name, function, limit)

    def list_runs_page(
        self,
        status: str | None = None,
        function: str | Function | None = None,
        limit: int = 50,
        cursor: str | None = None,
        created_after: Any = None,
        created_before: Any = None,
    ) -> RunPage:
        """A page of runs, newest first, created in [``created_after``, ``created_before``)
        (aware datetimes or ISO 8601 text); pass ``next_cursor`` back for the next page."""
        self._check_open()
        if isinstance(function, Function):
            function = function.id
        found, next_cursor = paging.page(
            self.store, status, function, limit, cursor, created_after, created_before
        )
        live = self._live_functions(found)
        held = flow.reasons(self.store, found)
        return RunPage([_run(row, live, held) for row in found], next_cursor)

    def _live_functions(self, found: list[tuple[Any, ...]]) -> set[str] | None:
        """The functions live workers have, read only if a run of ``found`` is pending."""
        if not any(row[2] == "pending" for row in found):
            return None
        return registry.live_functions(self.store, self._driver.now_us())

    def history(self, run_id: str) -> list[HistoryEvent]:
        """The run's history events, in order."""
        self._check_open()
        try:
            found = self.store.history(run_id)
            if found is None:
                raise KeyError(f"no run with id {run_id!r}")
            row, events_ = found
            if not events_:  # started, not driven yet: its first event is not written yet
                return [run_started(run_id, *row)]
        except rows.CorruptRow as bad:
            raise bad.error from None
        return events_

    def cancel(self, run_id: str, *, compensate: bool = False, reason: str = "") -> None:
        """Cancel a run and its child runs; ``compensate=True`` runs its undos first."""
        self._check_open()
        self.get_run(run_id)
        _, now_us = self._driver.now()
        with self.store.transaction() as tx:
            control.cancel_in(self._driver, tx, run_id, compensate, reason or "cancelled", now_us)
        self._worker.kick()

    def resume(self, run_id: str) -> None:
        """Resume a ``blocked`` run (after a code fix) or a ``failed`` one (failed step reruns)."""
        self._check_open()
        self.get_run(run_id)
        control.resume(self._driver, run_id)
        self._worker.kick()

    def rerun(self, run_id: str) -> str:
        """Start a new run of ``run_id``'s function with its triggering event; its id."""
        self._check_open()
        function_id, trigger, _ = lineage.source_of(self._driver, run_id)
        self._function_id(function_id)
        new = lineage.rerun(self._driver, run_id, function_id, trigger)
        self._worker.kick()
        return new

    def fork(self, run_id: str, from_step: str) -> str:
        """Start a new run keeping ``run_id``'s steps recorded before step ``from_step`` was
        first scheduled (memoized: not run again), going on from there with the current code."""
        self._check_open()
        function_id, trigger, history = lineage.source_of(self._driver, run_id)
        self._function_id(function_id)
        new = lineage.fork(self._driver, run_id, function_id, trigger, history, from_step)
        self._worker.kick()
        return new


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
    return str(run_id)


def _json(value: Any, what: str) -> Any:
    try:
        return to_json_value(value, what)
    except NotJSONError as exc:
        raise public_error(exc) from None


def _run(row: tuple[Any, ...], live: set[str] | None, held: dict[str, str]) -> Run:
    run_id, function_id, status, output, error, created, updated, ended, parent, code, source = row
    waiting_for = registry.waiting_for(status, function_id, live)
    if status == flow.QUEUED:  # held back by a flow-control limit: pending, and why
        status = "pending"
        waiting_for = held.get(run_id, "held back by a flow-control limit")
    failure = value = None
    # A damaged column is reported as the run's error, not raised: one bad row must not
    # make a listing fail. ``wait`` raises it (see _outcome_of).
    try:
        if error is not None:
            info = run_error(run_id, error)
            failure = RunError(info.type, info.message, info.traceback)
        if output is not None:
            value = column(run_id, "output", output)
    except StoreError as exc:
        failure = RunError(type_name(StoreError), str(exc))
    return Run(
        id=run_id,
        function=function_id,
        status=status,
        output=value,
        error=failure,
        created_at=None if created is None else rows.from_us(created),
        updated_at=None if updated is None else rows.from_us(updated),
        ended_at=None if ended is None else rows.from_us(ended),
        parent_run_id=parent,
        code_version=code,
        waiting_for=waiting_for,
        source_run_id=source,
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
