"""How the CLI shows runs: tables, durations, and a run's timeline built from its history."""

from __future__ import annotations

import datetime as _dt
import json
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import click

from ironflow.commands import kinds
from ironflow.history import (
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    CommandScheduled,
    CompensationScheduled,
    ErrorInfo,
    EventPublished,
    HistoryEvent,
    PatchMarked,
    RetryScheduled,
    RunCancelled,
    RunResumed,
    RunStarted,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
    parse_timestamp,
)
from ironflow.runtime import Run

ACTIVE = ("scheduled", "running", "retrying", "sleeping", "waiting", "registered")
GROUPS = kinds.GROUPS
_COLORS = {
    "completed": "green",
    "failed": "red",
    "timed out": "red",
    "blocked": "magenta",
    "cancelled": "yellow",
    "abandoned": "yellow",
    "running": "cyan",
    "retrying": "yellow",
    "waiting": "blue",
    "sleeping": "blue",
    "pending": "blue",
}


# --- small formats ----------------------------------------------------------------------------


def use_color() -> bool:
    """Color only for a terminal."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty())


def paint(text: str, status: str, color: bool) -> str:
    fg = _COLORS.get(status)
    return click.style(text, fg=fg) if color and fg else text


def when(ts: _dt.datetime | None) -> str:
    """A timestamp as ``YYYY-MM-DD HH:MM:SS`` UTC (milliseconds dropped)."""
    if ts is None:
        return "-"
    return ts.astimezone(_dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def iso(ts: _dt.datetime | None) -> str | None:
    return None if ts is None else ts.astimezone(_dt.UTC).isoformat()


def duration(seconds: float | None) -> str:
    """``850ms``, ``4.2s``, ``3m07s``, ``2h05m``, ``3d04h``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def between(start: _dt.datetime | None, end: _dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def excerpt(value: Any, width: int = 60) -> str:
    """``value`` as compact JSON, cut to ``width`` characters."""
    try:
        text = json.dumps(value, separators=(",", ":"), default=str)
    except ValueError:
        text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def error_text(error: Any, width: int = 80) -> str:
    """``Type: message`` (first line of the message), cut to ``width`` characters."""
    if error is None:
        return ""
    message = (error.message or "").strip().splitlines()
    text = f"{error.type}: {message[0]}" if message else error.type
    return text if len(text) <= width else text[: width - 3] + "..."


def error_lines(error: Any, indent: str) -> list[str]:
    """``Type: message`` whole: a multi-line message (a replay diff) goes on, indented."""
    lines = [line.rstrip() for line in (error.message or "").strip().splitlines()]
    if not lines:
        return [error.type]
    return [f"{error.type}: {lines[0]}", *(indent + line for line in lines[1:])]


def table(
    headers: Sequence[str], rows: Iterable[Sequence[str]], statuses: Sequence[str] = ()
) -> list[str]:
    """Left-aligned columns; the ``status`` column colored per row when ``statuses`` is given."""
    rows = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    color = use_color() and bool(statuses)
    status_col = headers.index("STATUS") if "STATUS" in headers else -1

    def line(cells: Sequence[str], status: str | None) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = cell.ljust(widths[i]) if i < len(cells) - 1 else cell
            if i == status_col and status is not None:
                text = paint(text, status, color)
            out.append(text)
        return "  ".join(out).rstrip()

    lines = [line(headers, None)]
    for index, row in enumerate(rows):
        lines.append(line(row, statuses[index] if index < len(statuses) else None))
    return lines


# --- runs -------------------------------------------------------------------------------------


def run_seconds(run: Run) -> float | None:
    return between(run.created_at, run.ended_at)


def run_json(run: Run) -> dict[str, Any]:
    error = None
    if run.error is not None:
        error = {"type": run.error.type, "message": run.error.message}
    return {
        "id": run.id,
        "function": run.function,
        "status": run.status,
        "output": run.output,
        "error": error,
        "created_at": iso(run.created_at),
        "updated_at": iso(run.updated_at),
        "ended_at": iso(run.ended_at),
        "duration_s": run_seconds(run),
        "parent_run_id": run.parent_run_id,
        "code_version": run.code_version,
        "waiting_for": run.waiting_for,
        "source_run_id": run.source_run_id,
    }


def runs_table(runs: Sequence[Run]) -> list[str]:
    rows = [
        (run.id, run.function, run.status, when(run.created_at), duration(run_seconds(run)))
        for run in runs
    ]
    statuses = [run.status for run in runs]
    header: tuple[str, ...] = ("ID", "FUNCTION", "STATUS", "STARTED (UTC)", "DURATION")
    if any(run.waiting_for for run in runs):  # why pending runs wait (a limit, no worker)
        header += ("WAITING FOR",)
        rows = [(*row, run.waiting_for or "") for row, run in zip(rows, runs, strict=True)]
    return table(header, rows, statuses)


# --- the timeline of one run --------------------------------------------------------------------


@attrs.define
class StepView:
    """One step of a run as its history tells it."""

    id: str
    kind: str
    name: str
    scope: str
    seq: int
    scheduled_at: _dt.datetime
    fingerprint: str = ""
    started_at: _dt.datetime | None = None  # when the work began, if not when scheduled
    status: str = "scheduled"
    attempts: int = 0
    ended_at: _dt.datetime | None = None
    due: _dt.datetime | None = None
    output: Any = None
    has_output: bool = False
    error: ErrorInfo | None = None
    detail: dict[str, Any] = attrs.Factory(dict)
    children: list[StepView] = attrs.Factory(list)

    @property
    def depth(self) -> int:
        return len(self.scope.split("/")) // 2 if self.scope else 0

    @property
    def parent_id(self) -> str | None:
        return self.scope.rsplit("/", 1)[0] if self.scope else None

    @property
    def branch(self) -> int:
        try:
            return int(self.scope.rsplit("/", 1)[1])
        except (IndexError, ValueError):
            return 0

    @property
    def seconds(self) -> float | None:
        return between(self.started_at or self.scheduled_at, self.ended_at)

    def finish(self, status: str, ts: _dt.datetime) -> None:
        self.status = status
        self.ended_at = ts

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "name": self.name,
            "scope": self.scope,
            "depth": self.depth,
            "status": self.status,
            "attempts": self.attempts or None,
            "scheduled_at": iso(self.scheduled_at),
            "ended_at": iso(self.ended_at),
            "duration_s": self.seconds,
            "due": iso(self.due),
            "output": self.output if self.has_output else None,
            "error": None
            if self.error is None
            else {"type": self.error.type, "message": self.error.message},
            "detail": self.detail,
        }


