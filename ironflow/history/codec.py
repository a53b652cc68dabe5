"""One cattrs converter for history events and values; JSON in and out."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import cattrs
import pendulum
from cattrs.gen import make_dict_unstructure_fn, override

from ironflow.history.events import EVENT_TYPES, HistoryEvent, RunStarted

converter = cattrs.Converter()


def _unstructure_datetime(value: _dt.datetime) -> str:
    return value.astimezone(_dt.UTC).isoformat()


def parse_timestamp(value: Any) -> _dt.datetime:
    """A stored timestamp (ISO 8601 with offset, or a datetime) as an aware UTC datetime."""
    if isinstance(value, _dt.datetime):
        return pendulum.instance(value).in_timezone("UTC")
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    if len(value) > 19 and value[-6] in "+-" and value[-3] == ":":
        # The form isoformat() writes, which is what ironflow stores: the standard library
        # parses it many times faster than pendulum.
        try:
            quick = _dt.datetime.fromisoformat(value)
        except ValueError:
            quick = None
        if quick is not None and quick.utcoffset() is not None:
            return quick.astimezone(_dt.UTC)
    parsed = pendulum.parse(value, tz=None)
    if not isinstance(parsed, _dt.datetime):
        raise ValueError(f"not a timestamp: {value!r}")
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise ValueError(f"timestamp {value!r} has no offset")
    return pendulum.instance(parsed).in_timezone("UTC")


converter.register_unstructure_hook(_dt.datetime, _unstructure_datetime)
converter.register_structure_hook(_dt.datetime, lambda value, _: parse_timestamp(value))
converter.register_structure_hook(Any, lambda value, _: value)

# A run's batch of events is written only for a batched run: every other RunStarted is
# exported as it was before batches existed.
converter.register_unstructure_hook(
    RunStarted,
    make_dict_unstructure_fn(RunStarted, converter, events=override(omit_if_default=True)),
)

# History events are read with strict scalars: a JSON 5 where a string belongs is malformed
# input, not the string "5" (cattrs' default converter would quietly coerce it).
_history_converter = converter.copy()


def _strict(kind: type, accepted: tuple[type, ...]) -> None:
    def structure(value: Any, _: Any) -> Any:
        if type(value) not in accepted:
            raise ValueError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)

    _history_converter.register_structure_hook(kind, structure)


_strict(str, (str,))
_strict(int, (int,))
_strict(float, (int, float))
_strict(bool, (bool,))


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
        event: HistoryEvent = _history_converter.structure(body, cls)
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
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"a history must be JSON text: {exc}") from exc
    if isinstance(data, dict) and "events" in data:
        data = data["events"]
    if not isinstance(data, list):
        raise ValueError('a history must be a JSON list of events (or {"events": [...]})')
    return [event_from_dict(item) for item in data]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON: a history holds no NaN or infinity")
