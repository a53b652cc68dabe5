"""Durations and instants as the step builders accept them, checked at the boundary."""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any

import pendulum

_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SHORT = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d)")

DurationLike = str | int | float | _dt.timedelta
InstantLike = str | _dt.datetime

# The longest duration anything takes: a sleep, a timeout, a retry delay, a lease, a
# ``VirtualClock.advance``. 100 years keeps every deadline the engine computes far inside what
# it can hold: ``now + MAX_DURATION`` (even doubled by retry jitter) is a datetime well before
# year 9999 and some 10**17 integer microseconds since the epoch (int64 holds 9.2 * 10**18),
# and as seconds it stays under ``threading.TIMEOUT_MAX`` (~292 years), which bounds the
# worker's waits on step timeouts.
MAX_DURATION_DAYS = 36500
MAX_DURATION = _dt.timedelta(days=MAX_DURATION_DAYS)
_MAX_SECONDS = MAX_DURATION.total_seconds()
_MAX_TEXT = f"{MAX_DURATION_DAYS} days (100 years)"

# The latest instant a ``sleep_until`` may target (and a ``VirtualClock`` may show). Later
# steps add durations to the time it wakes at; stopping 999 years short of ``datetime.max``
# leaves room for any of them (at most ``2 * MAX_DURATION``).
LATEST_INSTANT = _dt.datetime(9000, 1, 1, tzinfo=_dt.UTC)

_DURATION_HELP = (
    'use a positive number of seconds, a timedelta, or a string like "500ms", "30s", '
    '"1.5m", "2h", "7d" (or ISO 8601 such as "PT30S")'
)


# Workflows spell the same few durations ("1d", "30s") on every replay: parse each once.
_PARSED: dict[str, pendulum.Duration] = {}


def parse_duration(value: Any, *, what: str = "duration") -> pendulum.Duration:
    """``value`` as a positive pendulum ``Duration`` of at most ``MAX_DURATION``.

    ``ValueError`` names a bad value. Every duration ironflow takes comes through here.
    """
    if type(value) is str:
        found = _PARSED.get(value)
        if found is None:
            found = _parse_duration(value, what)
            if len(_PARSED) < 4096:
                _PARSED[value] = found
        return found
    return _parse_duration(value, what)


def _parse_duration(value: Any, what: str) -> pendulum.Duration:
    seconds = _seconds(value, what)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{what} must be positive and finite, got {value!r}; {_DURATION_HELP}")
    if seconds > _MAX_SECONDS:
        raise ValueError(f"{what} {value!r} is too long: the engine schedules at most {_MAX_TEXT}")
    duration = pendulum.duration(seconds=seconds)
    if duration.total_seconds() <= 0:
        raise ValueError(f"{what} {value!r} is shorter than a microsecond; {_DURATION_HELP}")
    return duration


def _seconds(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a duration, got the bool {value!r}; {_DURATION_HELP}")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        short = _SHORT.fullmatch(value)
        if short:
            return float(short.group(1)) * _UNIT_SECONDS[short.group(2)]
        if value.startswith("P"):
            try:
                parsed = pendulum.parse(value)
            except (ValueError, TypeError, pendulum.parsing.exceptions.ParserError):
                parsed = None
            if isinstance(parsed, _dt.timedelta):
                return parsed.total_seconds()
        raise ValueError(f"invalid {what} {value!r}; {_DURATION_HELP}")
    raise ValueError(f"{what} must be a duration, got {type(value).__name__} {value!r}")


def parse_instant(value: Any, *, what: str = "instant") -> pendulum.DateTime:
    """Return ``value`` as an aware pendulum ``DateTime`` in UTC; naive or unparseable fails."""
    if isinstance(value, str):
        try:
            parsed = pendulum.parse(value, tz=None, exact=True)
        except (ValueError, TypeError, pendulum.parsing.exceptions.ParserError) as exc:
            raise ValueError(
                f"invalid {what} {value!r}: expected an ISO 8601 timestamp with an offset, "
                f'such as "2026-01-31T09:00:00+00:00"'
            ) from exc
        if not isinstance(parsed, _dt.datetime):
            raise ValueError(f"invalid {what} {value!r}: a date and time with an offset is needed")
        value_dt: _dt.datetime = parsed
    elif isinstance(value, _dt.datetime):
        value_dt = value
    else:
        raise ValueError(
            f"{what} must be an aware datetime or an ISO 8601 string, "
            f"got {type(value).__name__} {value!r}"
        )
    if value_dt.tzinfo is None or value_dt.utcoffset() is None:
        raise ValueError(
            f"{what} {value!r} is naive: give it a time zone or offset (e.g. +00:00) "
            f"so that it names one instant"
        )
    # Checked before the conversion to UTC, which overflows past year 9999.
    if value_dt > LATEST_INSTANT:
        raise ValueError(
            f"{what} {value!r} is too late: the latest instant the engine schedules is "
            f"{LATEST_INSTANT.isoformat()}"
        )
    return pendulum.instance(value_dt).in_timezone("UTC")