@attrs.define
class Marker:
    """A run-level event in the timeline: resumed, cancel requested, patch marked."""

    seq: int
    ts: _dt.datetime
    kind: str
    text: str

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "ts": iso(self.ts), "kind": self.kind, "detail": self.text}


@attrs.define
class Timeline:
    steps: list[StepView]  # tree order: each parallel/map followed by its branches' steps
    markers: list[Marker]
    trigger: Any = None


_INITIAL = {
    kinds.RUN: "running",
    kinds.SLEEP: "sleeping",
    kinds.SLEEP_UNTIL: "sleeping",
    kinds.WAIT_EVENT: "waiting",
    kinds.INVOKE: "running",
    kinds.INVOKE_ASYNC: "running",
    kinds.PUBLISH: "running",
    kinds.PARALLEL: "running",
    kinds.MAP: "running",
    kinds.COMPENSATE: "registered",
}


def timeline(history: Sequence[HistoryEvent], run_status: str) -> Timeline:
    """Fold a run's history into one view per step (plus run-level markers)."""
    views: dict[str, StepView] = {}
    markers: list[Marker] = []
    trigger = None

    def result(view: StepView, value: Any) -> None:
        view.output, view.has_output = value, True

    for event in history:
        view = views.get(getattr(event, "id", None) or "")
        if isinstance(event, RunStarted):
            trigger = event.event
        elif isinstance(event, CommandScheduled):
            view = StepView(
                event.id,
                event.kind,
                event.name,
                event.scope,
                event.seq,
                event.ts,
                fingerprint=event.fingerprint,
                status=_INITIAL.get(event.kind, "scheduled"),
                attempts=1 if event.kind == kinds.RUN else 0,
                detail=dict(event.detail),
            )
            due = event.detail.get("due")
            if due is not None:
                view.due = parse_timestamp(due)
            views[event.id] = view
        elif view is None:
            if isinstance(event, RunResumed):
                markers.append(Marker(event.seq, event.ts, "resumed", event.reason))
            elif isinstance(event, RunCancelled):
                text = event.reason + (" (with compensation)" if event.compensate else "")
                markers.append(Marker(event.seq, event.ts, "cancel", text))
            elif isinstance(event, PatchMarked):
                markers.append(Marker(event.seq, event.ts, "patch", event.change_id))
        elif isinstance(event, StepCompleted):
            view.attempts = max(view.attempts, event.attempt)
            view.error = None
            view.due = None
            result(view, event.result)
            view.finish("completed", event.ts)
        elif isinstance(event, StepFailed):
            view.attempts = max(view.attempts, event.attempt)
            view.error = event.error
            view.finish("failed", event.ts)
        elif isinstance(event, RetryScheduled):
            view.attempts = max(view.attempts, event.attempt)
            view.status, view.due, view.ended_at = "retrying", parse_timestamp(event.at), None
        elif isinstance(event, CompensationScheduled):
            view.status, view.attempts, view.started_at = "running", 1, event.ts
        elif isinstance(event, TimerFired):
            view.finish("completed", event.ts)
        elif isinstance(event, WaitMatched):
            view.detail["matched_event_id"] = event.event.id
            result(view, event.event.data)
            view.finish("completed", event.ts)
        elif isinstance(event, WaitTimedOut):
            view.finish("timed out", event.ts)
        elif isinstance(event, ChildStarted):
            view.detail["child_run_id"] = event.child_run_id
            if view.kind == kinds.INVOKE_ASYNC:
                result(view, event.child_run_id)
                view.finish("completed", event.ts)
        elif isinstance(event, ChildCompleted):
            result(view, event.output)
            view.finish("completed", event.ts)
        elif isinstance(event, ChildFailed):
            view.error = event.error
            view.finish("failed", event.ts)
        elif isinstance(event, EventPublished):
            view.detail["event_id"] = event.event_id
            view.finish("completed", event.ts)

    roots: list[StepView] = []
    for view in views.values():
        parent = views.get(view.parent_id or "")
        (parent.children if parent is not None else roots).append(view)
    for view in sorted(views.values(), key=lambda v: -v.depth):
        view.children.sort(key=lambda child: (child.branch, child.seq))
        if view.kind in GROUPS:
            _settle_group(view)
    if run_status in ("completed", "failed", "cancelled"):
        left = "cancelled" if run_status == "cancelled" else "abandoned"
        for view in views.values():
            if view.status in ACTIVE and view.status != "registered":
                view.status = left
    ordered: list[StepView] = []

    def walk(items: list[StepView]) -> None:
        for item in items:
            ordered.append(item)
            walk(item.children)

    walk(roots)
    return Timeline(ordered, markers, trigger)


