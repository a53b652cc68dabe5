"""What the engine reports about runs."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs

STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled", "blocked")
TERMINAL = ("completed", "failed", "cancelled")

# What ``Engine.stats`` counts, each from 0 as this engine commits. runs_taken counts leases
# taken (a run parked and taken again counts again); runs_started/_ended/_failed/_blocked
# count runs, each once. The cost of sharing work with other workers (benchmarks and tests
# read them; see ``discovery``): looks in the database for work, looks that found nothing to
# do, runs asked for by a claim, and the runs those claims got.
STATS = (
    "runs_taken",
    "steps_executed",
    "commits",
    "runs_started",
    "runs_ended",
    "runs_failed",
    "runs_blocked",
    "looks",
    "looks_empty",
    "claims",
    "claims_won",
)


@attrs.frozen
class RunError:
    """Why a run failed: the exception class (module-qualified unless builtin) and message."""

    type: str
    message: str
    traceback: str | None = attrs.field(default=None, repr=False)


@attrs.frozen
class Run:
    """A run as stored: ``status`` is one of ``STATUSES``."""

    id: str
    function: str
    status: str
    output: Any = None
    error: RunError | None = None
    created_at: _dt.datetime | None = None
    updated_at: _dt.datetime | None = None
    ended_at: _dt.datetime | None = None
    parent_run_id: str | None = None
    # The short hash of the workflow code that last drove the run (``None`` before a worker
    # took it); a rolling deploy shows here which code recorded which run.
    code_version: str | None = None
    # Why the run does not move, when the engine can tell (a pending run whose function no
    # live worker has); ``None`` otherwise.
    waiting_for: str | None = None
    # The run this one was made from by ``Engine.rerun`` or ``Engine.fork``; ``None`` otherwise.
    source_run_id: str | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@attrs.frozen
class RunPage:
    """One page of ``Engine.list_runs_page``: ``next_cursor`` asks for the next page and is
    ``None`` on the last."""

    runs: list[Run]
    next_cursor: str | None = None
