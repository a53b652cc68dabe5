"""What the fold makes of a run's inputs and decisions: inputs numbered into history events
(``accepted``), a decision's new work applied (``apply``: timers and waits indexed, children
started, events published) and a due step made a job (``job``).

Called per step from the round's fold (``Driver.drive_live``): no objects built beyond the
events, the writes queued in ``Driver.later`` for the round's commit.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ironflow.commands import kinds
from ironflow.history.events import (
    ChildStarted,
    EventPublished,
    HistoryEvent,
    StepCompleted,
    StepFailed,
    WaitMatched,
)
from ironflow.interpreter import Decision, Work
from ironflow.runtime import children, events, timers
from ironflow.runtime.executor import Job
from ironflow.runtime.live import Input, Live
from ironflow.runtime.store import rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

STEP_KINDS = kinds.STEPS


def apply(
    driver: Driver,
    live: Live,
    decision: Decision,
    now: _dt.datetime,
    now_us: int,
    everything: bool = False,
) -> list[Input]:
    """Index the new work (timers, waits), start children, publish; return new inputs.

    The writes wait in ``later`` for the round's commit; what the run receives at once
    (a wait's event emitted before, a child started or already ended, a publish) is
    known now, from reads outside a transaction, and folded in this same round. With
    ``everything``, all pending work is (re)indexed; each action is idempotent.

    The boundary where work kinds become timer kinds (``ironflow.commands.kinds``): a step's
    delayed attempt sets a ``retry`` timer, both sleeps a ``sleep`` one, an invoke's timeout
    an ``invoke`` one, and a wait's timeout a ``wait`` one (in ``events.index_wait``)."""
    run_id = live.run_id
    inputs: list[Input] = []
    later = driver.later
    for work in decision.pending if everything else decision.commands:
        kind = work.kind
        due_us = None if work.due is None else rows.to_us(rows.as_datetime(work.due))
        if kind in STEP_KINDS:
            if due_us is not None and due_us > now_us:
                later.append(
                    (timers.set_timer, (run_id, work.id, kinds.TIMER_RETRY, due_us, work.attempt))
                )
        elif kind in kinds.SLEEPS:
            assert due_us is not None
            later.append((timers.set_timer, (run_id, work.id, kinds.TIMER_SLEEP, due_us, 1)))
        elif kind == kinds.WAIT_EVENT:
            found = events.register_wait(driver, live, work, now_us, driver.consumed)
            if found is not None:
                inputs.append((WaitMatched, {"id": work.id, "event": found}))
        elif kind in kinds.CHILDREN:
            inputs.append(children.start_child(driver, live, work, now_us))
            if kind == kinds.INVOKE and due_us is not None:
                later.append((timers.set_timer, (run_id, work.id, kinds.TIMER_INVOKE, due_us, 1)))
        elif kind == kinds.PUBLISH:
            detail = work.detail
            event_id = detail["event_id"]
            # The published event carries the publishing run's trace context: the runs it
            # starts join that trace.
            args = (detail["event"], detail["data"], event_id, event_id, now, live.trace)
            later.append((events.emit_in, args))
            inputs.append((EventPublished, {"id": work.id, "event_id": event_id}))
    return inputs


def accepted(
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


def job(live: Live, work: Work, mocks: dict[str, Callable[..., Any]]) -> Job:
    command: Any = work.command
    timeout = getattr(command, "timeout", None)
    return Job(
        live.run_id,
        work.id,
        work.attempt,
        mocks.get(command.name, command.fn) if mocks else command.fn,
        command.args,
        None if timeout is None else timeout.total_seconds(),
        live.function.id,
        work.kind,
        live.trace,
    )
