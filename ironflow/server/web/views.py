"""What the web view's pages show, as JSON-ready dicts: read from the engine, never written.

The run page's steps come from the same fold of the history as ``ironflow runs show``
(``ironflow.cli.render.timeline``), plus what a page has room for and a terminal has not:
every attempt with its error and traceback, a blocked run's recorded-vs-current diff, and
the child runs to link. The events page reads recent events and the runs each one started
or woke; the functions page the workers alive now and the code version each one runs.

Nothing here builds HTML: the page's script puts every value into the page as text, so
event data, step results and errors cannot inject markup.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ironflow.cli.render import iso, run_json, timeline
from ironflow.history.codec import converter
from ironflow.history.events import (
    HistoryEvent,
    RetryScheduled,
    RunStarted,
    StepCompleted,
    StepFailed,
)
from ironflow.runtime import Engine
from ironflow.runtime.store import rows

# A blocked run's NonDeterminismError says where the code diverged and what each side yielded.
_DIVERGED = re.compile(
    r"at seq (?P<seq>\d+):\n\s*recorded: (?P<recorded>.*)\n\s*current:\s*(?P<current>.*)"
)
EVENTS_SHOWN = 50  # the events page's page size, and the most one request may ask for
EVENTS_MAX = 200


def error_json(error: Any) -> dict[str, Any] | None:
    """An error (``ErrorInfo`` or ``RunError``) with its traceback, or ``None``."""
    if error is None:
        return None
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def run_page(engine: Engine, run_id: str) -> dict[str, Any]:
    """The run page: the run, its trigger, its steps (tree order) with their attempts, the
    run-level markers, and a blocked run's diff. ``KeyError`` if there is no such run."""
    run = engine.get_run(run_id)
    history = engine.history(run_id)
    line = timeline(history, run.status)
    attempts = _attempts(history)
    steps = []
    for view in line.steps:
        step = view.to_json()
        step["error"] = error_json(view.error)
        step["started_at"] = iso(view.started_at or view.scheduled_at)
        step["parent"] = view.parent_id
        step["branch"] = view.branch if view.scope else None
        step["attempt_list"] = attempts.get(view.id, [])
        step["child_run_id"] = view.detail.get("child_run_id")
        steps.append(step)
    started = history[0] if history and isinstance(history[0], RunStarted) else None
    out = run_json(run)
    out["error"] = error_json(run.error)
    out["source_run_id"] = getattr(run, "source_run_id", None)  # a rerun's or fork's source
    return {
        "run": out,
        "trigger": None if started is None else converter.unstructure(started.event),
        "steps": steps,
        "markers": [marker.to_json() for marker in line.markers],
        "diff": diverged(run.error.message) if run.status == "blocked" and run.error else None,
        "events": len(history),
    }


def diverged(message: str) -> dict[str, Any] | None:
    """The recorded and the current command of a blocked run's error, if it names them."""
    found = _DIVERGED.search(message)
    if found is None:
        return None
    return {
        "seq": int(found["seq"]),
        "recorded": found["recorded"].strip(),
        "current": found["current"].strip(),
    }


def _attempts(history: list[HistoryEvent]) -> dict[str, list[dict[str, Any]]]:
    """Each ``run`` step's attempts: when each began (scheduled, or its retry's due time),
    when it ended, and how."""
    found: dict[str, dict[int, dict[str, Any]]] = {}
    scheduled: dict[str, Any] = {}
    for event in history:
        step_id = getattr(event, "id", None)
        if step_id is None:
            continue
        kind = type(event).__name__
        if kind == "CommandScheduled":
            scheduled[step_id] = event.ts
            continue
        if isinstance(event, RetryScheduled):
            entry = _attempt(found, step_id, event.attempt, iso(event.at))
            entry["due"] = iso(event.at)
        elif isinstance(event, StepCompleted | StepFailed):
            first = iso(scheduled.get(step_id)) if event.attempt == 1 else None
            entry = _attempt(found, step_id, event.attempt, first)
            entry["ended_at"] = iso(event.ts)
            if isinstance(event, StepFailed):
                entry["status"] = "failed"
                entry["error"] = error_json(event.error)
                entry["retryable"] = event.retryable
            else:
                entry["status"] = "completed"
    return {
        step_id: [by_number[number] for number in sorted(by_number)]
        for step_id, by_number in found.items()
    }


def _attempt(
    found: dict[str, dict[int, dict[str, Any]]], step_id: str, number: int, began: str | None
) -> dict[str, Any]:
    by_number = found.setdefault(step_id, {})
    entry = by_number.get(number)
    if entry is None:
        entry = by_number[number] = {
            "attempt": number,
            "started_at": began,
            "ended_at": None,
            "status": "due",
            "error": None,
        }
    return entry


def events_page(engine: Engine, limit: int, before: int | None) -> dict[str, Any]:
    """Recent events, newest first, each with the runs it started and the runs whose wait
    it satisfied; ``next_before`` pages on (``None`` on the last page)."""
    found = engine.store.recent_events(limit + 1, before)
    more = len(found) > limit
    found = found[:limit]
    woke: dict[str, list[str]] = {}
    for event_id, run_id in engine.store.event_consumers([row[1] for row in found]):
        woke.setdefault(event_id, []).append(run_id)
    events = []
    for pos, event_id, name, data, ts_us, started in found:
        events.append(
            {
                "pos": pos,
                "id": event_id,
                "name": name,
                "data": _loads(data),
                "ts": iso(rows.from_us(ts_us)),
                "started": _loads(started) or [],
                "woke": sorted(woke.get(event_id, [])),
            }
        )
    return {"events": events, "next_before": found[-1][0] if more and found else None}


def workers_page(engine: Engine) -> dict[str, Any]:
    """The workers alive now, with each function they run and its code version."""
    now_us = engine._driver.now_us()
    workers = []
    for worker_id, functions, seen_us, until_us in engine.store.workers(now_us):
        listed = _loads(functions)
        # A heartbeat holds {function id: code version}; one written before versions were
        # reported holds a plain list of ids.
        versions = listed if isinstance(listed, dict) else dict.fromkeys(listed or [])
        workers.append(
            {
                "id": worker_id,
                "functions": versions,
                "seen_at": iso(rows.from_us(seen_us)),
                "until": iso(rows.from_us(until_us)),
            }
        )
    return {"workers": workers}


def _loads(text: Any) -> Any:
    """A stored JSON column; a damaged one is shown as its text, not raised."""
    try:
        return json.loads(text)
    except (TypeError, ValueError):
        return text
