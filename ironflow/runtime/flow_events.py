"""Events that started no run, and why: what ``engine.list_events()`` and ``ironflow events
list`` show.

An event is recorded whatever flow control decides (it can still satisfy waits); when it
starts no run of a function it triggers, the store keeps a *skip* (``record_skip``): the
event, the function, a one-word reason and a line for people. Only skips of recorded events
are listed (a gate that refuses an ``engine.start()`` has no event to name). Reasons:

| reason        | recorded when                                                        |
|---------------|----------------------------------------------------------------------|
| `idempotency` | the function's idempotency key was seen in the last 24 hours          |
| `rate_limit`  | the function's rate limit for the event's key was reached             |
| `singleton`   | a run of the function with the same singleton key is not ended (skip) |
| `key_error`   | a worker judging an event deferred by an emitter without the code found |
|               | that one of the function's key functions failed for it                |
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import attrs

from ironflow.runtime.store import Store, rows


@attrs.frozen
class SkippedEvent:
    """An event that started no run of ``function``: ``reason`` is one word
    (``idempotency``, ``rate_limit``, ``singleton``, ``key_error``), ``detail`` says more."""

    id: str
    name: str
    data: Any
    ts: _dt.datetime
    function: str
    reason: str
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "data": self.data,
            "ts": self.ts.isoformat(),
            "function": self.function,
            "reason": self.reason,
            "detail": self.detail,
        }


def list_skipped(
    store: Store, name: str | None, function: str | None, limit: int | None
) -> list[SkippedEvent]:
    """The skips recorded, newest first, filtered by event name and function id."""
    found = []
    for event_id, event_name, data, event_us, fid, reason, detail, _ in store.list_skips(
        name, function, limit
    ):
        try:
            value = None if data is None else json.loads(data)
        except (TypeError, ValueError):
            value = None  # a damaged events row: the skip is still worth showing
        when = rows.from_us(event_us)
        found.append(SkippedEvent(event_id, event_name, value, when, fid, reason, detail))
    return found
