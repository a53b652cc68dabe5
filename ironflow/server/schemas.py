"""The API's request bodies and answers: frozen attrs classes, so that Litestar writes the
OpenAPI document from the types. A run is served as ``Engine.get_run`` gives it (times in
ISO 8601 UTC), the same fields as ``ironflow runs show --json``."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs

from ironflow.runtime.models import Run


@attrs.frozen
class EmitBody:
    """``POST /api/events``: emit event ``name`` with ``data``."""

    name: str
    data: Any = None
    idempotency_key: str | None = None


@attrs.frozen
class Emitted:
    event_id: str
    run_ids: list[str]


@attrs.frozen
class StartBody:
    """``POST /api/functions/{id}/runs``: start a run with ``data`` (``run_id`` is idempotent)."""

    data: Any = None
    run_id: str | None = None


@attrs.frozen
class Started:
    run_id: str


@attrs.frozen
class CancelBody:
    """``POST /api/runs/{id}/cancel``; both fields optional (the body may be left out)."""

    compensate: bool = False
    reason: str = ""


@attrs.frozen
class ForkBody:
    """``POST /api/runs/{id}/fork``: a step id as ``ironflow runs show`` prints it."""

    from_step: str


@attrs.frozen
class RunErrorOut:
    type: str
    message: str
    traceback: str | None = None


@attrs.frozen
class RunOut:
    """A run as ``Engine.get_run`` gives it."""

    id: str
    function: str
    status: str
    output: Any = None
    error: RunErrorOut | None = None
    created_at: str | None = None
    updated_at: str | None = None
    ended_at: str | None = None
    parent_run_id: str | None = None
    code_version: str | None = None
    waiting_for: str | None = None
    source_run_id: str | None = None


@attrs.frozen
class RunsPage:
    """Newest first; ``next_cursor`` asks for the next page, ``None`` on the last."""

    runs: list[RunOut]
    next_cursor: str | None = None


@attrs.frozen
class FunctionOut:
    """A registered function: its triggers, settings (retry, flow control), code version,
    and whether some live worker has its code."""

    id: str
    triggers: list[Any]
    settings: dict[str, Any]
    code_version: str | None = None
    live: bool | None = None


@attrs.frozen
class Functions:
    functions: list[FunctionOut]


@attrs.frozen
class Health:
    status: str


def iso(ts: _dt.datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(_dt.UTC).isoformat()


def run_out(run: Run) -> RunOut:
    error = run.error
    return RunOut(
        id=run.id,
        function=run.function,
        status=run.status,
        output=run.output,
        error=None if error is None else RunErrorOut(error.type, error.message, error.traceback),
        created_at=iso(run.created_at),
        updated_at=iso(run.updated_at),
        ended_at=iso(run.ended_at),
        parent_run_id=run.parent_run_id,
        code_version=run.code_version,
        waiting_for=run.waiting_for,
        source_run_id=getattr(run, "source_run_id", None),
    )
