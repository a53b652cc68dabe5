"""Retry policies: how often a failing step runs again and how long it waits in between."""

from __future__ import annotations

import math
from typing import Any

import attrs
import pendulum

from ironflow.commands.durations import parse_duration


def _initial_delay(value: Any) -> pendulum.Duration:
    return parse_duration(value, what="retry delay (initial_delay)")


def _max_delay(value: Any) -> pendulum.Duration:
    return parse_duration(value, what="retry delay (max_delay)")


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
        default=pendulum.duration(seconds=1), converter=_initial_delay
    )
    backoff: float = attrs.field(default=2.0, validator=_check_backoff)
    max_delay: pendulum.Duration = attrs.field(
        default=pendulum.duration(minutes=5), converter=_max_delay
    )
    jitter: float = attrs.field(default=0.0, validator=_check_jitter)

    def __attrs_post_init__(self) -> None:
        # Capping the first delay silently would wait less than the policy says.
        if self.initial_delay > self.max_delay:
            raise ValueError(
                f"RetryPolicy initial_delay ({self.initial_delay.in_words()}) is longer than "
                f"max_delay ({self.max_delay.in_words()}), which caps every delay; "
                f"give a max_delay at least as long"
            )

    def delay_seconds(self, failed_attempt: int, roll: float = 0.0) -> float:
        """Seconds to wait after attempt ``failed_attempt`` failed; ``roll`` in [0, 1) jitters."""
        try:
            base = self.initial_delay.total_seconds() * self.backoff ** (failed_attempt - 1)
        except OverflowError:  # attempt 1025 with backoff 2.0: past any max_delay anyway
            base = math.inf
        capped = min(base, self.max_delay.total_seconds())
        return capped * (1.0 + self.jitter * roll)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(max_attempts=1)
