"""What the engine asks of a store: domain verbs, batch-shaped, and the store's own errors.

A ``Store`` is one database. Reads that stand alone (a run, a listing, discovery) are verbs of
the store; everything a round or a control call writes happens inside one ``Transaction``
(``with store.transaction() as tx:``), committed once. A round's writes are gathered in a
``Batch`` and handed over whole (``commit_round``), so a store writes them in bulk under the
lease fence: if any run of the batch is no longer held by the writer, nothing of it is
written and ``LeaseLost`` is raised. A store never leaks its driver's exceptions for the
cases the engine handles: a lost lease is ``LeaseLost``, a transaction the database aborted to
resolve a conflict is ``WriteConflict``, a database out of reach (for now) ``StoreUnavailable``,
a database that is not ours, damaged or read-only is ``StoreError``; a damaged row is
``rows.CorruptRow`` naming its run.

Rows cross this boundary as plain tuples (the row codec in ``rows`` turns them into history
events): no per-row objects on the hot path. Implementations are siblings (``sqlite.py``);
every statement of one is a named constant at the top of its module.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable, Collection
from typing import Any

from ironflow.history.events import HistoryEvent
from ironflow.runtime.store.batch import Batch, RunRow, TakenRow
from ironflow.runtime.store.errors import LeaseLost, StoreError, StoreUnavailable, WriteConflict
from ironflow.runtime.store.flow_state import FlowStateReads, FlowStateVerbs

# Batch, RunRow, TakenRow (``batch``) and the errors (``errors``) are imported from here too.
__all__ = [
    "Batch",
    "LeaseLost",
    "RunRow",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TakenRow",
    "Transaction",
    "WriteConflict",
]


class Transaction(FlowStateVerbs, abc.ABC):
    """One write transaction: the verbs of a round, of a start or emit, and of control (and
    those of flow control, ``FlowStateVerbs``)."""

    __slots__ = ()

    @abc.abstractmethod
    def __enter__(self) -> Transaction: ...

    @abc.abstractmethod
    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None: ...

    # --- a round --------------------------------------------------------------------------

    @abc.abstractmethod
    def take_runs(
        self,
        run_ids: list[str],
        mail: set[str],
        owner: str,
        until_us: int,
        now_us: int,
        functions: tuple[str, ...],
        versions: tuple[str, ...] = (),
    ) -> list[TakenRow]:
        """Lease the runs of ``run_ids`` that are free (not ended or blocked, of one of
        ``functions``) to ``owner`` until ``until_us``; a pending one becomes running. Runs in
        ``mail`` have their ready flag cleared (their mail is taken next). ``versions``, one
        per function, is recorded as each run's ``code_version``."""

    @abc.abstractmethod
    def histories(
        self, run_ids: list[str], corrupt: dict[str, StoreError] | None = None
    ) -> dict[str, list[HistoryEvent]]:
        """The stored histories of ``run_ids`` (a run without one is absent). A damaged row
        raises ``rows.CorruptRow``; given ``corrupt``, every run with one is left out and put
        there with its error instead."""

    @abc.abstractmethod
    def append_history(self, rows: list[tuple[Any, ...]]) -> None:
        """Append ``(run_id, seq, type, ts_us, body)`` rows."""

    @abc.abstractmethod
    def take_mail(self, run_ids: list[str], warm: list[str]) -> list[tuple[Any, ...]]:
        """Delete and return the mail of ``run_ids`` as ``(pos, run_id, type, body)`` in send
        order, clearing the ready flag of ``warm`` (the others had it cleared when taken)."""

    @abc.abstractmethod
    def take_timers(self, keys: list[tuple[str, str, str]], now_us: int) -> set[tuple[str, str]]:
        """Claim due timers ``(run_id, step_id, kind)`` of runs this round holds: delete those
        still set and due (and, for a ``wait`` timer, its wait: an emit that took the wait
        first delivered the event instead); the ``(run_id, step_id)`` claimed fire."""

    @abc.abstractmethod
    def reserve(self, emits: Collection[str], waits: Collection[str], creates_runs: bool) -> None:
        """Before a round's writes: the event names it will record (``emits``) and wait for,
        and whether it creates runs. A store that locks per event name takes those locks now,
        all at once (nothing to do for a store with one writer at a time)."""

    @abc.abstractmethod
    def fence(self) -> None:
        """Writes for a round follow: a constraint that fails from here on means another
        worker wrote to a run of the batch, and is ``LeaseLost`` (``take_runs`` and
        ``commit_round`` imply it)."""

    @abc.abstractmethod
    def mail_of(self, run_ids: list[str]) -> list[tuple[Any, ...]]:
        """The mail of ``run_ids`` as ``(pos, run_id, type, body)`` in send order, left in
        place (a round reads it before folding, and drops it with ``drop_mail`` when it
        commits: a round that fails in between loses none)."""

    @abc.abstractmethod
    def drop_mail(self, positions: list[int], run_ids: list[str]) -> None:
        """Delete the mail at ``positions`` (read by ``mail_of``) and clear the ready flag of
        those of ``run_ids`` that have no other mail (mail sent since stays, flagged)."""

    @abc.abstractmethod
    def commit_round(self, batch: Batch, owner: str) -> None:
        """Write ``batch`` under the fence: ``LeaseLost`` if a run is not ``owner``'s."""

    @abc.abstractmethod
    def set_timer(self, run_id: str, step_id: str, kind: str, due_us: int, attempt: int) -> None:
        """Set (or move) the timer of step ``step_id``."""

    # --- runs -----------------------------------------------------------------------------

    @abc.abstractmethod
    def create_run(
        self,
        run_id: str,
        function_id: str,
        trigger: str,
        now_us: int,
        parent_run_id: str | None,
        parent_step_id: str | None,
        notify_parent: bool,
    ) -> None:
        """Insert a pending run; events recorded from here on are after its start."""

    @abc.abstractmethod
    def run_function(self, run_id: str) -> str | None:
        """The function id of run ``run_id``, or ``None`` if there is no such run."""

    @abc.abstractmethod
    def find_run(self, run_id: str) -> tuple[Any, ...] | None:
        """``(status, output, error, function_id, parent_run_id, parent_step_id)``."""

    @abc.abstractmethod
    def run_status(self, run_id: str) -> tuple[str, int]:
        """``(status, history length)`` of an existing run."""

    @abc.abstractmethod
    def active_children(self, run_id: str) -> list[str]:
        """The ids of the child runs of ``run_id`` that have not ended."""

    @abc.abstractmethod
    def unstarted(self, run_id: str) -> tuple[Any, ...] | None:
        """``(function_id, trigger, parent_run_id)`` if the run has no history yet."""

    @abc.abstractmethod
    def block(self, run_id: str, error: str, now_us: int) -> str | None:
        """Park the run as blocked with ``error``; its function id, ``None`` if no such run."""

    @abc.abstractmethod
    def cancel_blocked(self, run_id: str, now_us: int) -> None:
        """End a blocked run as cancelled (its ``RunCancelled`` is appended by the caller)."""

    @abc.abstractmethod
    def resume_blocked(self, run_id: str, now_us: int) -> None:
        """Make a blocked run drivable again."""

    @abc.abstractmethod
    def resume_failed(self, run_id: str, now_us: int) -> None:
        """Reopen a failed run (its ``RunResumed`` is appended by the caller)."""

    @abc.abstractmethod
    def link_run(self, run_id: str, source_run_id: str) -> None:
        """Record that run ``run_id`` was made from run ``source_run_id`` (a rerun or fork)."""

    # --- the function registry ------------------------------------------------------------

    @abc.abstractmethod
    def register_function(
        self, function_id: str, triggers: str, settings: str, code_version: str, now_us: int
    ) -> None:
        """Record (or replace: the latest wins) a registration, and move the registry's
        version."""

    @abc.abstractmethod
    def registry_version(self) -> str | None:
        """A token that changes whenever a registration is recorded."""

    @abc.abstractmethod
    def registered(self) -> list[tuple[str, str]]:
        """``(function_id, triggers)`` (a JSON list) of every registered function."""

    # --- mail, events and waits -----------------------------------------------------------

    @abc.abstractmethod
    def send_mail(self, run_id: str, kind: str, ts_us: int, body: str) -> None:
        """Leave mail for a run and flag it ready."""

    @abc.abstractmethod
    def event_started(self, idempotency_key: str) -> str | None:
        """The stored ``started`` list (JSON) of the event recorded under the key."""

    @abc.abstractmethod
    def event_id_of(self, idempotency_key: str) -> str | None:
        """The id of the event recorded under the key, or ``None``."""

    @abc.abstractmethod
    def record_event(
        self,
        event_id: str,
        name: str,
        data: str,
        ts_us: int,
        idempotency_key: str | None,
        traceparent: str | None = None,
    ) -> int:
        """Record an event (with the W3C ``traceparent`` of its emitter's span, if any); its
        position (commit order on every store)."""

    @abc.abstractmethod
    def set_event_started(self, pos: int, started: str) -> None:
        """Remember the runs (JSON list) an event started, for its idempotency key."""

    @abc.abstractmethod
    def wait_paths(self, event_name: str) -> list[str | None]:
        """The distinct match paths of the waits for ``event_name``."""

    @abc.abstractmethod
    def waits_for(
        self, event_name: str, path: str | None, key: str | None
    ) -> list[tuple[str, str, int]]:
        """``(run_id, step_id, seq)`` of the waits for ``event_name`` on ``path`` = ``key``."""

    @abc.abstractmethod
    def deliver(self, run_id: str, step_id: str, event_id: str, ts_us: int, body: str) -> None:
        """Hand an event to a wait: claim the wait (delete its row; if it is gone, its timeout
        fired or another emit took it, and nothing happens), drop its timer, mark the event
        consumed by the run, and send the run the ``WaitMatched`` mail ``body``."""

    @abc.abstractmethod
    def unconsumed_events(self, name: str, after_pos: int, run_id: str) -> list[tuple[Any, ...]]:
        """``(id, data, ts_us)`` of the events ``name`` recorded after ``after_pos`` that the
        run has not consumed, in commit order."""

    @abc.abstractmethod
    def consume(self, run_id: str, event_id: str) -> None:
        """Mark an event consumed by the run."""

    @abc.abstractmethod
    def add_wait(
        self, run_id: str, step_id: str, name: str, path: str | None, key: str | None, seq: int
    ) -> None:
        """Index a wait of the run for ``name`` (matching ``path`` = ``key`` if given)."""

    # --- flow control (``flow_sql.FlowVerbs`` implements these on both stores) --------------
    # flow_lock, flow_queue_head, flow_queued, flow_enqueue, flow_dequeue, flow_set_reason,
    # flow_queue_row, flow_slots_held, flow_add_slot, flow_has_slot, flow_free_slot,
    # flow_starts, flow_add_start, flow_claim_timer, flow_run, flow_end_unstarted: only
    # functions with start gates call them (``ironflow.runtime.flow``).


