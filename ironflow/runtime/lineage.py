"""Rerun and fork: a new run made from a recorded one, linked back to it.

``rerun`` starts a new run of the same function with the same triggering event, from scratch.

``fork`` starts a new run whose history begins with the source run's history up to the point
where step ``from_step`` was first scheduled: the steps recorded there are memoized (the
interpreter replays their recorded results; their bodies never run again), and the run goes on
from there with the current code. The copy ends with a ``RunResumed`` naming the source, which
makes the first worker to take the run index again whatever the copied part left pending
(timers, waits, steps scheduled and not finished), exactly as after a resume. A child run
started in the copied part and not finished there is left out (its ``ChildStarted`` with it),
so the fork starts a child of its own rather than waiting on the source's.

The new run's ``ctx.run_id`` is its own: values drawn from ``ctx.uuid()``/``ctx.random()``
differ from the source's, and if they fed a step's arguments before ``from_step`` the replay
of the copied part diverges and the fork is blocked (the docs say so).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ironflow.commands import kinds
from ironflow.history.events import (
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    CommandScheduled,
    CompensationScheduled,
    HistoryEvent,
    RunResumed,
    RunStarted,
)
from ironflow.runtime import registry
from ironflow.runtime.ids import new_id
from ironflow.runtime.live import create_run
from ironflow.runtime.store import rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

STEPS_NAMED = 20  # an unknown from_step's error lists at most this many step ids


def source_of(driver: Driver, run_id: str) -> tuple[str, str, list[HistoryEvent]]:
    """``(function_id, trigger, history)`` of run ``run_id``; ``KeyError`` if there is none."""
    found = driver.store.history(run_id)
    if found is None:
        raise KeyError(f"no run with id {run_id!r}")
    (function_id, trigger, _parent), history = found
    return function_id, trigger, history


def rerun(driver: Driver, run_id: str) -> str:
    """Start a new run of ``run_id``'s function with its stored trigger; the new run's id."""
    function_id, trigger, _ = source_of(driver, run_id)
    registry.function_id(driver, function_id)
    now_us = driver.now_us()
    new = new_id()
    with driver.store.transaction() as tx:
        if not create_run(driver, tx, new, function_id, trigger, now_us):
            return _holder(driver, tx, function_id, trigger, new)
        tx.link_run(new, run_id)
    return new


def fork(driver: Driver, run_id: str, from_step: str) -> str:
    """Start a run that keeps ``run_id``'s history up to where ``from_step`` was first
    scheduled; the new run's id."""
    function_id, trigger, history = source_of(driver, run_id)
    registry.function_id(driver, function_id)
    if type(from_step) is not str or not from_step:
        raise ValueError(
            f"from_step must be a step id (as `ironflow runs show` prints), got {from_step!r}"
        )
    cut = _first_scheduled(history, from_step)
    if cut is None:
        raise ValueError(_unknown_step(run_id, history, from_step))
    now, now_us = driver.now()
    new = new_id()
    first: Any = history[0]
    kept = _without_unfinished_children(history[1:cut])
    events: list[HistoryEvent] = [
        RunStarted(0, first.ts, new, function_id, first.event, None),
        *(attrs.evolve(event, seq=seq) for seq, event in enumerate(kept, 1)),
    ]
    reason = f"forked from run {run_id} before step {from_step}"
    events.append(RunResumed(seq=len(events), ts=now, reason=reason))
    with driver.store.transaction() as tx:
        if not create_run(driver, tx, new, function_id, trigger, now_us):
            return _holder(driver, tx, function_id, trigger, new)
        tx.append_history([(new, *rows.encode(event)) for event in events])
        tx.link_run(new, run_id)
    return new


def _holder(driver: Driver, tx: Any, function_id: str, trigger: str, new: str) -> str:
    """A singleton "skip" made no run: the run of its key not ended stands for it (as for
    ``Engine.start``)."""
    from ironflow.runtime import flow  # it imports live, as this module does

    return flow.singleton_holder(driver, tx, function_id, trigger) or new


def _first_scheduled(history: list[HistoryEvent], step_id: str) -> int | None:
    for at, event in enumerate(history):
        cls = type(event)
        if (cls is CommandScheduled or cls is CompensationScheduled) and event.id == step_id:  # type: ignore[union-attr]
            return at
    return None


def _unknown_step(run_id: str, history: list[HistoryEvent], step_id: str) -> str:
    ids: list[str] = []
    for event in history:
        if type(event) in (CommandScheduled, CompensationScheduled):
            sid = event.id  # type: ignore[union-attr]
            if sid not in ids:
                ids.append(sid)
    if not ids:
        return (
            f"run {run_id!r} has scheduled no steps yet: there is no step {step_id!r} to fork from"
        )
    shown = ", ".join(repr(sid) for sid in ids[:STEPS_NAMED])
    more = f" and {len(ids) - STEPS_NAMED} more" if len(ids) > STEPS_NAMED else ""
    return (
        f"run {run_id!r} has no step {step_id!r}; its steps are {shown}{more} "
        f"(ids as `ironflow runs show` prints them)"
    )


def _without_unfinished_children(events: list[HistoryEvent]) -> list[HistoryEvent]:
    """``events`` less the ``ChildStarted`` of invoked children that did not finish within
    them (an ``invoke_async``'s is its result: kept)."""
    finished: set[str] = set()
    invoked: set[str] = set()
    for event in events:
        cls = type(event)
        if cls is ChildCompleted or cls is ChildFailed:
            finished.add(event.child_run_id)  # type: ignore[union-attr]
        elif cls is CommandScheduled and event.kind == kinds.INVOKE:  # type: ignore[union-attr]
            invoked.add(event.id)  # type: ignore[union-attr]
    return [
        event
        for event in events
        if type(event) is not ChildStarted
        or event.id not in invoked
        or event.child_run_id in finished
    ]
