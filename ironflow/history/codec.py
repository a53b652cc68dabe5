"""One cattrs converter for history events and values; JSON in and out."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

import cattrs
import pendulum

from ironflow.commands.event import Event
from ironflow.history.events import EVENT_TYPES, HistoryEvent

converter = cattrs.Converter()


def _unstructure_datetime(value: _dt.datetime) -> str:
    return pendulum.instance(value).in_timezone("UTC").isoformat()


def parse_timestamp(value: Any) -> pendulum.DateTime:
    """A stored timestamp (ISO 8601 with offset, or a datetime) as a UTC pendulum DateTime."""
    if isinstance(value, _dt.datetime):
        return pendulum.instance(value).in_timezone("UTC")
    parsed = pendulum.parse(value)
    if not isinstance(parsed, _dt.datetime):
        raise ValueError(f"not a timestamp: {value!r}")
    return pendulum.instance(parsed).in_timezone("UTC")


converter.register_unstructure_hook(_dt.datetime, _unstructure_datetime)
converter.register_structure_hook(_dt.datetime, lambda value, _: parse_timestamp(value))
converter.register_structure_hook(Any, lambda value, _: value)


def event_to_dict(event: HistoryEvent) -> dict[str, Any]:
    """A history event as a JSON-ready dict with its ``type``."""
    body: dict[str, Any] = converter.unstructure(event)
    return {"type": type(event).__name__, **body}


def event_from_dict(data: Any) -> HistoryEvent:
    """The history event a dict made by ``event_to_dict`` describes; clear error otherwise."""
    if not isinstance(data, dict):
        raise ValueError(f"a history event must be a JSON object, got {data!r}")
    kind = data.get("type")
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        known = ", ".join(sorted(EVENT_TYPES))
        raise ValueError(f"unknown history event type {kind!r}; known types: {known}")
    body = {key: value for key, value in data.items() if key != "type"}
    try:
        event: HistoryEvent = converter.structure(body, cls)
    except Exception as exc:
        detail = (
            "; ".join(cattrs.transform_error(exc))
            if isinstance(exc, cattrs.BaseValidationError)
            else str(exc)
        )
        raise ValueError(f"malformed {kind} event {data!r}: {detail}") from exc
    return event


def dumps(history: list[HistoryEvent], *, indent: int | None = 2) -> str:
    """A history as JSON text (what ``ironflow runs export`` writes)."""
    return json.dumps([event_to_dict(event) for event in history], indent=indent, allow_nan=False)


def loads(text: str) -> list[HistoryEvent]:
    """A history from JSON text: a list of events, or an object with an ``events`` list."""
    data = json.loads(text)
    if isinstance(data, dict) and "events" in data:
        data = data["events"]
    if not isinstance(data, list):
        raise ValueError('a history must be a JSON list of events (or {"events": [...]})')
    return [event_from_dict(item) for item in data]


def load_path(path: str | Path) -> list[HistoryEvent]:
    """A history read from a JSON file written by ``ironflow runs export``."""
    return loads(Path(path).read_text(encoding="utf-8"))


def event_to_json(event: Event) -> dict[str, Any]:
    """A triggering or matched ``Event`` as a JSON-ready dict."""
    body: dict[str, Any] = converter.unstructure(event)
    return body


def event_from_json(data: dict[str, Any]) -> Event:
    """The ``Event`` a dict made by ``event_to_json`` describes."""
    return converter.structure(data, Event)
