"""Which database a command uses, and opening it without changing it when only reading.

Read-only commands (``runs list/show/export``, ``replay``) never create a database and never
write to one: they open it through the store's read-only opening (``open_store(url,
read_only=True)``, which for SQLite leaves not even ``-wal``/``-shm`` side files behind).

Commands that write check the file the same read-only way before the engine opens it
read-write: the engine's store switches a file to WAL mode as it opens it, which would change a
SQLite file that turns out not to be an ironflow database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ironflow.cli.errors import CLIError, one_line
from ironflow.runtime import Engine, StoreError
from ironflow.runtime.store import (
    READABLE_VERSIONS,
    SCHEMA_VERSION,
    is_postgres_url,
    open_store,
    parse_url,
    probe,
)

DEFAULT_DB = "ironflow.db"
SQLITE_HEADER = b"SQLite format 3\x00"


def db_path(url: str | None) -> str:
    """The SQLite path ``--db`` names (default ``ironflow.db``), or its PostgreSQL URL;
    ``CLIError`` if unusable."""
    try:
        return parse_url(url if url is not None else DEFAULT_DB)
    except ValueError as exc:
        raise CLIError(one_line(exc)) from None


def check_database(path: str, *, writable: bool = False) -> None:
    """Fail with ``CLIError`` unless ``path`` is an existing ironflow database; reads only.

    ``writable=True`` (a command that may create the database) also accepts an empty file,
    which the engine initializes like a new one.
    """
    if is_postgres_url(path):
        return  # the store checks it is ours as it opens (read-only: creating nothing)
    if path == ":memory:":
        raise CLIError("--db :memory: holds nothing between commands; give a database file")
    if not os.path.exists(path):
        raise CLIError(f"database {path} does not exist")
    if os.path.isdir(path):
        raise CLIError(f"{path} is a directory, not an ironflow database")
    try:
        with open(path, "rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not header and writable:
        return
    if header != SQLITE_HEADER:
        raise CLIError(f"{path} is not an ironflow database (not even a SQLite file)")
    try:
        tables, version = probe(path)
    except StoreError as exc:  # "cannot open ...", "... is not a usable ironflow database"
        raise CLIError(one_line(exc)) from None
    if "ironflow_meta" not in tables:
        if not tables and writable:
            return
        raise CLIError(f"{path} is not an ironflow database (a SQLite file without ours)")
    if version not in {str(v) for v in READABLE_VERSIONS}:
        raise CLIError(
            f"{path} has ironflow schema version {version}; this ironflow reads version "
            f"{SCHEMA_VERSION}"
        )


def check_writable(path: str, *, create: bool) -> None:
    """Before opening ``path`` read-write: it is ours, or ``create`` allows a new one there."""
    if is_postgres_url(path):
        return  # the store refuses a foreign or newer schema untouched as it opens
    if create and (path == ":memory:" or not os.path.exists(path)):
        return
    check_database(path, writable=create)


@contextlib.contextmanager
def reading(url: str | None) -> Iterator[Engine]:
    """An engine on the existing database ``url`` names that can only read it."""
    path = db_path(url)
    check_database(path)
    try:
        engine = Engine(open_store(path, read_only=True))
    except StoreError as exc:  # "cannot open <path>: ..."
        raise CLIError(one_line(exc)) from None
    try:
        yield engine
    finally:
        engine.close()


def open_engine(path: str, *, create: bool, **settings: Any) -> Engine:
    """An engine that may write ``path`` (created only if ``create``); ``CLIError`` if not."""
    check_writable(path, create=create)
    try:
        return Engine(path, **settings)
    except StoreError as exc:  # names the database and says what is wrong with it
        raise CLIError(one_line(exc)) from None
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot open {shown(path)}: {one_line(exc)}") from None


def shown(path: str) -> str:
    """``path`` as messages show it: a PostgreSQL URL without its password."""
    if not is_postgres_url(path):
        return path
    from ironflow.runtime.store.postgres_schema import redact

    return redact(path)


def same_database(a: str, b: str) -> bool:
    if ":memory:" in (a, b):
        return False
    if is_postgres_url(a) or is_postgres_url(b):
        return shown(a) == shown(b)  # a store's path is its URL without the password
    return os.path.realpath(a) == os.path.realpath(b)
