"""The embedded engine's public face: what it offers, each a few lines over the modules below.

A method checks its arguments (bad input is refused here, before anything is written) and
hands off: ``registry`` registers functions; ``starts`` starts runs and emits events;
``worker`` decides when rounds run and on which thread, ``driver`` runs one (the hot path);
``runs`` reads runs back; ``control`` cancels and resumes; ``lineage`` reruns and forks;
``store`` is the database behind a boundary of domain verbs. Every write to a run's history
happens under that run's lease, so one run has one writer.
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
    check_idempotency_key,
    check_shown_name,
)
from ironflow.history.events import HistoryEvent
from ironflow.runtime import control, lineage, registry, runs, starts, telemetry
from ironflow.runtime.clock import SystemClock
from ironflow.runtime.driver import Driver
from ironflow.runtime.flow_events import SkippedEvent, list_skipped
from ironflow.runtime.ids import new_id
from ironflow.runtime.live import Live
from ironflow.runtime.models import Run, RunPage
from ironflow.runtime.store import DURABILITY, Store, StoreError, open_store
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
        return registry.add(self._driver, fn)

    def check_function(self, function: Any) -> str:
        """The id of a function this engine has or the database registers; ``ValueError``
        naming the registered ones if neither does."""
        return registry.function_id(self._driver, function)

    def registered_functions(self) -> list[dict[str, Any]]:
        """The functions registered in the database (by any process), in id order: ``id``,
        ``triggers``, ``settings``, ``code_version`` and ``live`` (a live worker has it)."""
        self._check_open()
        with self.store.transaction() as tx:
            return registry.describe(self.store, tx, self._driver.now_us())

    # --- starting runs and emitting events ---------------------------------------------------

    def start(self, function_id: Any, data: Any = None, *, run_id: str | None = None) -> str:
        """Start a run of ``function_id`` with ``data``; a given ``run_id`` is idempotent."""
        self._check_open()
        fid = registry.function_id(self._driver, function_id)
        payload = _json(data, "start data")
        if run_id is not None:
            check_run_id(run_id)
        rid = starts.start(self._driver, fid, payload, run_id)
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
        found = starts.emit(self._driver, name, payload, idempotency_key)
        self._worker.kick()
        return found

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
        return runs.outcome(self._worker.wait(run_id, timeout, self.get_run))

    # --- inspection --------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The stored run ``run_id``; ``KeyError`` naming it if there is none."""
        self._check_open()
        return runs.get(self._driver, run_id)

    def list_runs(
        self,
        status: str | None = None,
        function: str | Function | None = None,
        limit: int | None = None,
    ) -> list[Run]:
        """Runs, newest first, optionally filtered by status and function id."""
        self._check_open()
        return runs.listing(self._driver, status, function, limit)

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
        return runs.page(
            self._driver, status, function, limit, cursor, created_after, created_before
        )

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
        return list_skipped(self.store, name, *runs.filters(function, limit))

    def history(self, run_id: str) -> list[HistoryEvent]:
        """The run's history events, in order."""
        self._check_open()
        return runs.history(self._driver, run_id)

    # --- control -----------------------------------------------------------------------------

    def cancel(self, run_id: str, *, compensate: bool = False, reason: str = "") -> None:
        """Cancel a run and its child runs; ``compensate=True`` runs its undos first."""
        self._check_open()
        self.get_run(run_id)
        control.cancel(self._driver, run_id, compensate, reason or "cancelled")
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
        new = lineage.rerun(self._driver, run_id)
        self._worker.kick()
        return new

    def fork(self, run_id: str, from_step: str) -> str:
        """Start a new run keeping ``run_id``'s steps recorded before step ``from_step`` was
        first scheduled (memoized: not run again), going on from there with the current code."""
        self._check_open()
        new = lineage.fork(self._driver, run_id, from_step)
        self._worker.kick()
        return new

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(
                f"the engine on {self.store.path} is closed; open a new Engine to use it again"
            )


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
