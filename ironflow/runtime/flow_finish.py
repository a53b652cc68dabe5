"""``timeouts.finish``: a run not ended this long after it left ``pending`` fails with
``RunTimeoutError`` at its deadline, whatever it is doing then.

The deadline is a ``flow`` timer set when the run leaves pending (``flow.finish_timers``);
whichever worker finds it due claims it (once) and:

- a run that is running, sleeping or waiting (for an event, a child, a retry) is sent
  ``RunTimedOut`` mail; a parked run is driven at once, a running one at its next step
  boundary. Its round writes ``RunTimedOut`` into its history and folds it like an error
  the workflow raised: its undos run, then it ends ``failed`` (replay decides the same);
- a ``blocked`` run cannot be driven (its code does not replay its history): it ends at
  once, as ``engine.cancel`` ends a blocked run. ``RunTimedOut`` is written into its history
  and it ends ``failed`` with ``RunTimeoutError``; its undos do not run (no code can run
  them), its slot frees, its children are cancelled and a parent waiting on it is told.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ironflow.commands import kinds
from ironflow.errors import RunTimeoutError
from ironflow.history.errors import encode_error
from ironflow.history.events import RunTimedOut
from ironflow.runtime.models import TERMINAL
from ironflow.runtime.store import Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

QUEUED = "queued"  # as flow.QUEUED: a held-back run never left pending (no deadline yet)


def timeout(driver: Driver, tx: Transaction, run_id: str, now_us: int) -> tuple[bool, list[str]]:
    """Apply ``timeouts.finish`` to ``run_id`` at its deadline: whether it was sent
    ``RunTimedOut`` mail (to drive now), and the runs admitted to the slot of a blocked run
    that ended here, in ``tx``."""
    status, next_seq = tx.run_status(run_id)
    if status in TERMINAL or status == QUEUED:
        return False, []
    limit = driver.finishing.get(tx.run_function(run_id) or "")
    within = f" within {limit.in_words()}" if limit is not None else " in time"
    reason = f"run did not finish{within} (timeouts.finish)"
    if status == "blocked":
        return False, _fail_blocked(driver, tx, run_id, next_seq, reason, now_us)
    tx.send_mail(run_id, kinds.MAIL_RUN_TIMED_OUT, now_us, rows.dumps({"reason": reason}))
    return True, []


def _fail_blocked(
    driver: Driver, tx: Transaction, run_id: str, seq: int, reason: str, now_us: int
) -> list[str]:
    """End blocked ``run_id`` failed with ``RunTimeoutError`` (see the module); the runs
    admitted to its slot."""
    from ironflow.runtime import control, flow  # both import this module's importer

    error = rows.error_body(encode_error(RunTimeoutError(reason)))
    parent = tx.flow_fail_blocked(run_id, rows.dumps(error), now_us)  # type: ignore[attr-defined]
    if parent is None:  # resumed or cancelled meanwhile
        return []
    timed_out = RunTimedOut(seq, rows.from_us(now_us), reason)
    tx.append_history([(run_id, *rows.encode(timed_out))])
    admitted = flow.released(driver, tx, [run_id], now_us)  # a blocked run kept its slot
    for child in tx.active_children(run_id):
        control.cancel_in(driver, tx, child, False, f"parent run {run_id} failed: {reason}", now_us)
    parent_run, parent_step, notify = parent
    if parent_run and notify and tx.run_status(parent_run)[0] not in TERMINAL:
        body = {"id": parent_step, "child_run_id": run_id, "error": error}
        tx.send_mail(parent_run, kinds.MAIL_CHILD_FAILED, now_us, rows.dumps(body))
        driver.woken.add(parent_run)
    with driver.done:
        driver.done.notify_all()
    return admitted
