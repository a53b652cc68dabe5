"""Flow rows that fall due: batch timeouts, debounced runs, cron ticks, deferred arrivals.

A worker with functions that have such rows (``FlowCache.timed``) looks for due ones when it
looks for other work (discovery), and starts what they stand for in one short transaction:

| kind       | due when                        | the worker                                  |
|------------|---------------------------------|---------------------------------------------|
| `batch`    | `timeout` after its first event | takes the row, starts a run with the batch  |
| `debounce` | `period` after the last event   | takes the row, starts a run with that event |
| `cron`     | the schedule's next tick        | moves it past now, starts one run           |
| `arrival`  | at once (an emitter lacked code)| takes the row, judges it (flow_arrival)     |

Taking a row is deleting it, moving one is an update that checks the due time read: on
either store exactly one worker wins each, so a batch, a burst or a tick makes one run
however many workers look. Of the ticks missed while no worker ran only the latest runs; a
schedule's first due tick is the first after it was first registered.

**Time zones.** A schedule is read in its IANA zone (``cronsim``): a tick in the hour a
spring-forward skips runs once, at the first instant after the gap (``30 2 * * *`` in
Europe/Paris on the last Sunday of March runs at 03:00 CEST); in the hour a fall-back repeats,
a tick with a fixed hour runs once, at its first occurrence (``30 2 * * *`` runs at 02:30
CEST, not again at 02:30 CET), while a wildcard hour (``*/30 * * * *``) runs in both.
"""

from __future__ import annotations

import datetime as _dt
import json
import zoneinfo
from typing import TYPE_CHECKING

from cronsim import CronSim

from ironflow.commands.function import Function
from ironflow.runtime import flow_arrival
from ironflow.runtime.faults import ENABLED as _FAULTS
from ironflow.runtime.faults import crash_point
from ironflow.runtime.flow_plan import cron_key
from ironflow.runtime.live import Input, trigger
from ironflow.runtime.store import Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

PAGE = 100  # due rows handled per discovery at most
PRUNE_EVERY_US = 600 * 1_000_000  # expired windows are deleted this often


def discover(driver: Driver, now_us: int, work: dict[str, list[Input]]) -> None:
    """Start what the due flow rows of this engine's functions stand for; add the runs
    started to ``work``, and bring the driver's next look forward to the next due row."""
    cache = driver.plans
    store = driver.store
    if now_us >= cache.next_prune_us:
        cache.next_prune_us = now_us + PRUNE_EVERY_US
        store.state_prune(now_us)
    due, nearest = store.state_due(now_us, cache.timed, PAGE)
    if nearest is not None:
        driver.next_timer_us = min(driver.next_timer_us, nearest)
    if not due:
        return
    started: list[str] = []
    with store.transaction() as tx:
        for function_id, kind, key, due_us in due:
            started += FIRE[kind](driver, tx, function_id, key, due_us, now_us)
    if len(due) >= PAGE:
        driver.dirty = True  # more may be due: look again next round
    with store.lock:
        for run_id in started:
            if run_id in driver.fresh:  # driven in this round, not again next round
                driver.fresh.discard(run_id)
                work.setdefault(run_id, [])


def _batch(
    driver: Driver, tx: Transaction, function_id: str, key: str, due_us: int, now_us: int
) -> list[str]:
    taken = tx.state_take(function_id, "batch", key, now_us)
    if taken is None:  # another worker started it, or a full batch did
        return []
    trigger_text = flow_arrival.batch_trigger(json.loads(taken[1]))
    return flow_arrival.schedule(driver, tx, function_id, trigger_text, now_us)


def _debounce(
    driver: Driver, tx: Transaction, function_id: str, key: str, due_us: int, now_us: int
) -> list[str]:
    taken = tx.state_take(function_id, "debounce", key, now_us)
    if taken is None:  # another worker started it, or a new event moved it later
        return []
    return flow_arrival.schedule(driver, tx, function_id, taken[1], now_us)


def _arrival(
    driver: Driver, tx: Transaction, function_id: str, key: str, due_us: int, now_us: int
) -> list[str]:
    # One judge at a time across workers, in emit order; taking the row is part of the same
    # commit as the run (or skip) it decides, so a crash before it commits leaves the row
    # for the next look, and a second worker finds it gone: judged exactly once.
    tx.state_lock(serialize=True)
    taken = tx.state_take(function_id, "arrival", key, now_us)
    if taken is None:  # another worker judged it
        return []
    plan = driver.plans.local.get(function_id)
    if plan is None:  # this worker's code has no options for it now: the event starts a run
        started = flow_arrival.schedule(driver, tx, function_id, taken[1], now_us)
    else:
        body = json.loads(taken[1])
        trace = body.get("traceparent")  # the emitter's, kept with the event (flow_arrival)
        event = rows.event_from_body(body)
        try:
            flow_arrival.check_keys(plan, event)
        except ValueError as exc:  # the emitter is gone: the event is listed with the reason
            tx.record_skip(event.id, function_id, "key_error", str(exc), now_us)
            return []
        started = flow_arrival.judge(driver, tx, plan, event, now_us, trace)
    if started:  # the event says which runs it started, as one its emit judged would
        tx.add_event_started(int(key), started)
    if _FAULTS:
        crash_point("arrival-judge")  # judged, nothing of it committed
    return started


def _cron(
    driver: Driver, tx: Transaction, function_id: str, key: str, due_us: int, now_us: int
) -> list[str]:
    row = tx.state_get(function_id, "cron", key)
    if row is None or row[0] != due_us:
        return []  # another worker fired it (or the schedule changed) since discovery
    schedule = json.loads(row[3])
    expr, tz = schedule["expr"], schedule["tz"]
    tick = last_tick(expr, tz, now_us)
    after = next_tick(expr, tz, now_us)
    if not tx.state_move(function_id, "cron", key, due_us, after, row[3]):
        return []
    data = {"schedule": expr, "tz": tz, "tick": tick.isoformat()}
    stored = trigger("cron", data, now_us)
    return flow_arrival.schedule(driver, tx, function_id, stored, now_us)


FIRE = {"batch": _batch, "debounce": _debounce, "arrival": _arrival, "cron": _cron}


def last_tick(expr: str, tz: str, now_us: int) -> _dt.datetime:
    """The schedule's latest tick at or before ``now_us``, in its zone."""
    zone = zoneinfo.ZoneInfo(tz)
    at = rows.from_us(now_us + 1).astimezone(zone)  # cronsim excludes its start
    found: _dt.datetime = next(CronSim(expr, at, reverse=True))
    return found


def next_tick(expr: str, tz: str, now_us: int) -> int:
    """The schedule's first tick after ``now_us`` (µs)."""
    zone = zoneinfo.ZoneInfo(tz)
    found: _dt.datetime = next(CronSim(expr, rows.from_us(now_us).astimezone(zone)))
    return rows.to_us(found.astimezone(_dt.UTC))


def sync_crons(tx: Transaction, function: Function, now_us: int) -> None:
    """Make the function's schedules in the database its latest registration's: a new one is
    due at its first tick after now (earlier ticks never run), a kept one keeps its place, a
    dropped one goes."""
    wanted = {cron_key(cron): cron for cron in function.crons}
    existing = set(tx.state_keys(function.id, "cron"))
    for key in existing - set(wanted):
        tx.state_drop(function.id, "cron", key)
    for key, cron in wanted.items():
        if key in existing:
            continue
        body = json.dumps({"expr": cron.expr, "tz": cron.tz})
        due = next_tick(cron.expr, cron.tz, now_us)
        tx.state_put(function.id, "cron", key, due, now_us, None, body)
