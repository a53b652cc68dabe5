"""Discovery: when a round looks in the database for work, and what it takes from there.

A round drives what this engine itself knows of (step outcomes, runs it just started or sent
mail: ``take``) and looks in the store only when something may have changed (``due``): news
in this process, the nearest known timer falling due, a wake-up hint from another process
(``hinted``, PostgreSQL's NOTIFY while serving), or a poll interval passing (other processes'
news, when no hint came). ``find`` asks the store for due timers and runs to drive, a bounded page.
A hint that names its runs (``hinted_runs``) is driven as it is, with no look at all (``named``),
by one worker first (``chaser``): the others wait ``NAMED_GRACE``, then look.

**Runs waiting for any worker** (new, or orphaned) are claimed apart on a store that can
(``Store.claim``, PostgreSQL: one statement skipping rows other claims hold), so workers looking
at once do not read one page and race for it; SQLite lists them in discovery's page.

**Claims are capped by room** (``room``): a worker holds at most ``capacity`` runs (its step
threads times ``RUNS_PER_THREAD``) and claims new ones only up to what it has free, so one burst
is shared by the workers that look, not swallowed by the first. A worker that left work behind
(a full page, claims cut by the cap) looks again once half its capacity is free: a batch worth a
round, and the rest is left meanwhile to idle workers. News of runs it holds (their mail, their
timers) is never held back by the cap: it is no claim.
"""

from __future__ import annotations

import time
import zlib
from typing import TYPE_CHECKING

from ironflow.runtime import flow, flow_timed, registry
from ironflow.runtime.live import Input

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

NEVER = 2**63 - 1
TICK_RUNS = 1000  # runs driven per transaction at most
# Runs a worker holds per step thread at most: enough that a round's fixed costs (a look, two
# short transactions) stay small per run, few enough that a burst is shared by every worker
# looking (measured: 16 cost a single worker ~18% more CPU per 1-step run, 64 about nothing).
RUNS_PER_THREAD = 64
# How long a worker leaves a run another process named to the worker that chases it first
# (see ``named``) before it looks for the run itself: a few rounds, well within a poll.
NAMED_GRACE = 0.05


def take(pool: set[str], most: int) -> set[str]:
    """Remove and return up to ``most`` items of ``pool`` (a bounded batch per round)."""
    if len(pool) <= most:
        taken = set(pool)
        pool.clear()
        return taken
    return {pool.pop() for _ in range(most)}


def room(driver: Driver) -> int:
    """How many more runs this worker may claim now (those claimed and not taken yet count)."""
    return max(0, driver.capacity - len(driver.live) - len(driver.claimed))


def due(driver: Driver, now_us: int) -> bool:
    """Look for new work in the database only when something may have changed."""
    if now_us >= driver.next_timer_us or time.monotonic() >= driver.next_poll:
        return True  # the runs held have their timers and mail found at this cadence too
    if not (driver.dirty or driver.hinted):
        return False
    held = len(driver.live)
    return not held or driver.capacity - held >= driver.capacity // 2


def chaser(peers: tuple[str, ...], run_id: str) -> str:
    """The worker of ``peers`` that chases a named run first (rendezvous hashing: every worker
    computes the same one from the same peers, and runs spread evenly over them)."""
    key = run_id.encode()
    return max(peers, key=lambda peer: zlib.crc32(key, zlib.crc32(peer.encode())))


