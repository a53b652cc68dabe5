"""What a caller reads about runs: a stored run row made a public ``Run``, listings, pages,
a run's history, and the outcome ``Engine.wait`` hands back.

A pending run says why it is waiting (``Run.waiting_for``): the live workers' functions are
read only when a listing holds a pending run, and flow control's reasons only for queued
ones. A damaged column becomes the run's error instead of failing the listing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ironflow.commands.function import Function
from ironflow.errors import CancelledError, NonDeterminismError
from ironflow.history.errors import decode_error, type_name
from ironflow.history.events import ErrorInfo, HistoryEvent
from ironflow.runtime import flow, paging, registry
from ironflow.runtime.live import column, run_error, run_started
from ironflow.runtime.models import STATUSES, Run, RunError, RunPage
from ironflow.runtime.store import StoreError, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver


def get(driver: Driver, run_id: str) -> Run:
    """The stored run ``run_id``; ``KeyError`` naming it if there is none."""
    found = driver.store.get_run(run_id)
    if found is None:
        raise KeyError(f"no run with id {run_id!r}")
    return _public([found], driver)[0]


def listing(driver: Driver, status: str | None, function: Any, limit: int | None) -> list[Run]:
    """Runs, newest first, filtered; ``ValueError``/``TypeError`` naming a bad filter."""
    if status is not None and status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; a run is one of: {', '.join(STATUSES)}")
    function_id, limit = filters(function, limit)
    return _public(driver.store.list_runs(status, function_id, limit), driver)


def page(
    driver: Driver,
    status: str | None,
    function: Any,
    limit: int,
    cursor: str | None,
    created_after: Any,
    created_before: Any,
) -> RunPage:
    """One page of runs and the cursor of the next (see ``paging``)."""
    if isinstance(function, Function):
        function = function.id
    found, next_cursor = paging.page(
        driver.store, status, function, limit, cursor, created_after, created_before
    )
    return RunPage(_public(found, driver), next_cursor)


def filters(function: Any, limit: Any) -> tuple[str | None, int | None]:
    """``(function id, limit)`` of a listing's filters; ``TypeError``/``ValueError`` naming a
    bad one."""
    if isinstance(function, Function):
        function = function.id
    function = paging.check_function_filter(function)
    if limit is not None and (type(limit) is not int or limit <= 0):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    return function, limit


def history(driver: Driver, run_id: str) -> list[HistoryEvent]:
    """The run's history events, in order; ``KeyError`` naming it if there is no such run."""
    try:
        found = driver.store.history(run_id)
        if found is None:
            raise KeyError(f"no run with id {run_id!r}")
        row, events = found
        if not events:  # started, not driven yet: its first event is not written yet
            return [run_started(run_id, *row)]
    except rows.CorruptRow as bad:
        raise bad.error from None
    return events


def outcome(run: Run) -> Any:
    """The output of an ended run, or raise its error as the run raised it."""
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


def _public(found: list[tuple[Any, ...]], driver: Driver) -> list[Run]:
    store = driver.store
    live = None
    if any(row[2] == "pending" for row in found):  # only they ask which workers are live
        live = registry.live_functions(store, driver.now_us())
    held = flow.reasons(store, found)
    return [_run(row, live, held) for row in found]


def _run(row: tuple[Any, ...], live: set[str] | None, held: dict[str, str]) -> Run:
    run_id, function_id, status, output, error, created, updated, ended, parent, code, source = row
    waiting_for = registry.waiting_for(status, function_id, live)
    if status == flow.QUEUED:  # held back by a flow-control limit: pending, and why
        status = "pending"
        waiting_for = held.get(run_id, "held back by a flow-control limit")
    failure = value = None
    # A damaged column is reported as the run's error, not raised: one bad row must not
    # make a listing fail. ``wait`` raises it (see outcome).
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