def _settle_group(view: StepView) -> None:
    """A parallel/map has no events of its own: its state is its branches' state."""
    branches = view.children
    if any(child.status in ACTIVE and child.status != "registered" for child in branches):
        return
    failed = any(child.status in ("failed", "timed out") for child in branches)
    if failed and view.detail.get("on_error") != "all_settled":
        view.status = "failed"
    else:
        view.status = "completed"
    ends = [child.ended_at for child in branches if child.ended_at is not None]
    view.ended_at = max(ends) if ends else view.scheduled_at


def step_detail(view: StepView) -> str:
    """The DETAIL column: what the step waits for, or what it returned or raised."""
    kind, detail = view.kind, view.detail
    parts: list[str] = []
    if kind in kinds.SLEEPS and view.due is not None:
        parts.append(f"until {when(view.due)} UTC")
    elif kind == kinds.WAIT_EVENT:
        what = f"event {detail.get('event')!r}"
        if detail.get("match"):
            what += f" where {detail['match']} == {excerpt(detail.get('match_value'), 30)}"
        parts.append(what)
        if view.status == "waiting" and view.due is not None:
            parts.append(f"timeout {when(view.due)} UTC")
    elif kind in kinds.CHILDREN:
        parts.append(f"child {detail.get('child_run_id') or detail.get('function')}")
        if view.status == "running" and view.due is not None:
            parts.append(f"timeout {when(view.due)} UTC")
    elif kind == kinds.PUBLISH:
        parts.append(f"event {detail.get('event')!r}")
    elif kind in GROUPS:
        parts.append(view.fingerprint)
        if detail.get("concurrency"):
            parts.append(f"concurrency {detail['concurrency']}")
    elif kind == kinds.COMPENSATE:
        parts.append(f"undo: {view.fingerprint}()")
    if view.status == "retrying":
        parts.append(f"attempt {view.attempts} at {when(view.due)} UTC")
    if view.error is not None:
        parts.append("error " + error_text(view.error))
    elif view.has_output and kind != kinds.INVOKE_ASYNC:
        parts.append("-> " + excerpt(view.output))
    return "; ".join(part for part in parts if part)


