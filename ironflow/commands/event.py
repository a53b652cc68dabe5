"""Events: what triggers runs and what ``wait_for_event`` receives."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import attrs


@attrs.frozen
class Event:
    """An event: ``id``, ``name``, JSON ``data`` and the instant ``ts`` it was emitted."""

    id: str
    name: str
    data: Any
    ts: _dt.datetime

    def get(self, path: str) -> Any:
        """The value at a dotted ``path`` such as ``"data.orderId"``; ``MISSING`` if absent."""
        return lookup(self, path)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def lookup(event: Event, path: str) -> Any:
    """Follow ``path`` (``"data.orderId"``, ``"name"``, ``"data.items.0"``) into ``event``."""
    parts = path.split(".")
    head = parts[0]
    if head == "data":
        value: Any = event.data
    elif head in ("id", "name"):
        value = getattr(event, head)
    elif head == "ts":
        value = event.ts.isoformat()
    else:
        return MISSING
    for part in parts[1:]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value
