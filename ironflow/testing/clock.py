"""``VirtualClock``: time that moves only when a test says so."""

from __future__ import annotations

import datetime as _dt
import threading
from typing import Any

from ironflow.commands.durations import LATEST_INSTANT, parse_duration, parse_instant


def _plain(when: _dt.datetime) -> _dt.datetime:
    """A standard-library UTC datetime: cheap arithmetic on the engine's hot path."""
    utc = when.astimezone(_dt.UTC)
    return _dt.datetime(
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
        tzinfo=_dt.UTC,
    )


class VirtualClock:
    """A clock for ``Engine(clock=...)``: ``advance("7d")`` skips a week at once."""

    is_virtual = True

    def __init__(self, start: Any = None) -> None:
        if start is None:
            start = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
        self._now = _plain(parse_instant(start, what="VirtualClock start"))
        self._lock = threading.Lock()

    def now(self) -> _dt.datetime:
        with self._lock:
            return self._now

    def advance(self, duration: Any) -> _dt.datetime:
        """Move time forward by ``duration`` (same forms as ``step.sleep``); the new time."""
        step = _dt.timedelta(
            seconds=parse_duration(duration, what="advance duration").total_seconds()
        )
        with self._lock:
            # The engine adds durations to this time; past LATEST_INSTANT they could overflow.
            if self._now > LATEST_INSTANT - step:
                raise ValueError(
                    f"VirtualClock cannot advance {duration!r} from {self._now.isoformat()}: "
                    f"it would pass {LATEST_INSTANT.isoformat()}, the latest time the engine "
                    f"schedules"
                )
            self._now = self._now + step
            return self._now

    def set(self, when: Any) -> None:
        """Jump to ``when`` (an aware datetime or ISO string), never backwards."""
        target = _plain(parse_instant(when, what="VirtualClock time"))
        with self._lock:
            if target < self._now:
                raise ValueError(f"VirtualClock cannot go back from {self._now} to {target}")
            self._now = target

    def __repr__(self) -> str:
        return f"VirtualClock({self._now.isoformat()!r})"
