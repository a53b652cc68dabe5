"""Retry policies: how often a failing step runs again and how long it waits in between."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pendulum

from ironflow.commands.durations import parse_duration


def _duration(value: Any) -> pendulum.Duration:
    return parse_duration(value, what="retry delay")


def _check_attempts(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"max_attempts must be an int >= 1 (it counts the first try), got {value!r}"
        )


def _check_backoff(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (math.isfinite(value) and value >= 1.0)
    ):
        raise ValueError(f"backoff must be a finite number >= 1.0, got {value!r}")


def _check_jitter(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (0.0 <= value <= 1.0):
        raise ValueError(f"jitter must be a fraction between 0.0 and 1.0, got {value!r}")


@attrs.frozen
class RetryPolicy:
    """``max_attempts`` counts the first try; delays grow by ``backoff`` up to ``max_delay``.

    ``jitter=0.1`` adds up to 10% to each delay; the amount is recorded in history.
    """

    max_attempts: int = attrs.field(default=3, validator=_check_attempts)
    initial_delay: pendulum.Duration = attrs.field(
        default=pendulum.duration(seconds=1), converter=_duration
    )
    backoff: float = attrs.field(default=2.0, validator=_check_backoff)
    max_delay: pendulum.Duration = attrs.field(
        default=pendulum.duration(minutes=5), converter=_duration
    )
    jitter: float = attrs.field(default=0.0, validator=_check_jitter)

    def delay_seconds(self, failed_attempt: int, roll: float = 0.0) -> float:
        """Seconds to wait after attempt ``failed_attempt`` failed; ``roll`` in [0, 1) jitters."""
        base = self.initial_delay.total_seconds() * self.backoff ** (failed_attempt - 1)
        capped = min(base, self.max_delay.total_seconds())
        return capped * (1.0 + self.jitter * roll)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
