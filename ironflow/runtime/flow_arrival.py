"""Flow control when an event arrives: idempotency, rate limit, batching, then debounce.

In the emit's transaction (or, for a function keyed by code the emitter lacks, in the
transaction of a worker that has it: ``defer`` records the event as an *arrival*), in the
contract's order:

1. ``idempotency``: a key seen in the last 24 h starts nothing (recorded as a skip);
2. ``rate_limit``: at most ``limit`` events pass per sliding window of ``period`` (per key);
   the rest start nothing (recorded as a skip; the event itself is recorded and can satisfy
   waits like any other);
3. ``batch_events``: the event joins its key's open batch; a full batch starts its run now,
   one whose ``timeout`` passes is started by a worker (``flow_timed``);
4. ``debounce``: the event replaces its key's pending one and moves its due time to
   ``period`` from now (capped at ``max_wait`` from the first); a worker starts the run
   when it falls due (``flow_timed``).

An event that passes starts its run through ``schedule``, the one place flow control creates
runs (later gates, such as singleton, see every run it schedules). Keys are stored as the
canonical JSON of their value (``None`` for a missing field: one shared bucket).

An event kept for later (an arrival, a batch, a debounced burst) is kept with the emitter's
trace context (``traceparent``, as stored in its events row): the run it starts, whenever and
wherever, joins the emitter's trace (a batch's run, its first event's).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from ironflow.commands.event import Event
from ironflow.commands.flow import Key, key_of
from ironflow.runtime.ids import new_id
from ironflow.runtime.live import create_run
from ironflow.runtime.store import rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver
    from ironflow.runtime.flow_plan import Plan
    from ironflow.runtime.store import Transaction

DAY_US = 24 * 3600 * 1_000_000  # idempotency keys are kept a day
US = 1_000_000


def arrive(
    driver: Driver,
    tx: Transaction,
    plan: Plan,
    event: Event,
    pos: int,
    now_us: int,
    trace: str | None = None,
) -> list[str]:
    """Apply ``plan``'s at-arrival options to ``event`` (recorded at ``pos``, emitted in the
    trace context ``trace``); the runs it started now."""
    if plan.needs_code:
        defer(tx, plan.function_id, event, pos, now_us, trace)
        return []
    return judge(driver, tx, plan, event, now_us, trace)


def defer(
    tx: Transaction, function_id: str, event: Event, pos: int, now_us: int, trace: str | None
) -> None:
    """Leave the event for a worker with the function's code to judge (due now, in order)."""
    body = rows.dumps(traced_body(event, trace))
    tx.state_put(function_id, "arrival", f"{pos:020d}", now_us, now_us, None, body)


def traced_body(event: Event, trace: str | None) -> dict[str, Any]:
    """The stored form of ``event`` (a run's trigger, a kept event), with its emitter's trace
    context under ``traceparent`` when it has one."""
    body = rows.event_body(event)
    if trace is not None:
        body["traceparent"] = trace
    return body


def judge(
    driver: Driver,
    tx: Transaction,
    plan: Plan,
    event: Event,
    now_us: int,
    trace: str | None = None,
) -> list[str]:
    """Idempotency, rate limit, batching and debounce, in that order (see the module)."""
    flow, fid = plan.flow, plan.function_id
    idem_key = rate_key = None
    if flow.idempotency is not None:
        idem_key = key_text(flow.idempotency, event, fid, "idempotency")
        row = tx.state_get(fid, "idempotency", idem_key)
        if row is not None and row[2] > now_us:
            detail = (
                f"idempotency key {idem_key} was seen at {rows.from_us(row[1]).isoformat()} "
                f"(event {row[3]}); a duplicate within 24h starts nothing"
            )
            tx.record_skip(event.id, fid, "idempotency", detail, now_us)
            return []
    times: list[int] = []
    rate = flow.rate_limit
    if rate is not None:
        rate_key = key_text(rate.key, event, fid, "rate_limit")
        period_us = int(rate.period.total_seconds() * US)
        row = tx.state_get(fid, "rate_limit", rate_key)
        if row is not None:
            times = [t for t in json.loads(row[3]) if t > now_us - period_us]
        if len(times) >= rate.limit:
            free = rows.from_us(times[0] + period_us).isoformat()
            detail = (
                f"rate limit of {rate.limit} per {rate.period.in_words()} reached for key "
                f"{rate_key}; the next event passes from {free}"
            )
            tx.record_skip(event.id, fid, "rate_limit", detail, now_us)
            return []
        times.append(now_us)
        tx.state_put(
            fid, "rate_limit", rate_key, None, times[0], now_us + period_us, rows.dumps(times)
        )
    if idem_key is not None:
        tx.state_put(fid, "idempotency", idem_key, None, now_us, now_us + DAY_US, event.id)
    body = traced_body(event, trace)
    if flow.batch_events is not None:
        return add_to_batch(driver, tx, plan, event, body, now_us)
    if flow.debounce is not None:
        return debounce(driver, tx, plan, event, body, now_us)
    return schedule(driver, tx, fid, rows.dumps(body), now_us)


