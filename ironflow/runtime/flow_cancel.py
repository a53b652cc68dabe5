"""``cancel_on``: an event that cancels a run, kept as a wait row the runtime set itself.

When a run of a function with ``cancel_on`` is created, each ``CancelOn(event, match)``
becomes a *watch*: a row in ``waits`` with the step id ``/cancel_on/<i>`` (no step id starts
with ``/``), the run's value at ``match`` as its key, and sequence -1 (it comes before the
run's own waits). Created in the run's creating transaction, it sees exactly the events
emitted after the run started, in commit order, on both stores, as waits do; a run whose
triggering event lacks the ``match`` field has no watch (nothing equals a missing value).

An emit hands a matching watch its event (``events.match_waits``): the watch is claimed
(deleted: at most once) and the run is cancelled as ``engine.cancel`` does, so it ends at
once if parked and at its next step boundary if a step is running. Its ``Run.error.message``
names the event. Watches go with the run's other waits when it ends.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ironflow.commands.event import MISSING, Event, lookup
from ironflow.runtime import control
from ironflow.runtime.store import Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver
    from ironflow.runtime.flow_plan import Plan

PREFIX = "/cancel_on/"


def watch(tx: Transaction, run_id: str, plan: Plan, trigger: str) -> None:
    """Set the run's cancel_on watches (in the transaction that creates it)."""
    event = rows.event_from_body(json.loads(trigger))
    for index, cancel in enumerate(plan.flow.cancel_on):
        key = None
        if cancel.match is not None:
            value = lookup(event, cancel.match)
            if value is MISSING:
                continue
            key = rows.dumps_sorted(value)
        tx.add_wait(run_id, f"{PREFIX}{index}", cancel.event, cancel.match, key, -1)


def is_watch(step_id: str) -> bool:
    return step_id.startswith(PREFIX)


def fire(
    driver: Driver, tx: Transaction, run_id: str, step_id: str, event: Event, now_us: int
) -> None:
    """Cancel ``run_id`` for ``event`` if its watch is still there (claimed: once)."""
    if not tx.claim_watch(run_id, step_id):
        return
    reason = f"cancelled by event {event.name!r} ({event.id}) matching its cancel_on"
    control.cancel_in(driver, tx, run_id, False, reason, now_us)
