"""Discovery: when a round looks in the database for work, and what it takes from there.

A round drives what this engine itself knows of (step outcomes, runs it just started or sent
mail: ``take``) and looks in the store only when something may have changed (``due``): news
in this process, the nearest known timer falling due, a wake-up hint from another process
(``hinted``, PostgreSQL's NOTIFY while serving), or a poll interval passing (other processes'
news, when no hint came). ``find`` asks the store for due timers and runs to drive, a bounded page.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from ironflow.runtime import flow, flow_timed, registry
from ironflow.runtime.live import Input

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

NEVER = 2**63 - 1
TICK_RUNS = 1000  # runs driven per transaction at most


def take(pool: set[str], most: int) -> set[str]:
    """Remove and return up to ``most`` items of ``pool`` (a bounded batch per round)."""
    if len(pool) <= most:
        taken = set(pool)
        pool.clear()
        return taken
    return {pool.pop() for _ in range(most)}


def due(driver: Driver, now_us: int) -> bool:
    """Look for new work in the database only when something may have changed."""
    return (
        driver.dirty
        or driver.hinted
        or now_us >= driver.next_timer_us
        or time.monotonic() >= driver.next_poll
    )


def find(
    driver: Driver,
    now_us: int,
    work: dict[str, list[Input]],
    due: dict[str, list[tuple[str, str, int]]],
) -> set[str]:
    """Due timers and runs that need driving (new, woken, or orphaned by a dead worker)."""
    fids = tuple(driver.functions)
    # Cleared before looking: a hint that arrives while we look makes us look again.
    driver.hinted = False
    registry.heartbeat(driver, now_us)  # at this cadence: no thread of its own
    timers_due, ready, nearest = driver.store.discover(now_us, fids, driver.worker_id, TICK_RUNS)
    flow_due = []  # flow-control timers (see ``flow``): not a run's own
    found = set(ready)
    for run_id, step_id, kind, attempt in timers_due:
        if kind == flow.TIMER_KIND:
            flow_due.append((run_id, step_id))
            continue
        due.setdefault(run_id, []).append((step_id, kind, attempt))
        work.setdefault(run_id, [])
        found.add(run_id)
    for run_id in ready:
        work.setdefault(run_id, [])
    if flow_due:  # the runs they admit are driven in this round
        for run_id in flow.fire(driver, flow_due, now_us):
            work.setdefault(run_id, [])
    driver.next_timer_us = nearest if nearest is not None else NEVER
    if driver.plans.timed:  # batches, debounced runs, cron ticks falling due (flow_timed)
        flow_timed.discover(driver, now_us, work)
    # A full page means there may be more: look again on the next tick.
    driver.dirty = len(timers_due) >= TICK_RUNS or len(ready) >= TICK_RUNS
    driver.next_poll = time.monotonic() + driver.poll
    return found