class Store(FlowStateReads, abc.ABC):
    """One database of runs, history, timers, waits, events and mail (and flow control's
    rows, ``FlowStateReads``)."""

    path: str
    durability: str
    lock: threading.RLock  # serializes this process's use of the store

    @abc.abstractmethod
    def transaction(self) -> Transaction:
        """A write transaction, committed on a clean exit and rolled back otherwise."""

    def take_transaction(self) -> Transaction:
        """The write transaction of a round's take (leases, histories, mail read): its commit
        need not reach the disk by itself, since the round's commit, next, takes it there; a
        crash in between loses leases only, taken again. By default ``transaction()``."""
        return self.transaction()

    @abc.abstractmethod
    def close(self) -> None: ...

    def listen(
        self, callback: Callable[[frozenset[str] | None], None], retry: float
    ) -> Callable[[], None] | None:
        """Call ``callback`` (from a thread of the store's) whenever another transaction may
        have left work (runs created, events recorded, mail sent), until the returned ``stop``
        is called: with the ids of the runs it left work for, or ``None`` if that is not known
        (look everywhere). ``retry`` is the poll interval (how often to reconnect if listening
        fails). ``None`` if the store cannot tell: other processes' news is then seen by
        polling."""
        return None

    @abc.abstractmethod
    def discover(
        self, now_us: int, functions: tuple[str, ...], owner: str, limit: int
    ) -> tuple[list[tuple[Any, ...]], list[str], int | None]:
        """Work for ``owner``: due timers ``(run_id, step_id, kind, attempt)``, runs to
        drive (with mail, new, or orphaned by a dead worker; one may come twice), and the next
        timer after now. Each list holds at most ``limit`` rows, and the look reads about that
        many rows whatever the number of runs waiting (a full list: there may be more). A
        store that ``claim``s leaves new and orphaned runs to it."""

    CLAIMS = False  # whether ``claim`` leases runs (a store that claims sets it)

    def claim(
        self,
        now_us: int,
        functions: tuple[str, ...],
        owner: str,
        until_us: int,
        most: int,
        versions: tuple[str, ...] = (),
        gated: tuple[str, ...] = (),
    ) -> list[str] | None:
        """Lease to ``owner`` (until ``until_us``) up to ``most`` runs of ``functions`` that
        wait for any worker (new, or orphaned by a dead one), skipping those another worker
        is claiming, in one statement that commits: their ids, to take in the round. The
        claim is the take's write (status running, ``versions[i]`` recorded for
        ``functions[i]``; a ``gated`` function's run stays pending, for its take to admit or
        hold). ``None``: this store does not claim apart (``discover`` lists them; SQLite)."""
        return None

    # Reads a round makes while folding, outside any write transaction (a round's commit
    # checks again what a concurrent writer could have changed since).

    @abc.abstractmethod
    def find_run(self, run_id: str) -> tuple[Any, ...] | None:
        """As ``Transaction.find_run``, read outside a transaction."""

    @abc.abstractmethod
    def unconsumed_events(self, name: str, after_pos: int, run_id: str) -> list[tuple[Any, ...]]:
        """As ``Transaction.unconsumed_events``, read outside a transaction."""

    @abc.abstractmethod
    def next_due(self) -> int | None:
        """When the earliest timer falls due (µs), or ``None`` if there is none."""

    @abc.abstractmethod
    def renew_leases(self, run_ids: list[str], owner: str, until_us: int) -> None:
        """Extend ``owner``'s leases of ``run_ids`` to ``until_us``."""

    @abc.abstractmethod
    def release_all(self, owner: str) -> None:
        """Let go of every lease ``owner`` holds."""

    @abc.abstractmethod
    def registration(self, function_id: str) -> tuple[str, str, str] | None:
        """``(triggers, settings, code_version)`` recorded for ``function_id``, or ``None``."""

    @abc.abstractmethod
    def heartbeat(self, owner: str, functions: str, now_us: int, until_us: int) -> None:
        """Record that worker ``owner``, with ``functions`` (JSON: an object of function ids
        to code versions, or a list of ids from an older worker), is live until ``until_us``."""

    @abc.abstractmethod
    def forget_worker(self, owner: str) -> None:
        """Remove ``owner``'s heartbeat (it stopped cleanly)."""

    @abc.abstractmethod
    def live_functions(self, now_us: int) -> list[str] | None:
        """The functions (JSON, as ``heartbeat`` wrote them) of the workers live at
        ``now_us``; ``None`` if this database keeps no heartbeats (a read-only opening of an
        older schema)."""

    @abc.abstractmethod
    def get_run(self, run_id: str) -> RunRow | None:
        """The run's row, or ``None``."""

    @abc.abstractmethod
    def list_runs(
        self, status: str | None, function_id: str | None, limit: int | None
    ) -> list[RunRow]:
        """Runs, newest first."""

    @abc.abstractmethod
    def page_runs(
        self,
        status: str | None,
        function_id: str | None,
        since_us: int | None,
        until_us: int | None,
        after: tuple[int, str] | None,
        limit: int,
    ) -> list[RunRow]:
        """At most ``limit`` runs, newest first (``created_us`` descending, then ``id``),
        created in [``since_us``, ``until_us``) and past ``after`` (the ``(created_us, id)``
        of the last run of the previous page): a seek on an index, never a scan."""

    @abc.abstractmethod
    def count_runs(self, status: str | None, function_id: str | None) -> int:
        """How many runs ``list_runs`` would return without a limit."""

    @abc.abstractmethod
    def recent_events(self, limit: int, before_pos: int | None) -> list[tuple[Any, ...]]:
        """Events newest first, ``(pos, id, name, data, ts_us, started)`` with ``data`` and
        ``started`` (the ids of the runs it started) as JSON text; only those before
        ``before_pos`` when given (the web view's paging, on the primary key)."""

    @abc.abstractmethod
    def event_consumers(self, event_ids: list[str]) -> list[tuple[str, str]]:
        """``(event_id, run_id)`` of each run whose wait one of ``event_ids`` satisfied."""

    @abc.abstractmethod
    def workers(self, now_us: int) -> list[tuple[Any, ...]]:
        """The workers live at ``now_us``: ``(id, functions, seen_us, until_us)``, with
        ``functions`` the JSON their heartbeat wrote; empty if the database keeps none."""

    @abc.abstractmethod
    def history(self, run_id: str) -> tuple[tuple[Any, ...], list[HistoryEvent]] | None:
        """``((function_id, trigger, parent_run_id), stored history)`` of a run, read
        consistently, or ``None`` if there is no such run."""
