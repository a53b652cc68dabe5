"""Leases: taking runs (and rebuilding their interpreters), renewing and letting go.

A run is driven by the worker holding its lease; every write of a round is fenced on it (see
``Transaction.commit_round``). A round takes the runs it drives and does not hold yet
(``take``, in the round's first short transaction), renews what it holds a third of a lease
before it runs out (``renew``), and a worker that stops lets all go (``release_all``). A run
taken is rebuilt here (``rebuild``, with no transaction open: replay runs workflow code): its
history read in bulk, its ``RunStarted`` made at its first drive, its interpreter fed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ironflow.history.events import HistoryEvent, RunResumed
from ironflow.interpreter import Interpreter
from ironflow.runtime import flow, registry
from ironflow.runtime.live import Live, gap, run_started
from ironflow.runtime.store import LeaseLost, StoreError, Transaction, rows
from ironflow.runtime.store.base import TakenRow
from ironflow.runtime.telemetry import stored_trace

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

_RUNS_LOG = logging.getLogger("ironflow.runs")
RUNS_NAMED = 10  # a warning names at most this many runs


def acquire_all(
    driver: Driver,
    tx: Transaction,
    run_ids: list[str],
    now_us: int,
    mail: set[str],
    broken: dict[str, BaseException],
) -> int:
    """Take the leases of ``run_ids`` that are free and rebuild their interpreters, all in
    ``tx``; return how many of them start here (their ``RunStarted`` is written now).

    A round does the same in two parts (``take`` in its first transaction, ``rebuild`` with
    no transaction open); this whole form is what the benchmarks time as the cold load."""
    taken, histories, unwritten = take(driver, tx, run_ids, now_us, mail, broken)
    tx.append_history(unwritten)
    rebuild(driver, taken, histories, broken)
    return len(unwritten)


def take(
    driver: Driver,
    tx: Transaction,
    run_ids: list[str],
    now_us: int,
    mail: set[str],
    broken: dict[str, BaseException],
) -> tuple[list[TakenRow], dict[str, list[HistoryEvent]], list[tuple[Any, ...]]]:
    """Take the leases of ``run_ids`` that are free and read their histories: the runs
    taken, their histories, and the ``RunStarted`` rows of runs not started yet (written by
    the caller; their events already end those histories).

    Runs in ``mail`` have their ``ready`` flag cleared in the same statement. Runs that
    cannot be rebuilt (a damaged row) go to ``broken``, all of them."""
    taken = tx.take_runs(
        run_ids,
        mail,
        driver.worker_id,
        now_us + driver.lease_us,
        now_us,
        fids := tuple(driver.functions),
        tuple(registry.version_of(driver, fid) for fid in fids),
    )
    stats = driver.stats
    stats["claims"] += len(run_ids)
    stats["claims_won"] += len(taken)
    if not taken:
        return taken, {}, []
    ids = [row[0] for row in taken]
    corrupt: dict[str, StoreError] = {}  # runs with a damaged row: blocked, not driven
    stored = tx.histories(ids, corrupt)
    histories = {run_id: stored.get(run_id, []) for run_id in ids}
    unwritten = []
    for row in taken:
        run_id, function_id, _, parent_run, _, _, _, trigger = row
        if not histories[run_id] and run_id not in corrupt:
            try:
                started = run_started(run_id, function_id, trigger, parent_run)
            except rows.CorruptRow as bad:  # a damaged trigger
                corrupt[run_id] = bad.error
                continue
            histories[run_id].append(started)
            unwritten.append((run_id, *rows.encode(started)))
    for run_id in corrupt:
        histories.pop(run_id, None)
    broken.update(corrupt)
    if driver.gated and unwritten:  # runs starting now: a flow-control limit may hold them
        held = flow.admit_taken(driver, tx, taken, unwritten, now_us)
        if held:
            taken = [row for row in taken if row[0] not in held]
            unwritten = [row for row in unwritten if row[0] not in held]
            for run_id in held:
                histories.pop(run_id, None)
    if driver.finishing and unwritten:  # runs leaving pending now: timeouts.finish starts
        flow.finish_timers(driver, tx, taken, unwritten, now_us)
    return taken, histories, unwritten


def rebuild(
    driver: Driver,
    taken: list[TakenRow],
    histories: dict[str, list[HistoryEvent]],
    broken: dict[str, BaseException],
) -> None:
    """Make the interpreters of the runs ``take`` took and feed them their histories: the
    workflows' code runs here (replayed), so no transaction is open. A run that cannot be
    rebuilt (a gap in its history, a divergence) goes to ``broken`` and gets none."""
    functions, live_runs, stats = driver.functions, driver.live, driver.stats
    for row in taken:
        run_id, function_id, event_pos, parent_run, parent_step, notify, status, stored = row
        history = histories.get(run_id)
        if history is None:  # damaged
            continue
        if history[-1].seq != len(history) - 1:
            broken[run_id] = gap(run_id, history)
            continue
        stats["runs_taken"] += 1
        function = functions[function_id]
        interpreter = Interpreter(function)
        live = Live(
            run_id,
            function,
            interpreter,
            event_pos,
            parent_run,
            parent_step,
            bool(notify),
            status,
            trace=stored_trace(stored),
        )
        # Resumed and not driven since: what the failure abandoned is indexed again.
        live.resumed = type(history[-1]) is RunResumed
        live_runs[run_id] = live
        driver.folds += 1
        driver.folding = live  # watched: a replay runs the workflow's code
        try:
            live.decision = interpreter.feed(history)
        except Exception as exc:
            broken[run_id] = exc
            del live_runs[run_id]
        finally:
            driver.folding = None


def renew(driver: Driver, now_us: int) -> None:
    """Extend the leases of the runs held, once a third of a lease has passed."""
    if now_us < driver.next_renewal_us or not driver.live:
        return
    # The runs held are the live ones (a parked or ended run lets its lease go).
    driver.store.renew_leases(list(driver.live), driver.worker_id, now_us + driver.lease_us)
    driver.next_renewal_us = now_us + driver.lease_us // 3


def release_all(driver: Driver) -> None:
    """Let go of every run this worker holds (a graceful stop)."""
    driver.store.release_all(driver.worker_id)
    registry.forget(driver)
    driver.live.clear()
    driver.claimed.clear()
    driver.in_flight.clear()


def report_lost(worker_id: str, lost: LeaseLost, dropped: list[str]) -> None:
    """One WARNING on ``ironflow.runs``: a round was refused because a lease it needed moved
    (a worker cut off or stalled for longer than a lease); nothing of it was written, and this
    worker forgot its runs (whoever holds them now drives them)."""
    held = list(lost.run_ids) or dropped  # SQLite's fence cannot say which run moved
    named = ", ".join(held[:RUNS_NAMED]) + (
        f" and {len(held) - RUNS_NAMED} more" if len(held) > RUNS_NAMED else ""
    )
    _RUNS_LOG.warning(
        "worker %s lost the lease of run(s) %s to another worker: its round of %d run(s) was "
        "refused, nothing of it written, and those runs are forgotten here (%s)",
        worker_id,
        named,
        len(dropped),
        lost,
        extra={"worker_id": worker_id, "run_ids": held},
    )
