"""Events, waits and mail: emitting, matching waits, and the mail a round takes.

An emitted event is recorded (its position is commit order), starts the registered
functions it triggers (the registry in the database, see ``registry``: whichever process
registered them), and is handed to the first matching wait of each run waiting for it, as
mail (``WaitMatched``) that the run's next round takes. A wait reached later looks among the
events recorded after its run started and not consumed by it (``register_wait``). A
publish is an emit inside the publishing run's round, keyed by its event id so that it
happens once.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.commands.event import MISSING, Event, lookup
from ironflow.history.events import (
    ChildCompleted,
    ChildFailed,
    RunCancelled,
    RunResumed,
    RunTimedOut,
    WaitMatched,
)
from ironflow.interpreter import Work
from ironflow.runtime import flow_arrival, flow_cancel, flow_plan, registry, timers
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.ids import new_id
from ironflow.runtime.live import Input, Live, create_run, problem
from ironflow.runtime.store import StoreError, Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

_RUNS_LOG = logging.getLogger("ironflow.runs")

INBOX_TYPES: dict[str, type] = {
    kinds.MAIL_WAIT_MATCHED: WaitMatched,
    kinds.MAIL_CHILD_COMPLETED: ChildCompleted,
    kinds.MAIL_CHILD_FAILED: ChildFailed,
    kinds.MAIL_RUN_CANCELLED: RunCancelled,
    kinds.MAIL_RUN_TIMED_OUT: RunTimedOut,
    # resume() now writes RunResumed into the history itself; a database written by an
    # earlier version may still hold one as mail.
    kinds.MAIL_RUN_RESUMED: RunResumed,
}


def canonical(value: Any) -> str:
    """The JSON text two equal match values share (key order does not matter)."""
    return rows.dumps_sorted(value)


def emit_in(
    driver: Driver,
    tx: Transaction,
    name: str,
    data: Any,
    event_id: str,
    idempotency_key: str | None,
    now: _dt.datetime,
    traceparent: str | None = None,
) -> list[str]:
    """Record an event, match waits, start the functions it triggers; the runs started.

    ``traceparent``: the W3C trace context of the emitter (its ``emit`` span, or the
    publishing run's stored context), stored with the event; every run the event starts,
    now or later through flow control, joins that trace."""
    if idempotency_key is not None:
        known = tx.event_started(idempotency_key)
        if known is not None:
            try:
                return list(json.loads(known))
            except (TypeError, ValueError) as exc:
                raise StoreError(
                    f"event with idempotency key {idempotency_key!r}: its events row "
                    f"(started) cannot be decoded: {problem(exc)}"
                ) from None
    now_us = rows.to_us(now)
    pos = tx.record_event(event_id, name, rows.dumps(data), now_us, idempotency_key, traceparent)
    event = Event(event_id, name, data, now)
    match_waits(driver, tx, event, now_us)
    started = []
    trigger = None
    # Every registered function (from the database, whichever process registered it).
    triggered = registry.triggered(driver, tx, name)
    arrivals = flow_plan.refresh(driver, tx).arrivals if triggered else None
    for function_id in triggered:
        if arrivals and function_id in arrivals:  # idempotency, rate limit, batch, debounce
            plan = arrivals[function_id]
            started += flow_arrival.arrive(driver, tx, plan, event, pos, now_us, traceparent)
            continue
        trigger = trigger or rows.dumps(flow_arrival.traced_body(event, traceparent))
        run_id = new_id()
        if create_run(driver, tx, run_id, function_id, trigger, now_us):
            started.append(run_id)
    if started:  # the column's default says none
        tx.set_event_started(pos, rows.dumps(started))
    return started


def match_waits(driver: Driver, tx: Transaction, event: Event, now_us: int) -> None:
    """Hand ``event`` to the first matching wait of each run waiting for it."""
    found: dict[str, tuple[int, str]] = {}
    for path in tx.wait_paths(event.name):
        if path is None:
            hits = tx.waits_for(event.name, None, None)
        else:
            value = lookup(event, path)
            if value is MISSING:
                continue
            hits = tx.waits_for(event.name, path, canonical(value))
        for run_id, step_id, seq in hits:
            if run_id not in found or seq < found[run_id][0]:
                found[run_id] = (seq, step_id)
    body = rows.event_body(event)
    for run_id, (_, step_id) in found.items():
        if step_id[0] == "/":  # a cancel_on watch (no step id starts with '/')
            flow_cancel.fire(driver, tx, run_id, step_id, event, now_us)
            continue
        tx.deliver(run_id, step_id, event.id, now_us, rows.dumps({"id": step_id, "event": body}))
        driver.woken.add(run_id)


def register_wait(
    driver: Driver, live: Live, work: Work, now_us: int, consumed: set[tuple[str, str]]
) -> Event | None:
    """While folding (no transaction open): if an event emitted since the run started
    matches the wait, take it (consumed when the round commits); else index the wait when
    the round commits (``index_wait``, which looks again under the write lock)."""
    detail = work.detail
    name, path = detail["event"], detail.get("match")
    key = None if path is None else canonical(detail.get("match_value"))
    run_id = live.run_id
    found = driver.store.unconsumed_events(name, live.event_pos, run_id)
    event = _first_match(driver, found, name, path, key, run_id, consumed)
    if event is not None:
        consumed.add((run_id, event.id))
        driver.later.append((_consume, (run_id, event.id)))
        return event
    due_us = None if work.due is None else rows.to_us(rows.as_datetime(work.due))
    args = (run_id, work.id, name, path, key, live.event_pos, live.next_seq, due_us, now_us)
    driver.later.append((index_wait, args))
    return None


def reserve(tx: Transaction, later: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> None:
    """Before a round's writes (``later``): tell the store every event name they will record
    and wait for, and whether they create runs, so that it takes its locks at once
    (``Transaction.reserve``: on PostgreSQL, taking them one by one could deadlock)."""
    emits: set[str] = set()
    waits: set[str] = set()
    creates = False
    for action, args in later:
        if action is index_wait:
            waits.add(args[2])
        elif action is emit_in:
            emits.add(args[0])
        elif action is create_run:
            creates = True
    if emits or waits or creates:
        tx.reserve(emits, waits, creates)


def _consume(driver: Driver, tx: Transaction, run_id: str, event_id: str) -> None:
    tx.consume(run_id, event_id)


def index_wait(
    driver: Driver,
    tx: Transaction,
    run_id: str,
    step_id: str,
    name: str,
    path: str | None,
    key: str | None,
    event_pos: int,
    seq: int,
    due_us: int | None,
    now_us: int,
) -> None:
    """In the round's commit: index a wait the fold found no event for. An event that
    matches and was emitted since the fold looked (it could not see this wait) is handed
    to the wait now, as mail, as its emit would have done had the wait been indexed."""
    found = tx.unconsumed_events(name, event_pos, run_id)
    event = _first_match(driver, found, name, path, key, run_id, None)
    if event is None:
        tx.add_wait(run_id, step_id, name, path, key, seq)
        if due_us is not None:
            timers.set_timer(driver, tx, run_id, step_id, kinds.TIMER_WAIT, due_us, 1)
        return
    tx.consume(run_id, event.id)
    body = rows.dumps({"id": step_id, "event": rows.event_body(event)})
    tx.send_mail(run_id, kinds.MAIL_WAIT_MATCHED, now_us, body)
    driver.woken.add(run_id)


def _first_match(
    driver: Driver,
    found: list[tuple[Any, ...]],
    name: str,
    path: str | None,
    key: str | None,
    run_id: str,
    consumed: set[tuple[str, str]] | None,
) -> Event | None:
    """The first of ``found`` (unconsumed events, in commit order) a wait matches."""
    for event_id, data, ts_us in found:
        if consumed and (run_id, event_id) in consumed:  # taken earlier in this fold
            continue
        try:
            event = Event(event_id, name, json.loads(data), rows.from_us(ts_us))
        except (TypeError, ValueError) as exc:
            # Matches no wait: it may be another order's, and blocking every run waiting
            # for this name would stop the one whose own event is intact. Said once.
            if event_id not in driver.damaged_events:
                driver.damaged_events.add(event_id)
                driver.unreported_events.append((event_id, name, problem(exc)))
            continue
        if path is None or (
            (value := lookup(event, path)) is not MISSING and canonical(value) == key
        ):
            return event
    return None


def decode_mail(
    mail: list[tuple[Any, ...]], broken: dict[str, BaseException]
) -> tuple[dict[str, list[Input]], list[int]]:
    """The mail a round read (``Transaction.mail_of``) as inputs by run, and the positions
    to drop when the round commits; a run sent damaged mail goes to ``broken``."""
    inbox: dict[str, list[Input]] = {}
    positions = [item[0] for item in mail]
    items = iter(mail)
    while True:
        try:  # free unless raised
            for item in items:
                _, run_id, kind, body = item
                if _FAULTS and kind == kinds.MAIL_WAIT_MATCHED:
                    crash_point("event-deliver")
                inbox.setdefault(run_id, []).append(inbox_input(kind, json.loads(body)))
            break
        except Exception as exc:  # damaged mail blocks the run it was sent to
            pos, run_id, kind, _ = item
            known = kind in INBOX_TYPES
            why = problem(exc) if known else f"unknown mail type {kind!r}"
            row = f"inbox row pos {pos} ({kind})"
            broken.setdefault(run_id, rows.corrupt_row(run_id, row, why).error)
    return inbox, positions


def report_damaged(driver: Driver) -> None:
    """Log the damaged events rows waits skipped, once each (after the transaction: no
    logging handler runs under the write lock)."""
    found, driver.unreported_events = driver.unreported_events, []
    for event_id, name, why in found:
        _RUNS_LOG.warning(
            "event %s (%s): its events row (data) cannot be decoded: %s; waits for %r skip it",
            event_id,
            name,
            why,
            name,
            extra={"event_id": event_id, "event_name": name},
        )


def inbox_input(kind: str, body: dict[str, Any]) -> Input:
    cls = INBOX_TYPES[kind]
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
