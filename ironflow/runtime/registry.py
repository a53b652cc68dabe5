"""The function registry in the database, and which functions some live worker has.

``register()`` records a function's id, triggers, settings and code version in the database
(the latest registration of an id wins), so that an emit from any process (one without the
code, the CLI without ``--app``) starts every registered function whose trigger matches, and
``start`` works for any registered id. A run is still driven only by a worker that has its
function's code (discovery and ``take_runs`` ask for this engine's function ids).

An emit reads the registry through a cache keyed by the registry's version (a counter in
``ironflow_meta`` that every registration moves): one small read per emit transaction, the
whole table only when it changed.

Workers record a heartbeat (their id, their function ids, live until when) at the discovery
cadence, a third of a lease apart, and remove it when they stop cleanly; a pending run of a
function that no live worker has says so (``Run.waiting_for``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import types
from typing import TYPE_CHECKING, Any

import attrs

from ironflow.commands.flow_settings import flow_settings
from ironflow.commands.function import Function, triggered_by
from ironflow.commands.names import check_function_id
from ironflow.runtime import flow, flow_plan, flow_timed
from ironflow.runtime.store import Store, StoreError, Transaction, rows

if TYPE_CHECKING:
    from ironflow.runtime.driver import Driver


# --- code versions and settings -----------------------------------------------------------------


def code_version(function: Function) -> str:
    """A short hash of the workflow's code: the same for the same source in every process,
    another when its body changes (bytecode, constants, nested functions, names used)."""
    code = getattr(function.fn, "__code__", None)
    digest = hashlib.sha256()
    if isinstance(code, types.CodeType):
        _feed(digest, code)
    else:  # a callable without its own code object: its name is all there is to hash
        digest.update(repr(getattr(function.fn, "__qualname__", function.fn)).encode())
    return digest.hexdigest()[:12]


def _feed(digest: Any, code: types.CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr((code.co_names, code.co_varnames, code.co_freevars)).encode())
    for const in code.co_consts:
        _const(digest, const)


def _const(digest: Any, const: Any) -> None:
    if isinstance(const, types.CodeType):
        _feed(digest, const)
    elif isinstance(const, frozenset):
        # A set's order follows string hashes, which differ from process to process.
        digest.update(b"frozenset")
        for text in sorted(repr(item) for item in const):
            digest.update(text.encode())
    elif isinstance(const, tuple):
        digest.update(b"tuple")
        for item in const:
            _const(digest, item)
    else:
        digest.update(repr(const).encode())
    digest.update(b"\0")


def version_of(driver: Driver, function_id: str) -> str:
    """This engine's code version of one of its functions (computed once)."""
    found = driver.versions.get(function_id)
    if found is None:  # put in ``functions`` without register() (a test's shortcut)
        found = driver.versions[function_id] = code_version(driver.functions[function_id])
    return found


def settings(function: Function) -> dict[str, Any]:
    """What the registry records besides the triggers: the retry policy, and the cron
    schedules and flow-control options when there are any (so a function without them
    records what it did before)."""
    retry = function.retry
    found: dict[str, Any] = {
        "retry": None
        if retry is None
        else {
            "max_attempts": retry.max_attempts,
            "initial_delay_s": retry.initial_delay.total_seconds(),
            "backoff": retry.backoff,
            "max_delay_s": retry.max_delay.total_seconds(),
            "jitter": retry.jitter,
        }
    }
    if function.crons:
        found["crons"] = [{"expr": cron.expr, "tz": cron.tz} for cron in function.crons]
    if function.flow is not None:
        found["flow"] = flow_settings(function.flow)
    return found


def record(store: Store, function: Function, version: str, now_us: int) -> None:
    """Record a registration in the database (the latest registration of an id wins).

    Nothing is written when the database already holds exactly this registration (a worker
    restarted with the same code): opening an app writes nothing then, and emitters keep
    their cached registry."""
    wanted = (rows.dumps(list(function.on)), rows.dumps_sorted(settings(function)), version)
    if store.registration(function.id) == wanted:
        return
    with store.transaction() as tx:
        tx.register_function(function.id, *wanted, now_us)
        flow_timed.sync_crons(tx, function, now_us)  # schedules: first registration counts


def add(driver: Driver, fn: Function) -> Function:
    """Make ``fn`` runnable by the engine of ``driver`` and record it in the database;
    ``ValueError`` if another function has its id here."""
    check_function_id(fn.id)  # a Function made without @ironflow.function has no check
    existing = driver.functions.get(fn.id)
    if existing is not None and existing != fn:
        # Replacing it would silently drop the first one's triggers.
        raise ValueError(
            f"function id {fn.id!r} is already registered with this engine (by "
            f"{getattr(existing.fn, '__qualname__', existing.fn)!r}); give the function "
            f"another id, or use a new Engine to replace it"
        )
    if existing is not None:
        return fn  # the same function again changes nothing
    # Recorded in the database too: emits and starts from any process see it, and the
    # latest registration of an id sets its triggers and settings.
    version = code_version(fn)
    record(driver.store, fn, version, driver.now_us())
    driver.functions[fn.id] = fn
    if flow.gated(fn.flow):
        driver.gated[fn.id] = fn.flow  # type: ignore[assignment]
    timeouts = fn.flow.timeouts if fn.flow is not None else None
    if timeouts is not None and timeouts.finish is not None:
        driver.finishing[fn.id] = timeouts.finish
    driver.versions[fn.id] = version
    flow_plan.add_local(driver, fn)
    driver.next_heartbeat_us = 0  # a live worker says at once it has it now
    return fn


