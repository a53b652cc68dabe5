"""Clocks: the engine asks one for the time; tests pass a virtual one."""

from __future__ import annotations

import datetime as _dt
from typing import Protocol


class Clock(Protocol):
    def now(self) -> _dt.datetime: ...


class SystemClock:
    """The wall clock, in UTC."""

    def now(self) -> _dt.datetime:
        return _dt.datetime.now(_dt.UTC)

    @property
    def is_virtual(self) -> bool:
        return False
