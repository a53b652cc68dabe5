"""What crosses the store boundary in a round: the rows a round reads (plain tuples, no
per-row objects on the hot path) and the ``Batch`` of writes it hands over whole."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Batch", "RunRow", "TakenRow"]

# (id, function_id, status, output, error, created_us, updated_us, ended_us, parent_run_id,
# code_version, source_run_id)
RunRow = tuple[Any, ...]
# (run_id, function_id, event_pos, parent_run_id, parent_step_id, notify_parent, status,
# trigger): a run whose lease was just taken.
TakenRow = tuple[Any, ...]


@attrs.define
class Batch:
    """What one driving transaction writes, gathered so that it is written in bulk.

    The store reads the first block of fields; ``jobs``, ``parked``, ``finished`` and
    ``failed`` are the driver's bookkeeping of the same round (one object per round)."""

    history: list[tuple[Any, ...]] = attrs.Factory(list)  # (run_id, seq, type, ts_us, body)
    running: list[tuple[Any, ...]] = attrs.Factory(list)  # (updated_us, run_id)
    # Runs that stay running: their row is not rewritten (the history says how far they
    # are), only their lease is checked.
    fenced: list[str] = attrs.Factory(list)
    waiting: list[tuple[Any, ...]] = attrs.Factory(list)  # (updated_us, run_id)
    # (status, output, error, updated_us, ended_us, run_id)
    ended: list[tuple[Any, ...]] = attrs.Factory(list)
    notify: list[tuple[Any, ...]] = attrs.Factory(list)  # mail (run_id, type, ts_us, body)
    timers_done: list[tuple[str, str]] = attrs.Factory(list)
    waits_done: list[tuple[str, str]] = attrs.Factory(list)
    jobs: list[Any] = attrs.Factory(list)
    parked: list[str] = attrs.Factory(list)
    finished: list[str] = attrs.Factory(list)  # their timers, waits and mail go too
    failed: list[tuple[str, str, BaseException | None]] = attrs.Factory(list)
