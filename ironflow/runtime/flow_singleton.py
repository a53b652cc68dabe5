"""``singleton``: at most one run (per key) not ended at a time, applied when a run is
scheduled, in the transaction that creates it, under the flow lock (exact across workers).

- A process with the function's code applies it as it creates the run (``singleton``).
- A process without it (``ironflow emit`` from the CLI, a bare ``Engine(url)``) applies the
  registry's settings when the key is a dotted path, the same way, on the same rows.
- A key that is a callable needs the code: an emit defers the event to a worker that has it
  (``flow_arrival.defer``; the worker creates the run, if any, and applies singleton then),
  and a run made at once (``engine.start``, ``rerun``, ``fork``, a child) gets a mark
  (``SINGLETON_MARK``, a flow_state row keyed by its id) that the worker taking it reads:
  ``at_take`` applies singleton there, before the run starts (``skip``: the run ends
  ``cancelled``, unstarted, naming the run that stands).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from ironflow.commands.event import Event
from ironflow.commands.flow import Key, Singleton, key_of
from ironflow.runtime.flow_plan import is_unresolved
from ironflow.runtime.store import Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver

# A flow_state row (keyed by run id) on a run created where its singleton key, a callable,
# could not be evaluated: the worker that takes it applies singleton then.
SINGLETON_MARK = "singleton"
NULL_KEY = "null"


def key_text(key: Key | None, event: Event) -> str:
    try:
        value = key_of(key, event)
    except Exception:  # a key function that fails puts the event in the shared bucket
        value = None
    try:
        return rows.dumps_sorted(value)
    except (TypeError, ValueError):
        return rows.dumps_sorted(repr(value))


def singleton(
    driver: Driver,
    tx: Transaction,
    run_id: str,
    fid: str,
    trigger: str,
    now_us: int,
    emitted: bool = True,
    option: Singleton | None = None,
) -> bool:
    """Apply ``singleton`` to a run about to be created: whether to create it (``skip``
    refuses it while another run of its key has not ended, and an ``emitted`` triggering
    event is listed as skipped; ``cancel`` cancels that run). ``option``: the function's
    setting when this process lacks its code (from the registry); a callable key it cannot
    evaluate leaves a mark for the worker that takes the run (``admit_taken``)."""
    if option is None:
        option = driver.gated[fid].singleton
        if option is None:
            return True
    elif is_unresolved(option.key):
        tx.state_put(fid, SINGLETON_MARK, run_id, None, now_us, None, "")
        return True
    event = rows.event_from_body(json.loads(trigger))
    key = key_text(option.key, event)
    holder = _hold(driver, tx, option, fid, key, run_id, now_us)
    if holder is None:
        return True
    if emitted:  # engine.start() returns the holder instead: no event to list
        detail = f"singleton: run {holder}{for_key(key)} has not ended"
        tx.record_skip(event.id, fid, "singleton", detail, now_us)
    return False


def _hold(
    driver: Driver,
    tx: Transaction,
    option: Singleton,
    fid: str,
    key: str,
    run_id: str,
    now_us: int,
) -> str | None:
    """Make ``run_id`` the holder of singleton ``key``; ``None`` if it is, else (``skip``)
    the run not ended that holds it (``cancel`` cancels that run instead)."""
    tx.flow_lock(fid, "singleton:" + key)  # type: ignore[attr-defined]
    holder: str | None = tx.flow_singleton(fid, key)  # type: ignore[attr-defined]
    if holder is not None and holder != run_id:
        if option.mode == "skip":
            return holder
        from ironflow.runtime import control  # imports this module

        control.cancel_in(driver, tx, holder, False, f"singleton: replaced by run {run_id}", now_us)
    tx.flow_set_singleton(fid, key, run_id)  # type: ignore[attr-defined]
    return None


def at_take(
    driver: Driver, tx: Transaction, run_id: str, fid: str, trigger: str, now_us: int
) -> bool:
    """Apply ``singleton`` to a run just taken that was created where its callable key could
    not be evaluated (marked then); whether it goes on (``skip`` ends it unstarted,
    cancelled, naming the run that stands)."""
    option = driver.gated[fid].singleton
    assert option is not None
    if tx.state_get(fid, SINGLETON_MARK, run_id) is None:  # applied where it was created
        return True
    tx.state_drop(fid, SINGLETON_MARK, run_id)
    key = key_text(option.key, rows.event_from_body(json.loads(trigger)))
    holder = _hold(driver, tx, option, fid, key, run_id, now_us)
    if holder is None:
        return True
    from ironflow.runtime.flow import cancel_unstarted  # it imports this module

    tx.flow_untake(run_id)  # type: ignore[attr-defined]
    reason = f"singleton: run {holder}{for_key(key)} has not ended"
    cancel_unstarted(driver, tx, run_id, reason, now_us)
    return False


def singleton_holder(driver: Driver, tx: Transaction, fid: str, trigger: str) -> str | None:
    """The run holding the singleton key of a run that ``trigger`` would start."""
    flow = driver.gated.get(fid)
    if flow is None:  # another process's function: its registry settings
        plan = driver.plans.singletons.get(fid)
        flow = plan.flow if plan is not None else None
    option = flow.singleton if flow is not None else None
    if option is None or is_unresolved(option.key):
        return None
    key = key_text(option.key, rows.event_from_body(json.loads(trigger)))
    return tx.flow_singleton(fid, key)  # type: ignore[attr-defined,no-any-return]


def for_key(key: str) -> str:
    return "" if key == NULL_KEY else f" for key {json.loads(key)!r}"
