"""The advisory stripes a PostgreSQL write transaction takes (why: see ``postgres``), and what
an aborted transaction becomes.

**No deadlocks on stripes.** A transaction takes the stripes it needs in one statement, in key
order, each once and in the strongest mode it needs. Taking more later could deadlock: a round
that registered a wait (its name's stripe shared) and then publishes (a stripe exclusive, every
other one shared) waits for an emit that holds a lower stripe and waits for the round's first
one. So a round declares every name it will wait for and publish, and whether it creates runs,
before its first write (``reserve``); the verbs then find their stripes held. An emit or a run
creation outside a round takes its stripes in its first statement, as one such set.

**Aborted transactions.** Should PostgreSQL still abort one (a deadlock it detected, a
serialization failure), nothing of it was written: that is ``WriteConflict``, a ``StoreError``
naming what happened, and a round that meets it is driven again (``settle``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

from ironflow.runtime.store.base import WriteConflict
from ironflow.runtime.store.postgres_schema import STRIPES, first_line, stripe

# Keys come sorted, and unnest yields them in array order: every transaction takes its locks in
# one global order.
LOCK_STRIPES = (
    "SELECT count(CASE WHEN x THEN pg_advisory_xact_lock(%s, k) "
    "ELSE pg_advisory_xact_lock_shared(%s, k) END) FROM unnest(%s::int[], %s::bool[]) AS l(k, x)"
)
ALL_STRIPES = range(STRIPES)


def lock_stripes_sql(lock_class: int, keys: list[int], modes: list[bool]) -> str:
    """What ``LOCK_STRIPES`` takes, as a statement without parameters (sent with ``BEGIN``, so
    parsed and planned each time: a list of calls, the cheapest to plan), in key order (a
    target list is computed left to right)."""
    return "SELECT " + ", ".join(
        f"pg_advisory_xact_lock{'' if exclusive else '_shared'}({int(lock_class)}, {int(key)})"
        for key, exclusive in zip(keys, modes, strict=True)
    )


class Stripes:
    """The stripe verbs of ``PostgresTransaction`` (``shared``/``exclusive``: the stripes it
    holds)."""

    __slots__ = ()

    shared: set[int]
    exclusive: set[int]
    conn: Any
    store: Any

    def lock(self, exclusive: Iterable[int] = (), shared: Iterable[int] = ()) -> None:
        """Take the stripes not held yet, in one statement, in key order: sent with ``BEGIN``
        if it is the transaction's first (a run's start: one exchange fewer)."""
        keys, modes = self.wanted(exclusive, shared)
        if keys:
            lock_class = self.store.lock_class
            if not self.first(lock_stripes_sql(lock_class, keys, modes)):
                self.conn.execute(LOCK_STRIPES, (lock_class, lock_class, keys, modes))
            self.took(keys, modes)

    def first(self, statement: str) -> bool:
        """Send ``statement`` (no parameters) with ``BEGIN`` if nothing was sent or held back
        yet, at the next statement; whether it will be."""
        raise NotImplementedError

    def wanted(
        self, exclusive: Iterable[int], shared: Iterable[int]
    ) -> tuple[list[int], list[bool]]:
        """The stripes not held yet, in key order, and whether each is wanted exclusive."""
        wanted: dict[int, bool] = {}
        for key in exclusive:
            if key not in self.exclusive:
                wanted[key] = True
        for key in shared:
            if key not in self.shared and key not in self.exclusive:
                wanted.setdefault(key, False)
        keys = sorted(wanted)
        return keys, [wanted[k] for k in keys]

    def took(self, keys: list[int], modes: list[bool]) -> None:
        for key, exclusive in zip(keys, modes, strict=True):
            (self.exclusive if exclusive else self.shared).add(key)

    def reserve(self, emits: Collection[str], waits: Collection[str], creates_runs: bool) -> None:
        """Every stripe this round will need, at once: its publishes' exclusive (and every
        stripe shared: a publish may start runs), its waits' shared."""
        everything = bool(emits) or creates_runs
        shared = ALL_STRIPES if everything else {stripe(name) for name in waits}
        self.lock({stripe(name) for name in emits}, shared)


def conflict(exc: BaseException, url: str) -> WriteConflict | None:
    """The ``WriteConflict`` a driver error means, if it means one."""
    import psycopg

    if not isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure):
        return None
    return WriteConflict(
        f"PostgreSQL aborted a write transaction on {url}: {first_line(exc)}; "
        "nothing of it was written; try it again"
    )