def add_to_batch(
    driver: Driver, tx: Transaction, plan: Plan, event: Event, body: dict[str, Any], now_us: int
) -> list[str]:
    """Add ``event`` to its key's batch; start the batch's run if that fills it."""
    batch, fid = plan.flow.batch_events, plan.function_id
    assert batch is not None
    key = key_text(batch.key, event, fid, "batch_events")
    started: list[str] = []
    row = tx.state_get(fid, "batch", key)
    bodies: list[Any] = []
    if row is not None:
        if row[0] <= now_us:  # its timeout passed and no worker started it yet: now
            tx.state_drop(fid, "batch", key)
            started += schedule(driver, tx, fid, batch_trigger(json.loads(row[3])), now_us)
            row = None
        else:
            bodies = json.loads(row[3])
    bodies.append(body)
    if len(bodies) >= batch.max_size:
        if row is not None:
            tx.state_drop(fid, "batch", key)
        return started + schedule(driver, tx, fid, batch_trigger(bodies), now_us)
    due_us = row[0] if row is not None else now_us + int(batch.timeout.total_seconds() * US)
    first_us = row[1] if row is not None else now_us
    tx.state_put(fid, "batch", key, due_us, first_us, None, rows.dumps(bodies))
    driver.next_timer_us = min(driver.next_timer_us, due_us)
    return started


def debounce(
    driver: Driver, tx: Transaction, plan: Plan, event: Event, body: dict[str, Any], now_us: int
) -> list[str]:
    """Make ``event`` its key's pending event, due ``period`` from now (capped by
    ``max_wait`` from the first of the burst)."""
    d, fid = plan.flow.debounce, plan.function_id
    assert d is not None
    key = key_text(d.key, event, fid, "debounce")
    started: list[str] = []
    row = tx.state_get(fid, "debounce", key)
    if row is not None and row[0] <= now_us:
        # Due and not started yet (no worker ran since): that burst ended; this one begins.
        tx.state_drop(fid, "debounce", key)
        started += schedule(driver, tx, fid, row[3], now_us)
        row = None
    first_us = row[1] if row is not None else now_us
    due_us = now_us + int(d.period.total_seconds() * US)
    if d.max_wait is not None:
        due_us = min(due_us, first_us + int(d.max_wait.total_seconds() * US))
    tx.state_put(fid, "debounce", key, due_us, first_us, None, rows.dumps(body))
    driver.next_timer_us = min(driver.next_timer_us, due_us)
    return started


def schedule(
    driver: Driver, tx: Transaction, function_id: str, trigger: str, now_us: int
) -> list[str]:
    """Create the run flow control decided on, with ``trigger`` (the stored triggering event);
    its id, in a list."""
    run_id = new_id()
    made: Any = create_run(driver, tx, run_id, function_id, trigger, now_us)
    # A gate applied when a run is scheduled (singleton "skip") may make none: False.
    return [] if made is False else [run_id]


def batch_trigger(bodies: list[Any]) -> str:
    """The stored trigger of a batch's run: its first event (and its trace context), with
    the whole batch beside."""
    first = dict(bodies[0])
    first["batch"] = bodies
    return rows.dumps(first)


def check_keys(plan: Plan, event: Event) -> None:
    """Evaluate every at-arrival key of ``plan`` for ``event`` before anything is written:
    ``ValueError`` (as ``key_text``) if a key function fails."""
    f, fid = plan.flow, plan.function_id
    for option, key in (
        ("idempotency", f.idempotency),
        ("rate_limit", f.rate_limit.key if f.rate_limit is not None else None),
        ("batch_events", f.batch_events.key if f.batch_events is not None else None),
        ("debounce", f.debounce.key if f.debounce is not None else None),
    ):
        if key is not None:
            key_text(key, event, fid, option)


def key_text(key: Key | None, event: Event, function_id: str, option: str) -> str:
    """The canonical text of ``key``'s value for ``event``; ``ValueError`` naming the function
    and option if a key function raises or gives no JSON value."""
    try:
        return rows.dumps_sorted(key_of(key, event))
    except Exception as exc:
        raise ValueError(
            f"the {option} key of function {function_id!r} failed for event {event.name!r} "
            f"({event.id}): {type(exc).__name__}: {exc}; a key function must return a JSON "
            f"value for every event"
        ) from exc
