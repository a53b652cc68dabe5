"""Control: cancel, resume and block runs, and the one log line per run that fails or blocks.

``cancel`` sends a running run ``RunCancelled`` mail (its next round folds it, running undos
first if asked) and ends a blocked one at once; its children are cancelled with it.
``resume`` reopens a blocked run (after a code fix) or a failed one (``RunResumed`` is
written into its history). ``block`` parks a run its round could not drive, with the error.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from ironflow.commands import kinds
from ironflow.errors import NonDeterminismError
from ironflow.history.errors import encode_error
from ironflow.history.events import RunCancelled, RunResumed
from ironflow.runtime import flow
from ironflow.runtime.live import run_started
from ironflow.runtime.models import TERMINAL
from ironflow.runtime.store import StoreError, Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

# One WARNING per run that fails or blocks (never per step): ``ironflow worker`` shows them.
# Silent unless the application configures logging (a library must not print on its own).
_RUNS_LOG = logging.getLogger("ironflow.runs")
_RUNS_LOG.addHandler(logging.NullHandler())


def cancel(driver: Driver, run_id: str, compensate: bool, reason: str) -> None:
    """Cancel ``run_id`` and its child runs, in a transaction of its own."""
    _, now_us = driver.now()
    with driver.store.transaction() as tx:
        cancel_in(driver, tx, run_id, compensate, reason, now_us)


def cancel_in(
    driver: Driver, tx: Transaction, run_id: str, compensate: bool, reason: str, now_us: int
) -> None:
    """Cancel ``run_id`` and its child runs in ``tx``."""
    status, next_seq = tx.run_status(run_id)
    if status in TERMINAL:
        return
    if status == flow.QUEUED:  # held back by a limit: never started, ends at once
        flow.cancel_unstarted(driver, tx, run_id, reason, now_us)
        return
    if status == "blocked":
        event = RunCancelled(next_seq, rows.from_us(now_us), reason, False)
        tx.append_history([(run_id, *rows.encode(event))])
        tx.cancel_blocked(run_id, now_us)
        flow.released(driver, tx, [run_id], now_us)  # a blocked run kept its slot
    else:
        body = rows.dumps({"reason": reason, "compensate": compensate})
        tx.send_mail(run_id, kinds.MAIL_RUN_CANCELLED, now_us, body)
        driver.woken.add(run_id)
    for child in tx.active_children(run_id):
        cancel_in(driver, tx, child, compensate, f"parent run {run_id} was cancelled", now_us)


def resume(driver: Driver, run_id: str) -> None:
    """Reopen a blocked or failed run; ``ValueError`` for one in another state."""
    now, now_us = driver.now()
    with driver.store.transaction() as tx:
        status, seq = tx.run_status(run_id)
        if status == "blocked":
            tx.resume_blocked(run_id, now_us)
        elif status == "failed":
            # Straight into the history: an ended run has no lease, so no worker appends
            # to it, and code fixed since the failure must see the resume in the same
            # fold as the failure it takes back.
            resumed = RunResumed(seq=seq, ts=now, reason="resumed")
            tx.append_history([(run_id, *rows.encode(resumed))])
            tx.resume_failed(run_id, now_us)
        else:
            raise ValueError(
                f"run {run_id!r} is {status}; only failed or blocked runs can be resumed"
            )
    driver.live.pop(run_id, None)
    with driver.store.lock:
        driver.woken.add(run_id)


def block(
    driver: Driver, tx: Transaction, run_id: str, exc: BaseException, now_us: int
) -> tuple[str, int] | None:
    """Set ``run_id`` blocked with ``exc``; its function id and whether its RunStarted was
    written now (1 or 0), or None if it is gone. The caller counts and logs once committed.
    """
    driver.live.pop(run_id, None)
    driver.in_flight.pop(run_id, None)
    # Blocked at its first drive, the run's RunStarted went with the rolled-back batch.
    unstarted = tx.unstarted(run_id)
    started = 0
    if unstarted is not None:
        with contextlib.suppress(rows.CorruptRow):  # a damaged trigger is why it blocks
            event = run_started(run_id, *unstarted)
            tx.append_history([(run_id, *rows.encode(event))])
            started = 1
    # A divergence or a damaged row says all there is; a bug needs its traceback.
    plain = isinstance(exc, NonDeterminismError | StoreError)
    info = encode_error(exc, with_traceback=not plain)
    function_id = tx.block(run_id, rows.dumps(rows.error_body(info)), now_us)
    return None if function_id is None else (function_id, started)


def report_run(run_id: str, function_id: str, how: str, error: BaseException | None) -> None:
    """One WARNING on ``ironflow.runs``: the run, its function and the error's first line."""
    if error is None:
        detail = "no error recorded"
    else:
        info = encode_error(error)
        lines = info.message.strip().splitlines()
        detail = f"{info.type}: {lines[0]}" if lines else info.type
    _RUNS_LOG.warning(
        "run %s (%s) %s: %s",
        run_id,
        function_id,
        how,
        detail,
        extra={"run_id": run_id, "function_id": function_id, "run_status": how},
    )
