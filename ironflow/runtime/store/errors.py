"""The store's own errors: what a store raises for the cases the engine handles, instead of
its driver's exceptions (``StoreError``, the base, is public: ``ironflow.StoreError``)."""

from __future__ import annotations

from ironflow.errors import StoreError

__all__ = ["LeaseLost", "StoreError", "StoreUnavailable", "WriteConflict"]


class LeaseLost(StoreError):
    """A round's write found a run it drives held by another worker: nothing was written.

    ``run_ids``: the runs found held elsewhere, when the store can say (PostgreSQL's fence)."""

    def __init__(self, message: str, run_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.run_ids = run_ids


class WriteConflict(StoreError):
    """The database aborted a write transaction to resolve a conflict with a concurrent one (a
    deadlock, a serialization failure): nothing of it was written, and it can be tried again."""


class StoreUnavailable(StoreError):
    """The database cannot be reached now (its connection was closed, the server is down):
    what was under way failed whole, nothing of it written, and the next use connects again.
    A serving worker carries on; a caller may try again."""
