"""Child runs: starting one for an invoke, and telling the parent how it ended.

A child's run id is ``<parent run id>/<step id>``, so starting it twice finds the first one.
``invoke`` waits for the child's end (mail to the parent when it ends, see ``finish``);
``invoke_async`` only starts it. A child that cannot be started fails the invoke at its
yield.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ironflow.commands import kinds
from ironflow.errors import CancelledError
from ironflow.history.errors import encode_error
from ironflow.history.events import ChildCompleted, ChildFailed, ChildStarted, ErrorInfo
from ironflow.interpreter import Decision, Work
from ironflow.runtime import registry, telemetry
from ironflow.runtime.live import Input, Live, column, create_run, run_error, trigger
from ironflow.runtime.models import TERMINAL
from ironflow.runtime.store import Batch, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver


def _unknown(driver: Driver, function_id: str) -> str | None:
    """Why no run of ``function_id`` can start, read from the database's registry: a short
    transaction of its own, since the fold holds none (only for ids this engine lacks)."""
    with driver.store.transaction() as tx:
        return registry.unknown(driver, tx, function_id)


def start_child(driver: Driver, live: Live, work: Work, now_us: int) -> Input:
    """Start the child run an invoke names (once; created when the round commits): what the
    parent receives now. Looked up while folding, with no transaction open: only the
    parent's lease holder creates ``<parent>/<step>``, and a run made under that id since
    makes the commit's insert fail, dropping the round."""
    detail = work.detail
    child_id, function_id = detail["child_run_id"], detail["function"]
    why = None if function_id in driver.functions else _unknown(driver, function_id)
    if why is not None:
        # Both kinds fail at the yield: a child nobody can run would stay pending forever.
        return refused(work.id, child_id, why)
    found = driver.store.find_run(child_id)
    if found is not None and (found[3], found[4], found[5]) != (
        function_id,
        live.run_id,
        work.id,
    ):
        # Taken by a run that is not this child (a run id chosen with a '/' by a version
        # that allowed it): waiting for that run would wait for someone else's.
        return refused(
            work.id,
            child_id,
            f"the child run id {child_id!r} is taken by another run (of {found[3]!r}); "
            f"run ids with '/' are reserved for child runs",
        )
    if found is None:
        traceparent = (
            telemetry.child_trace(
                function_id, live.run_id, child_id, live.trace, driver.pending_spans
            )
            if telemetry.ON
            else None
        )
        stored = trigger(function_id, detail["data"], now_us, traceparent)
        parent = (live.run_id, work.id, work.kind == kinds.INVOKE)
        driver.later.append((create_run, (child_id, function_id, stored, now_us, parent)))
    elif work.kind == kinds.INVOKE and found[0] in TERMINAL:
        # Waited for again after a resume: the child ended while this run was failed
        # (it was not told then), or the child's failure is what failed it.
        return outcome(work.id, child_id, *found[:3])
    return (ChildStarted, {"id": work.id, "child_run_id": child_id})


def outcome(
    step_id: str, child_id: str, status: str, output: str | None, error: str | None
) -> Input:
    """What an ended child run reports to the run that invoked it."""
    if status == "completed":
        value = None if output is None else column(child_id, "output", output)
        return (ChildCompleted, {"id": step_id, "child_run_id": child_id, "output": value})
    if error is not None:
        info = run_error(child_id, error)
    else:
        info = encode_error(CancelledError("child run was cancelled"))
    return (ChildFailed, {"id": step_id, "child_run_id": child_id, "error": info})


def refused(step_id: str, child_id: str, message: str) -> Input:
    """A child run that could not be started: the invoke fails at its yield."""
    return (
        ChildFailed,
        {"id": step_id, "child_run_id": child_id, "error": ErrorInfo("LookupError", message)},
    )


def finish(live: Live, decision: Decision, now_us: int, batch: Batch) -> None:
    """End the run in ``batch``; a child that an invoke waits for tells its parent."""
    run_id = live.run_id
    error = None
    if decision.error is not None and decision.status != "completed":
        error = rows.dumps(rows.error_body(encode_error(decision.error, with_traceback=True)))
    output = rows.dumps(decision.output) if decision.status == "completed" else None
    batch.ended.append((decision.status, output, error, now_us, now_us, run_id))
    batch.finished.append(run_id)
    if decision.status == "failed":
        batch.failed.append((run_id, live.function.id, decision.error))
    if live.parent_run_id and live.notify_parent:
        if decision.status == "completed":
            kind, body = (
                kinds.MAIL_CHILD_COMPLETED,
                {"id": live.parent_step_id, "child_run_id": run_id, "output": decision.output},
            )
        else:
            failure = decision.error or CancelledError("child run was cancelled")
            kind, body = (
                kinds.MAIL_CHILD_FAILED,
                {
                    "id": live.parent_step_id,
                    "child_run_id": run_id,
                    "error": rows.error_body(encode_error(failure)),
                },
            )
        batch.notify.append((live.parent_run_id, kind, now_us, rows.dumps(body)))