def function_id(driver: Driver, function: Any) -> str:
    """The id of ``function`` (an id or a declared function) if this engine has it or the
    database registers it; ``ValueError`` naming the registered ones if neither does."""
    fid = function.id if isinstance(function, Function) else function
    if type(fid) is not str or not fid.strip():
        raise ValueError(f"function must be a function id or a declared function, got {function!r}")
    if fid not in driver.functions:  # registered by another process, perhaps
        with driver.store.transaction() as tx:
            why = unknown(driver, tx, fid)
        if why is not None:
            raise ValueError(why)
    return fid


# --- reading the registry -----------------------------------------------------------------------


@attrs.define
class Registry:
    """The registry as last read, and the version it was read at."""

    version: str | None = None
    triggers: dict[str, tuple[str, ...]] = attrs.Factory(dict)


def current(driver: Driver, tx: Transaction) -> dict[str, tuple[str, ...]]:
    """Every registered function's triggers, read again only if a registration moved the
    registry's version since the last read."""
    cache = driver.registry
    version = tx.registry_version()
    if version is None or version != cache.version:
        found: dict[str, tuple[str, ...]] = {}
        for function_id, triggers in tx.registered():
            try:
                found[function_id] = tuple(json.loads(triggers))
            except (TypeError, ValueError):
                # One damaged row must not stop every emit: that function starts by no event.
                found[function_id] = ()
        driver.registry = cache = Registry(version, found)
    return cache.triggers


def triggered(driver: Driver, tx: Transaction, name: str) -> list[str]:
    """The ids of the registered functions an event named ``name`` starts, in id order."""
    return [
        function_id
        for function_id, patterns in sorted(current(driver, tx).items())
        if triggered_by(patterns, name)
    ]


def unknown(driver: Driver, tx: Transaction, function_id: str) -> str | None:
    """Why ``function_id`` cannot be started (registered neither here nor in the database),
    or ``None`` if it can."""
    if function_id in driver.functions:
        return None
    known = current(driver, tx)
    if function_id in known:
        return None
    names = ", ".join(sorted({*known, *driver.functions})) or "none"
    return f"unknown function {function_id!r}; registered functions: {names}"


def describe(store: Store, tx: Transaction, now_us: int) -> list[dict[str, Any]]:
    """Every registered function: id, triggers, settings, code version, and whether a live
    worker has it (``None`` if the database keeps no heartbeats)."""
    live = live_functions(store, now_us)
    found = []
    for function_id, _ in sorted(tx.registered()):
        registration = store.registration(function_id)
        triggers, settings_, version = registration or ("[]", "{}", None)
        found.append(
            {
                "id": function_id,
                "triggers": _json_or(triggers, []),
                "settings": _json_or(settings_, {}),
                "code_version": version,
                "live": None if live is None else function_id in live,
            }
        )
    return found


def _json_or(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except (TypeError, ValueError):  # a damaged row: shown empty, not an error for all
        return default


# --- heartbeats ---------------------------------------------------------------------------------


def heartbeat(driver: Driver, now_us: int) -> None:
    """Say this worker is live, with its functions, a third of a lease apart (called at the
    discovery cadence: no thread of its own)."""
    if now_us < driver.next_heartbeat_us:
        return
    # Each function with its code version: the web view's functions page shows which code
    # each worker runs (a rolling deploy); ``live_functions`` reads the keys as before.
    versions = {function_id: version_of(driver, function_id) for function_id in driver.functions}
    driver.store.heartbeat(
        driver.worker_id, rows.dumps_sorted(versions), now_us, now_us + driver.lease_us
    )
    driver.next_heartbeat_us = now_us + driver.lease_us // 3
    driver.heartbeats = True
    driver.peers = peers(driver, now_us)


def peers(driver: Driver, now_us: int) -> tuple[str, ...]:
    """The live workers that share a function with this one, itself included, sorted."""
    mine = set(driver.functions)
    found = {driver.worker_id}
    for worker_id, functions, *_ in driver.store.workers(now_us):
        try:
            theirs = json.loads(functions)
        except ValueError:
            continue  # a damaged row: that worker is not counted on to chase runs
        if isinstance(theirs, dict | list) and not mine.isdisjoint(theirs):
            found.add(worker_id)
    return tuple(sorted(found))


def forget(driver: Driver) -> None:
    """Remove this worker's heartbeat (a clean stop); its functions are no longer its."""
    if not driver.heartbeats:
        return
    driver.heartbeats = False
    driver.next_heartbeat_us = 0
    # If the database is gone, the row expires by itself a lease after its last beat.
    with contextlib.suppress(StoreError):
        driver.store.forget_worker(driver.worker_id)


def live_functions(store: Store, now_us: int) -> set[str] | None:
    """The ids of the functions some live worker has; ``None`` if the database keeps no
    heartbeats."""
    found = store.live_functions(now_us)
    if found is None:
        return None
    live: set[str] = set()
    for text in found:
        try:
            live.update(json.loads(text))
        except (TypeError, ValueError):
            continue
    return live


def waiting_for(status: str, function_id: str, live: set[str] | None) -> str | None:
    """Why a run is not moving, when the database can say: a pending run of a function that
    no live worker has."""
    if status != "pending" or live is None or function_id in live:
        return None
    return f"no live worker has function {function_id!r}"
