"""After a round's drive: retried until it commits, runs that cannot be driven blocked, what
committed counted and reported (the cold paths around ``Driver.drive_all``).

``commit`` drives the work again after a ``Broken`` batch (the broken runs blocked, together),
an ``Unclaimed`` timer (folded again without it) or a ``WriteConflict`` (a few times); a lost
lease drops the batch. Nothing of a batch is written unless its commit succeeds.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING

from ironflow.runtime import control, leases, timers
from ironflow.runtime.executor import Job
from ironflow.runtime.live import Broken, Input
from ironflow.runtime.store import LeaseLost, WriteConflict

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

# A commit the database aborted to resolve a conflict is driven again this many times.
CONFLICT_RETRIES = 3


def commit(
    driver: Driver,
    work: dict[str, list[Input]],
    due: dict[str, list[tuple[str, str, int]]],
    discovered: set[str],
    now: _dt.datetime,
    now_us: int,
) -> list[Job] | None:
    """Drive ``work`` until its decisions commit; ``None`` if nothing of it is left to
    drive (all blocked, or the leases were lost)."""
    conflicts = 0
    try:
        while True:
            try:
                jobs = driver.drive_all(work, due, discovered, now, now_us)
                report_committed(driver)
                return jobs
            except Broken as broken:
                if not block_broken(driver, work, broken, now_us):
                    return None
            except timers.Unclaimed as unclaimed:
                # Nothing was written: fold again without the timers that are gone (a
                # wait's event came instead: its mail is read with the run's).
                for run_id in work:
                    driver.live.pop(run_id, None)
                lost = unclaimed.lost
                due = {
                    run_id: [item for item in items if (run_id, item[0]) not in lost]
                    for run_id, items in due.items()
                }
                discovered = discovered | {run_id for run_id, _ in lost}
            except WriteConflict:
                # Aborted by the database (a deadlock it broke, say), nothing written: the
                # same work again, folded from the store, a few times before giving up.
                conflicts += 1
                if conflicts > CONFLICT_RETRIES:
                    raise
                for run_id in work:
                    driver.live.pop(run_id, None)
            except LeaseLost as moved:
                # Another worker took one of these runs (our lease ran out): let all go.
                for run_id in work:
                    driver.live.pop(run_id, None)
                    driver.in_flight.pop(run_id, None)
                leases.report_lost(driver.worker_id, moved, list(work))  # outside the transaction
                return None
    except BaseException:
        # Interpreters moved on in memory past what was committed: rebuild them. The
        # runs of this round are driven again next round: those the take leased stay
        # ours until the lease runs out, and discovery would not see them before.
        for run_id in work:
            driver.live.pop(run_id, None)
        with driver.store.lock:
            driver.woken.update(work)
        driver.dirty = True
        raise


def block_broken(driver: Driver, work: dict[str, list[Input]], broken: Broken, now_us: int) -> bool:
    """Park the runs that broke, together, and drop them from ``work``; whether any of
    it is left to drive."""
    # Nothing of the batch was written: interpreters that moved on in memory are
    # dropped (rebuilt from the store on next use); the broken runs are parked,
    # together, and the rest driven again (once, however many runs broke).
    for run_id in work:
        driver.live.pop(run_id, None)
    with driver.store.transaction() as tx:
        blocked = [
            (run_id, error, control.block(driver, tx, run_id, error, now_us))
            for run_id, error in broken.runs.items()
        ]
    # Only once committed (a failed commit blocked nothing, and the next round tries
    # again), and outside the write lock (a logging handler may be slow).
    for run_id, error, done in blocked:
        work.pop(run_id, None)
        if done is not None:
            function_id, started = done
            driver.stats["runs_started"] += started
            driver.stats["runs_blocked"] += 1
            control.report_run(run_id, function_id, "blocked", error)
    return bool(work)


def report_committed(driver: Driver) -> None:
    """Count what the transaction just committed started and ended; log runs that failed."""
    if driver.committing is None:
        return
    started, batch = driver.committing
    driver.committing = None
    driver.stats["runs_started"] += started
    driver.stats["runs_ended"] += len(batch.finished)
    driver.stats["runs_failed"] += len(batch.failed)
    for run_id, function_id, error in batch.failed:
        control.report_run(run_id, function_id, "failed", error)
