"""The runtime: the embedded SQLite engine, its worker and clocks."""

from ironflow.runtime.clock import SystemClock
from ironflow.runtime.engine import Engine
from ironflow.runtime.models import STATUSES, Run, RunError
from ironflow.runtime.store import SQLiteStore, StoreError

__all__ = ["STATUSES", "Engine", "Run", "RunError", "SQLiteStore", "StoreError", "SystemClock"]
