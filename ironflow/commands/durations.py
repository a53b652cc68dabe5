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

_DURATION_HELP = (
    'use a positive number of seconds, a timedelta, or a string like "500ms", "30s", '
    '"1.5m", "2h", "7d" (or ISO 8601 such as "PT30S")'
)


# Workflows spell the same few durations ("1d", "30s") on every replay: parse each once.
_PARSED: dict[str, pendulum.Duration] = {}


def parse_duration(value: Any, *, what: str = "duration") -> pendulum.Duration:
    """Return ``value`` as a positive pendulum ``Duration``; ``ValueError`` names a bad one."""
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
    try:
        duration = pendulum.duration(seconds=seconds)
    except OverflowError:
        raise ValueError(f"{what} {value!r} is too long; {_DURATION_HELP}") from None
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
    return pendulum.instance(value_dt).in_timezone("UTC")
