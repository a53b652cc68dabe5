"""Start gates: concurrency, throttle, priority and start timeouts, applied when a run would
start, durable in the store (``store/flow_sql.py``) and exact across workers.

A run of a function with start gates (``gated``) goes through ``arrive`` once: where it is
created, when that process has the function's code, else when a worker first takes it. If
nothing is queued ahead of it and every limit has room, it is admitted at once (a slot, a
start recorded): it stays ``pending`` for a worker to take, or goes on running if taken.
Otherwise it is queued (stored ``queued``, shown ``pending`` with the reason as
``Run.waiting_for``) in order of priority, then arrival.

A queue moves (``pump``) when a slot frees (a run of the function ends: ``released``, in the
transaction that ends it) and when a throttle window opens (a ``flow`` timer on the head of
the queue, fired by ``fire`` from discovery). Each admission reads the head through an index
and counts the key's slots: starting N queued runs costs O(N), never O(N²).

A slot is held from admission until the run ends (``blocked`` keeps it); the count joins the
runs table, so the slot of a run whose worker died is held until the run is taken over and
ends, and never leaks. A function without start gates never reaches this module: its cost is
one dict test per run created (``live.create_run``) and per take of new runs.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ironflow.commands.event import Event
from ironflow.commands.flow import Flow
from ironflow.errors import CancelledError
from ironflow.history.errors import type_name
from ironflow.history.events import ErrorInfo, RunCancelled
from ironflow.runtime import flow_finish
from ironflow.runtime.flow_singleton import NULL_KEY, at_take, for_key, key_text
from ironflow.runtime.flow_singleton import singleton as singleton  # live, engine use it here
from ironflow.runtime.flow_singleton import singleton_holder as singleton_holder
from ironflow.runtime.live import run_started
from ironflow.runtime.store import Transaction, rows
from ironflow.runtime.store.base import TakenRow

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

# Timers on a queue's head (no step id starts with '/': these never collide): move the queue
# (a throttle window opens, or a process without the code changed it), cancel a late start.
PUMP_TIMER = "/flow/pump"
START_TIMER = "/flow/start"
FINISH_TIMER = "/flow/finish"
TIMER_KIND = "flow"
QUEUED = "queued"  # the stored status of a held-back run; shown as "pending"


def gated(flow: Flow | None) -> bool:
    """Whether ``flow`` has a gate applied when a run would start."""
    return flow is not None and (
        flow.concurrency is not None
        or flow.singleton is not None
        or flow.throttle is not None
        or flow.priority is not None
        or (flow.timeouts is not None and flow.timeouts.start is not None)
    )


def _us(duration: Any) -> int:
    return int(duration.total_seconds() * 1_000_000)


def _keys(flow: Flow, event: Event) -> tuple[str, str | None, str | None, int]:
    """``(qkey, ckey, tkey, priority)``: the queue's key (the concurrency key, else the
    throttle key), the concurrency and throttle keys as JSON text, and the priority."""
    ckey = None if flow.concurrency is None else key_text(flow.concurrency.key, event)
    tkey = None if flow.throttle is None else key_text(flow.throttle.key, event)
    priority = 0
    if flow.priority is not None:
        try:
            found = flow.priority.run(event)
            priority = found if type(found) is int else int(found)
        except Exception:  # a priority function that fails leaves the run in arrival order
            priority = 0
    return (
        (ckey if ckey is not None else tkey if tkey is not None else NULL_KEY),
        ckey,
        tkey,
        priority,
    )


def _blocked(
    tx: Transaction,
    fid: str,
    flow: Flow,
    ckey: str | None,
    tkey: str | None,
    timer_run: str | None,
    now_us: int,
) -> str | None:
    """Why a run of these keys cannot start now, or ``None`` if it can."""
    if flow.concurrency is not None and ckey is not None:
        held = tx.flow_slots_held(fid, ckey)  # type: ignore[attr-defined]
        if held >= flow.concurrency.limit:
            return f"concurrency: {held} of {flow.concurrency.limit}{for_key(ckey)}"
    if flow.throttle is not None and tkey is not None:
        period = _us(flow.throttle.period)
        starts = tx.flow_starts(fid, tkey, now_us - period)  # type: ignore[attr-defined]
        limit = flow.throttle.limit
        if len(starts) >= limit:
            next_us = starts[len(starts) - limit] + period
            if timer_run is not None:
                tx.set_timer(timer_run, PUMP_TIMER, TIMER_KIND, next_us, 0)
            return f"throttle: next start at {rows.from_us(next_us).isoformat()}"
    return None


def _admit(
    tx: Transaction,
    fid: str,
    flow: Flow,
    run_id: str,
    qkey: str,
    tkey: str | None,
    now_us: int,
) -> None:
    tx.flow_add_slot(fid, qkey, run_id)  # type: ignore[attr-defined]
    if flow.throttle is not None and tkey is not None:
        tx.flow_add_start(fid, tkey, now_us, run_id)  # type: ignore[attr-defined]


def _lock(tx: Transaction, fid: str, qkey: str, tkey: str | None) -> None:
    tx.flow_lock(fid, qkey)  # type: ignore[attr-defined]
    if tkey is not None and tkey != qkey:
        tx.flow_lock(fid, "throttle:" + tkey)  # type: ignore[attr-defined]


def arrive(
    driver: Driver,
    tx: Transaction,
    run_id: str,
    fid: str,
    trigger: str,
    now_us: int,
    status: str,
) -> bool:
    """Gate a run of ``fid`` arriving (``status``: ``pending`` just created, or ``running``
    just taken); whether it was admitted at once (else it is queued)."""
    flow: Flow = driver.gated[fid]
    event = rows.event_from_body(json.loads(trigger))
    qkey, ckey, tkey, priority = _keys(flow, event)
    timeouts = flow.timeouts
    if timeouts is not None and timeouts.start is not None:
        # Measured from the run's creation: its triggering event's time (a start's too).
        due_us = rows.to_us(event.ts) + _us(timeouts.start)
        tx.set_timer(run_id, START_TIMER, TIMER_KIND, due_us, 0)
    _lock(tx, fid, qkey, tkey)
    if not tx.flow_queued(fid, qkey):  # type: ignore[attr-defined]
        reason = _blocked(tx, fid, flow, ckey, tkey, run_id, now_us)
        if reason is None:
            _admit(tx, fid, flow, run_id, qkey, tkey, now_us)
            return True
    else:  # in line behind others: the limit that holds them says why
        reason = _blocked(tx, fid, flow, ckey, tkey, None, now_us)
    tx.flow_enqueue(  # type: ignore[attr-defined]
        run_id,
        fid,
        qkey,
        ckey,
        tkey,
        priority,
        reason or "queued behind earlier runs",
        now_us,
        status,
    )
    if reason is None:  # room, yet others were in line: move the line (this run may go too)
        pump(driver, tx, fid, qkey, now_us)
    return False


def pump(driver: Driver, tx: Transaction, fid: str, qkey: str, now_us: int) -> list[str]:
    """Admit the runs first in line of queue ``qkey`` while the limits have room; the head
    left waiting gets its reason (and, if throttled, a timer for when the window opens)."""
    flow = driver.gated.get(fid)
    if flow is None:  # not this process's function: a worker that has it moves the queue
        head = tx.flow_queue_head(fid, qkey)  # type: ignore[attr-defined]
        if head is not None:
            tx.set_timer(head[0], PUMP_TIMER, TIMER_KIND, now_us, 0)
        return []
    tx.flow_lock(fid, qkey)  # type: ignore[attr-defined]
    admitted = []
    while True:
        head = tx.flow_queue_head(fid, qkey)  # type: ignore[attr-defined]
        if head is None:
            break
        run_id, ckey, tkey = head
        if tkey is not None and tkey != qkey:
            tx.flow_lock(fid, "throttle:" + tkey)  # type: ignore[attr-defined]
        reason = _blocked(tx, fid, flow, ckey, tkey, run_id, now_us)
        if reason is not None:
            tx.flow_set_reason(run_id, reason)  # type: ignore[attr-defined]
            break
        tx.flow_dequeue(run_id, now_us)  # type: ignore[attr-defined]
        _admit(tx, fid, flow, run_id, qkey, tkey, now_us)
        admitted.append(run_id)
    driver.fresh.update(admitted)  # pending again: taken by the next round
    return admitted


def admit_taken(
    driver: Driver,
    tx: Transaction,
    taken: list[TakenRow],
    unwritten: list[tuple[Any, ...]],
    now_us: int,
) -> set[str]:
    """Gate the runs just taken that start now (no history) and were not admitted where they
    were created (a process without the code created them); the ids held back (queued,
    their lease let go: the caller drops them from this round)."""
    starting = {row[0] for row in unwritten}
    held: set[str] = set()
    gated = driver.gated
    fresh = [
        row
        for row in taken
        if row[1] in gated and row[0] in starting and not tx.flow_has_slot(row[0])  # type: ignore[attr-defined]
    ]
    if any(gated[row[1]].singleton is not None for row in fresh):
        tx.state_lock()  # flow rows are locked before the flow lock, as everywhere
    for row in fresh:
        run_id, fid = row[0], row[1]
        if (
            gated[fid].singleton is not None
            and not at_take(driver, tx, run_id, fid, row[7], now_us)
        ) or not arrive(driver, tx, run_id, fid, row[7], now_us, "running"):
            held.add(run_id)
    return held


def released(driver: Driver, tx: Transaction, run_ids: list[str], now_us: int) -> list[str]:
    """Free the slots of runs that just ended (in the transaction that ends them) and move
    their queues; the runs admitted."""
    admitted: list[str] = []
    for run_id in run_ids:
        freed = tx.flow_free_slot(run_id)  # type: ignore[attr-defined]
        if freed is not None:
            admitted += pump(driver, tx, freed[0], freed[1], now_us)
    return admitted


def fire(driver: Driver, due: list[tuple[str, str]], now_us: int) -> tuple[list[str], list[str]]:
    """Fire due flow timers (found by discovery): a pump timer moves its run's queue; a
    start timeout cancels a run still pending; a finish timeout fails a run not ended. The runs
    admitted, and the runs sent ``RunTimedOut`` mail: all to drive now."""
    admitted: list[str] = []
    timed_out: list[str] = []
    with driver.store.transaction() as tx:
        for run_id, step_id in due:
            if not tx.flow_claim_timer(run_id, step_id, now_us):  # type: ignore[attr-defined]
                continue  # another worker fired it
            if step_id == PUMP_TIMER:
                row = tx.flow_queue_row(run_id)  # type: ignore[attr-defined]
                if row is not None:
                    admitted += pump(driver, tx, row[0], row[1], now_us)
            elif step_id == START_TIMER:
                _start_timeout(driver, tx, run_id, now_us)
            elif step_id == FINISH_TIMER:
                sent, freed = flow_finish.timeout(driver, tx, run_id, now_us)
                admitted += freed  # a blocked run ended at once: its slot went to these
                if sent:
                    timed_out.append(run_id)
    with driver.store.lock:
        driver.fresh.difference_update(admitted)  # driven by this round instead
    return admitted, timed_out


def finish_timers(
    driver: Driver, tx: Transaction, taken: list[TakenRow], unwritten: list[Any], now_us: int
) -> None:
    """Set the ``timeouts.finish`` timer of the runs just taken that start now (leave
    pending): due that long from now. A run that ends first drops it with its other timers."""
    starting = {row[0] for row in unwritten}
    for row in taken:
        limit = driver.finishing.get(row[1])
        if limit is not None and row[0] in starting:
            tx.set_timer(row[0], FINISH_TIMER, TIMER_KIND, now_us + _us(limit), 0)


def _start_timeout(driver: Driver, tx: Transaction, run_id: str, now_us: int) -> None:
    found = tx.flow_run(run_id)  # type: ignore[attr-defined]
    if found is None or found[0] not in (QUEUED, "pending") or found[3] is not None:
        return  # started (or being taken) meanwhile: the timeout no longer applies
    function_id = tx.run_function(run_id) or ""
    flow = driver.gated.get(function_id)
    limit = flow.timeouts.start if flow is not None and flow.timeouts is not None else None
    waited = f" within {limit.in_words()}" if limit is not None else ""
    cancel_unstarted(driver, tx, run_id, f"run was not started{waited} (timeouts.start)", now_us)


def cancel_unstarted(
    driver: Driver, tx: Transaction, run_id: str, reason: str, now_us: int
) -> bool:
    """End a run that never left pending (queued, or admitted and not taken yet) as
    cancelled, with its ``RunStarted`` and ``RunCancelled``; whether it was one."""
    row = tx.unstarted(run_id)
    queue = tx.flow_queue_row(run_id)  # type: ignore[attr-defined]
    error = rows.dumps(rows.error_body(ErrorInfo(type_name(CancelledError), reason)))
    if row is None or not tx.flow_end_unstarted(run_id, error, now_us):  # type: ignore[attr-defined]
        return False
    started = run_started(run_id, *row)
    cancelled = RunCancelled(1, rows.from_us(now_us), reason, False)
    tx.append_history([(run_id, *rows.encode(started)), (run_id, *rows.encode(cancelled))])
    freed = tx.flow_free_slot(run_id)  # type: ignore[attr-defined]
    if freed is not None:
        pump(driver, tx, freed[0], freed[1], now_us)
    elif queue is not None:
        pump(driver, tx, queue[0], queue[1], now_us)
    with driver.done:
        driver.done.notify_all()
    return True


def reasons(store: Any, found: list[tuple[Any, ...]]) -> dict[str, str]:
    """``Run.waiting_for`` of the held-back runs among run rows ``found``."""
    queued = [row[0] for row in found if row[2] == QUEUED]
    return store.flow_reasons(queued) if queued else {}
