"""Which functions have flow control this engine applies when events arrive or times come,
read from its own code and from the function registry in the database.

An emit may start functions this process has no code for (the CLI, the HTTP API): their
options come from the registry's settings (``commands.flow_settings``). A key given as a
callable cannot cross processes; an emitter without the code records such an event as an
*arrival* for a worker that has it to judge (``flow_timed``). Local code wins over the
registry for this engine's own functions.

The cache is read again only when the registry's version moved (the emit path reads that
version anyway): a function without options costs an emit one comparison and a dict test.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import attrs

from ironflow.commands.flow import (
    Batch,
    CancelOn,
    Cron,
    Debounce,
    Flow,
    Key,
    RateLimit,
    Singleton,
)
from ironflow.commands.function import Function

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver
    from ironflow.runtime.store import Transaction


class Unresolved:
    """A callable key known only by name (its code is in another process)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, event: Any) -> Any:
        raise RuntimeError(f"key function {self.name} is not loaded in this process")


def is_unresolved(key: Key | None) -> bool:
    """Whether ``key`` is a callable this process does not have."""
    return type(key) is Unresolved


@attrs.frozen
class Plan:
    """What the runtime applies for one function: its options, and whether judging an event
    (its at-arrival options, or its ``singleton`` key) needs code this process lacks
    (``needs_code``): then an emit defers the event to a worker that has it."""

    function_id: str
    flow: Flow
    needs_code: bool

    @property
    def on_arrival(self) -> bool:
        """Idempotency, rate limit, batching or debounce apply when its events arrive."""
        f = self.flow
        return (
            f.idempotency is not None
            or f.rate_limit is not None
            or f.batch_events is not None
            or f.debounce is not None
        )


@attrs.define
class FlowCache:
    """The plans an emit or a run creation consults, and the registry version they match."""

    version: str | None = None
    arrivals: dict[str, Plan] = attrs.Factory(dict)  # functions with at-arrival options
    cancels: dict[str, Plan] = attrs.Factory(dict)  # functions with cancel_on
    # Other processes' functions with ``singleton``: a run this process creates for one is
    # judged here from the registry's settings (a path key) or at take (a callable key).
    singletons: dict[str, Plan] = attrs.Factory(dict)
    local: dict[str, Plan] = attrs.Factory(dict)  # this engine's functions with options
    # This engine's functions whose flow rows fall due (batches, debounce, cron, arrivals
    # judged here): discovery looks at flow_state for them only.
    timed: tuple[str, ...] = ()
    next_prune_us: int = 0


def plan_of(function: Function) -> Plan | None:
    """The plan of one of this engine's functions, or ``None`` if it has no options."""
    if function.flow is None:
        return None
    return Plan(function.id, function.flow, False)


def add_local(driver: Driver, function: Function) -> None:
    """Take a function registered with this engine into account (its own code wins)."""
    cache = driver.plans
    plan = plan_of(function)
    if plan is not None:
        cache.local[function.id] = plan
        _index(cache, plan)
    if function.crons or (plan is not None and (plan.on_arrival or _deferred(plan.flow))):
        cache.timed = (*cache.timed, function.id)


def _deferred(flow: Flow) -> bool:
    """Whether an emitter without the code defers this function's events (to be judged by
    this worker): its ``singleton`` key is a callable (at-arrival options count already)."""
    key = flow.singleton.key if flow.singleton is not None else None
    return key is not None and not isinstance(key, str)


def _index(cache: FlowCache, plan: Plan) -> None:
    if plan.on_arrival or plan.needs_code:
        cache.arrivals[plan.function_id] = plan
    else:
        cache.arrivals.pop(plan.function_id, None)
    if plan.flow.cancel_on:
        cache.cancels[plan.function_id] = plan
    else:
        cache.cancels.pop(plan.function_id, None)


def refresh(driver: Driver, tx: Transaction) -> FlowCache:
    """The cache, read again from the registry's settings if the registry moved since
    (``driver.registry.version``, as the emit path just read it)."""
    cache = driver.plans
    version = driver.registry.version
    if version == cache.version:
        return cache
    cache.version = version
    cache.arrivals.clear()
    cache.cancels.clear()
    cache.singletons.clear()
    for function_id, text in tx.registered_settings():
        local = cache.local.get(function_id)
        if function_id in driver.functions:
            if local is not None:
                _index(cache, local)
            continue
        plan = from_settings(function_id, text)
        if plan is not None:
            _index(cache, plan)
            if plan.flow.singleton is not None:
                cache.singletons[function_id] = plan
    for plan in cache.local.values():  # registered here but not (yet) in the database
        _index(cache, plan)
    return cache


def from_settings(function_id: str, text: str) -> Plan | None:
    """A function's plan from its registry settings (JSON); ``None`` without options, or if
    they cannot be read (a damaged row must not stop emits: that function gets none)."""
    try:
        settings = json.loads(text)
        found = settings.get("flow") if isinstance(settings, dict) else None
        if not found:
            return None
        unresolved: list[bool] = []
        flow = Flow(
            rate_limit=_limited(RateLimit, found.get("rate_limit"), unresolved),
            debounce=_debounce(found.get("debounce"), unresolved),
            cancel_on=[CancelOn(c["event"], c.get("match")) for c in found.get("cancel_on", ())],
            batch_events=_batch(found.get("batch_events"), unresolved),
            idempotency=_key(found["idempotency"]["key"], unresolved)
            if found.get("idempotency")
            else None,
            singleton=_singleton(found.get("singleton"), unresolved),
        )
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    if flow.is_empty():
        return None
    return Plan(function_id, flow, bool(unresolved))


def _key(setting: Any, unresolved: list[bool]) -> Key | None:
    if setting is None or isinstance(setting, str):
        return setting
    unresolved.append(True)
    return Unresolved(str(setting.get("callable", "?")))


def _limited(cls: type[RateLimit], found: Any, unresolved: list[bool]) -> RateLimit | None:
    if not found:
        return None
    return cls(found["limit"], found["period_s"], _key(found.get("key"), unresolved))


def _debounce(found: Any, unresolved: list[bool]) -> Debounce | None:
    if not found:
        return None
    return Debounce(found["period_s"], _key(found.get("key"), unresolved), found.get("max_wait_s"))


def _singleton(found: Any, unresolved: list[bool]) -> Singleton | None:
    if not found:
        return None
    return Singleton(_key(found.get("key"), unresolved), found.get("mode", "skip"))


def _batch(found: Any, unresolved: list[bool]) -> Batch | None:
    if not found:
        return None
    return Batch(found["max_size"], found["timeout_s"], _key(found.get("key"), unresolved))


def cron_key(cron: Cron) -> str:
    """The flow row key of a schedule: its expression and zone."""
    return json.dumps([cron.expr, cron.tz])