def named(driver: Driver, work: dict[str, list[Input]]) -> set[str]:
    """The runs another process's wake-up named: driven now, with their mail, without a look
    in the database. Runs held here are news, not claims; new claims stop at ``room``, and
    the rest is left to discovery (``hinted``) once there is room, or to other workers.

    Every listening worker hears a wake-up, and all chasing its runs at once would race for
    them (all but one losing the claim): a run not held here is chased first by one live
    worker (``chaser``, over the peers the heartbeat read), and the others look for it only
    a ``NAMED_GRACE`` later, in discovery, which finds it only if it still waits."""
    with driver.hint_lock:
        names, driver.hinted_runs = driver.hinted_runs, set()
    live = driver.live
    free = room(driver)
    peers = driver.peers
    me = driver.worker_id
    taken: set[str] = set()
    for run_id in names:
        if run_id not in live and run_id not in work:
            if len(peers) > 1 and chaser(peers, run_id) != me:
                grace = time.monotonic() + min(driver.poll, NAMED_GRACE)
                driver.next_poll = min(driver.next_poll, grace)
                driver.next_chase = min(driver.next_chase, grace)
                continue
            if free <= 0:
                driver.hinted = True
                continue
            free -= 1
        taken.add(run_id)
        work.setdefault(run_id, [])
    return taken


def find(
    driver: Driver,
    now_us: int,
    work: dict[str, list[Input]],
    due: dict[str, list[tuple[str, str, int]]],
) -> set[str]:
    """Due timers and runs that need driving (new, woken, or orphaned by a dead worker): the
    news of runs held here, and new claims up to ``room``."""
    fids = tuple(driver.functions)
    # Cleared before looking: a hint that arrives while we look makes us look again.
    driver.hinted = False
    registry.heartbeat(driver, now_us)  # at this cadence: no thread of its own
    live = driver.live
    free = room(driver)
    # A page holds the news of every run held here, and as many new runs as there is room for.
    limit = max(1, min(TICK_RUNS, free + len(live)))
    timers_due, ready, nearest = driver.store.discover(now_us, fids, driver.worker_id, limit)
    # A full page means there may be more: look again (once there is room).
    more = len(timers_due) >= limit or len(ready) >= limit
    flow_due = []  # flow-control timers (see ``flow``): not a run's own
    found: set[str] = set()
    for run_id, step_id, kind, attempt in timers_due:
        if kind == flow.TIMER_KIND:
            flow_due.append((run_id, step_id))
            continue
        if run_id not in work and run_id not in live:
            if free <= 0:
                more = True  # left for later, or for another worker
                continue
            free -= 1
        due.setdefault(run_id, []).append((step_id, kind, attempt))
        work.setdefault(run_id, [])
        found.add(run_id)
    for run_id in ready:
        if run_id not in work and run_id not in live:
            if free <= 0:
                more = True
                continue
            free -= 1
        work.setdefault(run_id, [])
        found.add(run_id)
    if free > 0:  # runs waiting for any worker, leased here now (a store that claims apart)
        most = min(free, TICK_RUNS)
        until_us = now_us + driver.lease_us
        versions = tuple(registry.version_of(driver, fid) for fid in fids)
        gated = tuple(driver.gated)  # their runs stay pending until the take admits them
        claimed = driver.store.claim(
            now_us, fids, driver.worker_id, until_us, most, versions, gated
        )
        if claimed is not None:
            more = more or len(claimed) >= most
            driver.claimed.update(claimed)
            for run_id in claimed:  # all taken this round: the claim stayed within room
                work.setdefault(run_id, [])
                found.add(run_id)
    elif driver.store.CLAIMS:
        more = True  # runs may wait that were not claimed for want of room: once there is some
    if flow_due:  # the runs they admit are driven in this round
        admitted, timed_out = flow.fire(driver, flow_due, now_us)
        for run_id in admitted:
            work.setdefault(run_id, [])
        for run_id in timed_out:  # their mail is read this round
            work.setdefault(run_id, [])
            found.add(run_id)
    driver.next_timer_us = nearest if nearest is not None else NEVER
    if driver.plans.timed:  # batches, debounced runs, cron ticks falling due (flow_timed)
        flow_timed.discover(driver, now_us, work)
    stats = driver.stats
    stats["looks"] += 1
    if not found and not flow_due:
        stats["looks_empty"] += 1
    driver.dirty = more
    now = time.monotonic()
    driver.next_poll = now + driver.poll
    if driver.next_chase > now:  # a run left to its chaser: looked for once its grace ends
        driver.next_poll = min(driver.next_poll, driver.next_chase)
    driver.next_chase = float("inf")
    return found
