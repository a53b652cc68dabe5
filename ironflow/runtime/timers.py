"""Timers: what each kind means when it falls due, and setting one.

A timer is keyed by (run, step). Kinds (named in ``ironflow.commands.kinds``, where the
table of which work sets which kind is):

| kind     | set for                           | when due, the run receives               |
|----------|-----------------------------------|------------------------------------------|
| `retry`  | a step's next attempt with a delay | nothing: the step is due and starts      |
| `sleep`  | `step.sleep` / `sleep_until`       | `TimerFired`                             |
| `wait`   | `wait_for_event`'s timeout         | `WaitTimedOut` (and its wait is dropped) |
| `invoke` | `invoke`'s timeout                 | `ChildFailed` (a `TimeoutError`, worded) |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ironflow.commands import kinds
from ironflow.history.events import ChildFailed, TimerFired, WaitTimedOut
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.live import Input, Live
from ironflow.runtime.store import Batch, Transaction

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver


def set_timer(
    driver: Driver, tx: Transaction, run_id: str, step_id: str, kind: str, due_us: int, attempt: int
) -> None:
    """Set (or move) a step's timer; the driver looks again by then."""
    driver.next_timer_us = min(driver.next_timer_us, due_us)
    tx.set_timer(run_id, step_id, kind, due_us, attempt)


class Unclaimed(Exception):
    """A round's commit found due timers it folded gone from the store: ``lost``, as
    ``(run_id, step_id)``. Raised inside the commit's transaction, so nothing is written."""

    def __init__(self, lost: set[tuple[str, str]]) -> None:
        super().__init__(f"{len(lost)} due timer(s) gone before the round committed")
        self.lost = lost


def claim(
    tx: Transaction, due: dict[str, list[tuple[str, str, int]]], run_ids: list[str], now_us: int
) -> None:
    """Claim (delete) in the store the due timers of ``run_ids`` a round fired; ``Unclaimed``
    if one is gone since discovery (its wait took an event, another round fired it): the
    round folded an input the run must not get."""
    keys = [
        (run_id, step_id, kind) for run_id in run_ids for step_id, kind, _ in due.get(run_id, ())
    ]
    if not keys:
        return
    claimed = tx.take_timers(keys, now_us)
    lost = {(run_id, step_id) for run_id, step_id, _ in keys if (run_id, step_id) not in claimed}
    if lost:
        raise Unclaimed(lost)


def fired(live: Live, due: list[tuple[str, str, int]], inputs: list[Input], batch: Batch) -> None:
    """Turn the run's due timers ``(step_id, kind, attempt)`` into inputs; drop them."""
    run_id = live.run_id
    for step_id, kind, _attempt in due:
        if _FAULTS:
            crash_point("timer-fire")
        batch.timers_done.append((run_id, step_id))
        if kind == kinds.TIMER_SLEEP:
            inputs.append((TimerFired, {"id": step_id}))
        elif kind == kinds.TIMER_WAIT:
            batch.waits_done.append((run_id, step_id))
            inputs.append((WaitTimedOut, {"id": step_id}))
        elif kind == kinds.TIMER_INVOKE:
            child_id = f"{run_id}/{step_id}"
            error = live.interpreter.invoke_timeout(step_id, child_id)
            inputs.append((ChildFailed, {"id": step_id, "child_run_id": child_id, "error": error}))