def timeline_lines(run: Run, line: Timeline) -> list[str]:
    """``runs show``: the run's summary, then one row per step and run-level marker."""
    color = use_color()
    out = [
        f"run       {run.id}",
        f"function  {run.function}",
        f"status    {paint(run.status, run.status, color)}",
    ]
    if run.waiting_for:  # a pending run that no live worker can take
        out.append(f"pending   {run.waiting_for}")
    if run.code_version:  # which code recorded the run (it changes in a rolling deploy)
        out.append(f"code      {run.code_version}")
    if run.parent_run_id:
        out.append(f"parent    {run.parent_run_id}")
    if run.source_run_id:  # made by a rerun or fork of that run
        out.append(f"source    {run.source_run_id}")
    trigger = ""
    if line.trigger is not None:
        trigger = f"  (event {line.trigger.name!r}, data {excerpt(line.trigger.data, 50)})"
    out.append(f"started   {when(run.created_at)} UTC{trigger}")
    if run.ended_at is not None:
        out.append(f"ended     {when(run.ended_at)} UTC  ({duration(run_seconds(run))})")
    if run.status == "completed":
        out.append(f"output    {excerpt(run.output, 200)}")
    elif run.error is not None:
        # Whole: a blocked run's recorded-versus-current diff is the part that helps.
        first, *rest = error_lines(run.error, " " * 10)
        out.append(f"error     {first}")
        out.extend(rest)
    out.append("")
    if not line.steps and not line.markers:
        out.append("no steps yet")
        return out
    rows: list[tuple[int, list[str], str]] = []
    for view in line.steps:
        cells = [
            "  " * view.depth + view.id,
            view.kind,
            view.status,
            str(view.attempts) if view.attempts else "-",
            duration(view.seconds),
            step_detail(view),
        ]
        rows.append((view.seq, cells, view.status))
    for marker in line.markers:
        text = "" if marker.text == marker.kind else marker.text
        cells = ["*", marker.kind, "", "-", "-", f"{when(marker.ts)} UTC {text}".strip()]
        rows.append((marker.seq, cells, ""))
    if line.markers:  # markers go after the step scheduled just before them
        rows = _interleave(rows)
    out.extend(
        table(
            ("STEP", "KIND", "STATUS", "ATTEMPTS", "DURATION", "DETAIL"),
            [cells for _, cells, _ in rows],
            [status for _, _, status in rows],
        )
    )
    return out


def _interleave(rows: list[tuple[int, list[str], str]]) -> list[tuple[int, list[str], str]]:
    steps = [row for row in rows if row[1][0] != "*"]
    marks = sorted((row for row in rows if row[1][0] == "*"), key=lambda row: row[0])
    out: list[tuple[int, list[str], str]] = []
    for row in steps:
        while marks and marks[0][0] < row[0]:
            out.append(marks.pop(0))
        out.append(row)
    return out + marks
