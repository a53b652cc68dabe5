"""A perturbed environment: code that reads it outside a step diverges on replay.

Between executions of a workflow, the wall clock (``datetime``, ``time.time``) and the
module-level ``random`` functions change, so a workflow that branches on them outside a step
decides differently when replayed, and the checker sees it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import random as _random
import time as _time
from collections.abc import Iterator
from typing import Any

from ironflow.testing.simulator import START


class _Epoch:
    current = 0


def _skewed_now(tz: Any = None) -> _dt.datetime:
    # Each epoch moves every field (day, hour, minute, second, microsecond) by a different
    # amount, so code branching on any of them sees a change.
    skew = _dt.timedelta(days=1, hours=7, minutes=13, seconds=17, microseconds=7919)
    base = START + skew * _Epoch.current
    return base if tz is not None else base.replace(tzinfo=None)


class _SkewedDatetime(_dt.datetime):
    @classmethod
    def now(cls, tz: Any = None) -> Any:  # type: ignore[override]
        return _skewed_now(tz)

    @classmethod
    def utcnow(cls) -> Any:  # type: ignore[override]
        return _skewed_now()

    @classmethod
    def today(cls) -> Any:  # type: ignore[override]
        return _skewed_now()


class _SkewedModule:
    """``datetime`` the module, but with the skewed ``datetime`` class."""

    datetime = _SkewedDatetime

    def __getattr__(self, name: str) -> Any:
        return getattr(_dt, name)


@contextlib.contextmanager
def perturbed(flow: Any, epoch: int) -> Iterator[None]:
    """Within, wall-clock time and module-level randomness differ from one ``epoch`` to the
    next, so a workflow that branches on them outside a step diverges between executions."""
    _Epoch.current = epoch
    fn = getattr(flow, "fn", flow)
    namespace = getattr(fn, "__globals__", {})
    saved: dict[str, Any] = {}
    for name, value in list(namespace.items()):
        if value is _dt.datetime:
            saved[name] = value
            namespace[name] = _SkewedDatetime
        elif value is _dt:
            saved[name] = value
            namespace[name] = _SkewedModule()
    rng = _random.Random(epoch * 7_777 + 1)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patch(_random, "random", rng.random))
        stack.enter_context(_patch(_random, "randint", rng.randint))
        stack.enter_context(_patch(_random, "choice", rng.choice))
        stack.enter_context(_patch(_time, "time", lambda: _skewed_now(_dt.UTC).timestamp()))
        try:
            yield
        finally:
            namespace.update(saved)


@contextlib.contextmanager
def _patch(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)
