"""Clocks: the engine asks one for the time; tests pass a virtual one."""

from __future__ import annotations

import datetime as _dt
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> _dt.datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_dt.UTC)

    def now_us(self) -> int:
        """Microseconds since the epoch: the engine's hot path skips the datetime."""
        return time.time_ns() // 1000

    @property
    def is_virtual(self) -> bool:
        return False
