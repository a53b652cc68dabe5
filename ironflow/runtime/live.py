"""The live-run cache: the runs this engine holds the lease of, each with its interpreter.

A ``Live`` is made when a round takes a run's lease and rebuilds its interpreter from the
stored history (``leases.acquire_all``); it stays while the run keeps running here, so the
next round folds only the new events. A run that parks, ends or is lost leaves the cache and
is rebuilt from the store when it is taken again. Also here: the inputs a round feeds, and
what a run row's JSON columns hold.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

from ironflow.commands.function import Function
from ironflow.history.events import ErrorInfo, HistoryEvent, RunStarted
from ironflow.interpreter import Decision, Interpreter, Work
from ironflow.runtime import flow_plan
from ironflow.runtime.ids import new_id
from ironflow.runtime.store import StoreError, Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

# An event the round has for a run, not numbered yet: (event class, its fields but seq/ts).
Input = tuple[type, dict[str, Any]]


class Broken(Exception):
    """Runs that could not be driven (a damaged row, history and code diverge, a bug), each
    with its error: the batch is rolled back and they are blocked, all in one go."""

    def __init__(self, runs: dict[str, BaseException]) -> None:
        super().__init__(*runs)
        self.runs = runs


@attrs.define
class Live:
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
    trace: str | None = None  # the W3C traceparent stored with the run (see telemetry)

    @property
    def next_seq(self) -> int:
        return len(self.interpreter.events)


def trigger(name: str, data: Any, now_us: int, traceparent: str | None = None) -> str:
    """The stored triggering event of a run started by ``start`` or ``invoke`` (JSON), with
    the trace context of the span that started it, if any (not part of the history)."""
    body = {"id": new_id(), "name": name, "data": data, "ts": now_us}
    if traceparent is not None:
        body["traceparent"] = traceparent
    return rows.dumps(body)


def run_started(
    run_id: str, function_id: str, trigger: str, parent_run_id: str | None
) -> RunStarted:
    """The first event of a run not driven yet, from its row; ``CorruptRow`` if damaged."""
    try:
        body = json.loads(trigger)
        event = rows.event_from_body(body)
        # A batched run (batch_events) keeps its whole batch beside its first event.
        batch = tuple(map(rows.event_from_body, body["batch"])) if "batch" in body else None
        return RunStarted(0, event.ts, run_id, function_id, event, parent_run_id, batch)
    except Exception as exc:
        raise rows.corrupt_row(run_id, "its runs row (trigger)", problem(exc)) from None


def gap(run_id: str, history: list[HistoryEvent]) -> StoreError:
    """The error of a history whose rows are not numbered 0, 1, 2, ... (rows went missing)."""
    at = next(i for i, event in enumerate(history) if event.seq != i)
    event = history[at]
    row = f"history row seq {event.seq} ({type(event).__name__})"
    return rows.corrupt_row(run_id, row, f"expected seq {at} there (a row is missing)").error


def problem(exc: BaseException) -> str:
    """What is wrong with a stored value that did not decode, in a few words."""
    if isinstance(exc, json.JSONDecodeError):
        return f"not JSON ({exc})"
    if isinstance(exc, KeyError):
        return f"no {exc} field"
    return f"{type(exc).__name__}: {exc}"


def column(run_id: str, name: str, text: Any) -> Any:
    """A JSON column of the runs row of ``run_id``; ``StoreError`` naming it if damaged."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as exc:
        raise rows.corrupt_row(run_id, f"its runs row ({name})", problem(exc)).error from None


def run_error(run_id: str, text: Any) -> ErrorInfo:
    """The stored error of a run (its ``error`` column); ``StoreError`` naming it if damaged."""
    body = column(run_id, "error", text)
    try:
        return ErrorInfo(str(body["type"]), str(body["message"]), body.get("traceback"))
    except Exception as exc:
        raise rows.corrupt_row(run_id, "its runs row (error)", problem(exc)).error from None


def create_run(
    driver: Driver,
    tx: Transaction,
    run_id: str,
    function_id: str,
    trigger: str,
    now_us: int,
    parent: tuple[str, str, bool] | None = None,
    emitted: bool = True,
) -> bool:
    """Insert a pending run; ``trigger`` is its triggering event as stored (JSON). False if
    none was made (its function's ``singleton`` skips it: listed as a skipped event unless
    not ``emitted``, a direct start)."""
    gated = driver.gated and function_id in driver.gated
    cancels = driver.plans.cancels
    if gated:
        from ironflow.runtime import flow  # imports this module

        if not flow.singleton(driver, tx, run_id, function_id, trigger, now_us, emitted):
            return False
    elif function_id not in driver.functions:  # options from the registry (see flow_plan)
        cache = flow_plan.refresh(driver, tx)
        cancels = cache.cancels
        solo = cache.singletons.get(function_id)
        if solo is not None:
            from ironflow.runtime import flow  # imports this module

            option = solo.flow.singleton
            if not flow.singleton(
                driver, tx, run_id, function_id, trigger, now_us, emitted, option
            ):
                return False
    # The run's RunStarted event is written by the first drive, from this row: one row
    # per start keeps starting a run one small commit.
    parent_run, parent_step, notify = parent if parent else (None, None, False)
    tx.create_run(run_id, function_id, trigger, now_us, parent_run, parent_step, notify)
    if cancels:
        plan = cancels.get(function_id)
        if plan is not None:
            from ironflow.runtime import flow_cancel  # it needs control, which needs this

            flow_cancel.watch(tx, run_id, plan, trigger)
    # Not flagged ready: a pending run without a lease is found by discovery anyway. Only
    # this engine's functions are driven here (an emit may start others, for their workers).
    if function_id in driver.functions:
        if gated and not flow.arrive(driver, tx, run_id, function_id, trigger, now_us, "pending"):
            return True  # queued: a slot freeing or a window opening admits it
        driver.fresh.add(run_id)
    return True
