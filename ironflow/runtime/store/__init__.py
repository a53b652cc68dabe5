"""Stores: where runs, their histories, timers, waits, events and mail live.

``base`` holds the interface the engine drives (``Store``, ``Transaction``), ``batch`` the rows
and the ``Batch`` a round hands over, ``errors`` the store's errors (``base`` exports them all);
``sqlite`` is the SQLite store, ``sqlite_tx`` its write transaction, ``sqlite_round`` a round's
verbs and batch write, ``sqlite_schema`` its schema (opening, checking, migrating) and
``sqlite_migrations`` the steps of each version; ``postgres`` is the PostgreSQL store (psycopg
3, imported only when a ``postgresql://`` URL is opened), ``postgres_tx`` its write transaction,
``postgres_commit`` how it begins and commits, ``postgres_round`` a round's commit as one call
of a function of the schema, ``postgres_locks`` the advisory stripes a transaction takes,
``postgres_schema`` its schema; ``rows`` is the row codec every store shares. ``open_store``
picks a store by URL.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ironflow.runtime.store.base import (
    Batch,
    LeaseLost,
    Store,
    StoreError,
    StoreUnavailable,
    Transaction,
    WriteConflict,
)
from ironflow.runtime.store.sqlite import (
    DURABILITY,
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    TERMINAL,
    ReadOnlySQLiteStore,
    SQLiteStore,
    SQLiteTransaction,
    probe,
    unusable,
)

POSTGRES_SCHEMES = ("postgresql", "postgres")

__all__ = [
    "DURABILITY",
    "READABLE_VERSIONS",
    "SCHEMA_VERSION",
    "TERMINAL",
    "Batch",
    "LeaseLost",
    "SQLiteStore",
    "SQLiteTransaction",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "Transaction",
    "WriteConflict",
    "is_postgres_url",
    "open_store",
    "parse_url",
    "probe",
    "unusable",
]


def open_store(url: Any = None, *, read_only: bool = False, durability: str = "full") -> Store:
    """The store ``url`` names (see ``parse_url``). ``read_only=True`` opens an existing
    database without writing to it, not even to migrate it: ``transaction()`` is refused."""
    path = parse_url(url)
    if is_postgres_url(path):
        from ironflow.runtime.store.postgres import PostgresStore, ReadOnlyPostgresStore

        if read_only:
            return ReadOnlyPostgresStore(path)
        return PostgresStore(path, durability=durability)
    if read_only:
        return ReadOnlySQLiteStore(path)
    return SQLiteStore(path, durability=durability)


def is_postgres_url(store: object) -> bool:
    """Whether ``store`` is a ``postgresql://`` or ``postgres://`` URL."""
    return isinstance(store, str) and store.split("://", 1)[0].lower() in POSTGRES_SCHEMES


def parse_url(store: Any) -> str:
    """The SQLite path a store argument names (a path, ``sqlite:///path`` or ``:memory:``), or
    a PostgreSQL URL as it is."""
    if store is None:
        return "ironflow.db"
    if isinstance(store, Path):
        return str(store)
    if not isinstance(store, str) or not store.strip():
        raise ValueError(f"store must be a path, 'sqlite:///path.db' or ':memory:', got {store!r}")
    if store.startswith("sqlite://"):
        path = store[len("sqlite://") :]
        if path.startswith("/"):
            path = path[1:]  # sqlite:///rel.db is relative, sqlite:////abs.db absolute
        if not path:
            raise ValueError(f"store URL {store!r} names no file; use 'sqlite:///path.db'")
        return path
    if is_postgres_url(store):
        return store
    if "://" in store:
        scheme = store.split("://", 1)[0]
        raise ValueError(
            f"store URL {store!r}: the {scheme!r} backend is not available; "
            f"use a SQLite path, 'sqlite:///path.db', ':memory:' or 'postgresql://...'"
        )
    return store
