"""Flow-control options of ``@ironflow.function``: frozen values, checked where they are given.

Each class here is one row of the contract's table ("Flow control and schedules"). They hold
settings only; the runtime applies them (idempotency, rate limit and batching when an event
arrives; debounce and singleton when a run is scheduled; throttle and concurrency when it
would start). Every bad setting raises ``ValueError`` at construction, that is at decoration,
naming the value and saying what to give instead.

A key is a dotted path into the triggering event (``"data.customerId"``, as ``match`` of
``wait_for_event``) or a callable ``event -> JSON value``; an event without the field has the
key ``None``. Periods take the duration forms of ``step.sleep``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import pendulum

from ironflow.commands.durations import parse_duration
from ironflow.commands.event import MISSING, Event, lookup
from ironflow.commands.names import check_event_name, check_name

if TYPE_CHECKING:
    import zoneinfo

__all__ = [
    "Batch",
    "CancelOn",
    "Concurrency",
    "Cron",
    "Debounce",
    "Flow",
    "Key",
    "Priority",
    "RateLimit",
    "Singleton",
    "Throttle",
    "Timeouts",
    "key_of",
]

Key = str | Callable[[Event], Any]

# The heads ``Event.get`` can follow: any other head finds nothing, so a key path starting
# elsewhere (``"customerId"``, ``"event.data.x"``) would put every event in one bucket.
_PATH_HEADS = ("data", "id", "name", "ts")

SINGLETON_MODES = ("skip", "cancel")


def check_path(path: Any, what: str) -> str:
    """Return ``path`` if it is a dotted path into an event, else fail naming it."""
    text = check_name(path, what)
    head = text.split(".", 1)[0]
    if head not in _PATH_HEADS or any(not part for part in text.split(".")):
        raise ValueError(
            f"{what} {text!r} is not a path into the triggering event: start it with "
            f"'data.' (such as 'data.customerId'), or use 'id', 'name' or 'ts'"
        )
    return text


def _key(value: Any, what: str) -> Key | None:
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, str):
        return check_path(value, what)
    raise ValueError(
        f"{what} must be a dotted path such as 'data.customerId' or a callable "
        f"event -> value, got {value!r}"
    )


def _limit(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive int, got {value!r}")
    return value


def _optional_period(value: Any, what: str) -> pendulum.Duration | None:
    return None if value is None else parse_duration(value, what=what)


def _one_of(value: Any, cls: type, option: str) -> Any:
    if value is None or isinstance(value, cls):
        return value
    raise ValueError(f"{option}= must be a {cls.__name__}(...), got {value!r}")


# attrs converters must be named functions for type checkers: one per field.


def _concurrency_limit(value: Any) -> int:
    return _limit(value, "concurrency limit")


def _concurrency_key(value: Any) -> Key | None:
    return _key(value, "concurrency key")


def _throttle_limit(value: Any) -> int:
    return _limit(value, "throttle limit")


def _throttle_period(value: Any) -> pendulum.Duration:
    return parse_duration(value, what="throttle period")


def _throttle_key(value: Any) -> Key | None:
    return _key(value, "throttle key")


def _rate_limit_limit(value: Any) -> int:
    return _limit(value, "rate_limit limit")


def _rate_limit_period(value: Any) -> pendulum.Duration:
    return parse_duration(value, what="rate_limit period")


def _rate_limit_key(value: Any) -> Key | None:
    return _key(value, "rate_limit key")


def _debounce_period(value: Any) -> pendulum.Duration:
    return parse_duration(value, what="debounce period")


def _debounce_key(value: Any) -> Key | None:
    return _key(value, "debounce key")


def _debounce_max_wait(value: Any) -> pendulum.Duration | None:
    return _optional_period(value, "debounce max_wait")


def _singleton_key(value: Any) -> Key | None:
    return _key(value, "singleton key")


def _timeouts_start(value: Any) -> pendulum.Duration | None:
    return _optional_period(value, "timeouts start")


def _timeouts_finish(value: Any) -> pendulum.Duration | None:
    return _optional_period(value, "timeouts finish")


def _batch_max_size(value: Any) -> int:
    return _limit(value, "batch max_size")


def _batch_timeout(value: Any) -> pendulum.Duration:
    return parse_duration(value, what="batch timeout")


def _batch_key(value: Any) -> Key | None:
    return _key(value, "batch key")


def key_of(key: Key | None, event: Event) -> Any:
    """The key value ``key`` gives for ``event``: ``None`` for no key or a missing field."""
    if key is None:
        return None
    if isinstance(key, str):
        found = lookup(event, key)
        return None if found is MISSING else found
    return key(event)


@attrs.frozen
class Concurrency:
    """At most ``limit`` runs of the function (per key value) started and not ended at once."""

    limit: int = attrs.field(converter=_concurrency_limit)
    key: Key | None = attrs.field(default=None, converter=_concurrency_key)


@attrs.frozen
class Throttle:
    """At most ``limit`` run starts in any window of ``period`` (per key); the rest queue."""

    limit: int = attrs.field(converter=_throttle_limit)
    period: pendulum.Duration = attrs.field(converter=_throttle_period)
    key: Key | None = attrs.field(default=None, converter=_throttle_key)


@attrs.frozen
class RateLimit:
    """At most ``limit`` runs per ``period`` (per key); events over it start no run."""

    limit: int = attrs.field(converter=_rate_limit_limit)
    period: pendulum.Duration = attrs.field(converter=_rate_limit_period)
    key: Key | None = attrs.field(default=None, converter=_rate_limit_key)


@attrs.frozen
class Debounce:
    """A run starts ``period`` after the last matching event (per key), with that event;
    ``max_wait`` caps the delay from the first event."""

    period: pendulum.Duration = attrs.field(converter=_debounce_period)
    key: Key | None = attrs.field(default=None, converter=_debounce_key)
    max_wait: pendulum.Duration | None = attrs.field(default=None, converter=_debounce_max_wait)

    def __attrs_post_init__(self) -> None:
        if self.max_wait is not None and self.max_wait < self.period:
            raise ValueError(
                f"debounce max_wait {self.max_wait.in_words()!r} is shorter than its period "
                f"{self.period.in_words()!r}: give a max_wait of at least the period"
            )


def _priority_fn(value: Any) -> Callable[[Event], int]:
    if not callable(value):
        raise ValueError(f"priority run= must be a callable event -> int, got {value!r}")
    return value  # type: ignore[no-any-return]


@attrs.frozen
class Priority:
    """``run(event) -> int``: among the function's runs queued by a limit, higher first."""

    run: Callable[[Event], int] = attrs.field(converter=_priority_fn)


def _mode(value: Any) -> str:
    if value not in SINGLETON_MODES:
        raise ValueError(f"singleton mode must be 'skip' or 'cancel', got {value!r}")
    return str(value)


@attrs.frozen
class Singleton:
    """At most one run (per key) not ended at a time; ``"skip"`` a new one or ``"cancel"``
    the current one."""

    key: Key | None = attrs.field(default=None, converter=_singleton_key)
    mode: str = attrs.field(default="skip", converter=_mode)


def _cancel_event(value: Any) -> str:
    return check_event_name(value, "cancel_on event").strip()


def _match(value: Any) -> str | None:
    return None if value is None else check_path(value, "cancel_on match")


@attrs.frozen
class CancelOn:
    """An event named ``event`` whose ``match`` path equals the run's triggering event's
    cancels the run."""

    event: str = attrs.field(converter=_cancel_event)
    match: str | None = attrs.field(default=None, converter=_match)


@attrs.frozen
class Timeouts:
    """``start``: cancel a run still pending this long; ``finish``: fail a run not ended
    this long after it left pending (``RunTimeoutError``)."""

    start: pendulum.Duration | None = attrs.field(default=None, converter=_timeouts_start)
    finish: pendulum.Duration | None = attrs.field(default=None, converter=_timeouts_finish)


@attrs.frozen
class Batch:
    """One run receives up to ``max_size`` events (per key), started when full or
    ``timeout`` after the first."""

    max_size: int = attrs.field(converter=_batch_max_size)
    timeout: pendulum.Duration = attrs.field(converter=_batch_timeout)
    key: Key | None = attrs.field(default=None, converter=_batch_key)


def _cron_expr(value: Any) -> str:
    text = check_name(value, "cron expression").strip()
    # Imported here: declaring a function without a schedule loads no cron parser.
    from cronsim import CronSim, CronSimError

    try:
        CronSim(text, _dt.datetime(2000, 1, 1))
    except (CronSimError, ValueError, TypeError) as exc:
        raise ValueError(
            f"invalid cron expression {text!r}: {exc}; use five fields "
            f"'minute hour day-of-month month day-of-week', such as '0 9 * * MON-FRI'"
        ) from exc
    return text


def _tz(value: Any) -> str:
    text = check_name(value, "cron tz")
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {text!r}: give an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from exc
    return text


@attrs.frozen
class Cron:
    """A schedule trigger: ``expr`` (five cron fields) read in the IANA zone ``tz``."""

    expr: str = attrs.field(converter=_cron_expr)
    tz: str = attrs.field(default="UTC", converter=_tz)

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The schedule's time zone."""
        import zoneinfo

        return zoneinfo.ZoneInfo(self.tz)


def _concurrency(value: Any) -> Concurrency | None:
    if value is None or isinstance(value, Concurrency):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Concurrency(value)
    raise ValueError(f"concurrency= must be a positive int or a Concurrency, got {value!r}")


def _cancel_on(value: Any) -> tuple[CancelOn, ...]:
    items = [value] if isinstance(value, CancelOn) else value
    if value is None:
        return ()
    if not isinstance(items, list | tuple) or not all(isinstance(i, CancelOn) for i in items):
        raise ValueError(f"cancel_on= must be a CancelOn or a list of them, got {value!r}")
    return tuple(items)


def _idempotency(value: Any) -> Key | None:
    return _key(value, "idempotency key")


def _opt_throttle(value: Any) -> Throttle | None:
    return _one_of(value, Throttle, "throttle")  # type: ignore[no-any-return]


def _opt_rate_limit(value: Any) -> RateLimit | None:
    return _one_of(value, RateLimit, "rate_limit")  # type: ignore[no-any-return]


def _opt_debounce(value: Any) -> Debounce | None:
    return _one_of(value, Debounce, "debounce")  # type: ignore[no-any-return]


def _opt_priority(value: Any) -> Priority | None:
    return _one_of(value, Priority, "priority")  # type: ignore[no-any-return]


def _opt_singleton(value: Any) -> Singleton | None:
    return _one_of(value, Singleton, "singleton")  # type: ignore[no-any-return]


def _opt_timeouts(value: Any) -> Timeouts | None:
    return _one_of(value, Timeouts, "timeouts")  # type: ignore[no-any-return]


def _opt_batch_events(value: Any) -> Batch | None:
    return _one_of(value, Batch, "batch_events")  # type: ignore[no-any-return]


@attrs.frozen
class Flow:
    """A function's flow-control options, all checked; ``None`` (on ``Function.flow``)
    when it has none, so that an unlimited function costs one attribute test."""

    concurrency: Concurrency | None = attrs.field(default=None, converter=_concurrency)
    throttle: Throttle | None = attrs.field(default=None, converter=_opt_throttle)
    rate_limit: RateLimit | None = attrs.field(default=None, converter=_opt_rate_limit)
    debounce: Debounce | None = attrs.field(default=None, converter=_opt_debounce)
    priority: Priority | None = attrs.field(default=None, converter=_opt_priority)
    singleton: Singleton | None = attrs.field(default=None, converter=_opt_singleton)
    cancel_on: tuple[CancelOn, ...] = attrs.field(default=(), converter=_cancel_on)
    timeouts: Timeouts | None = attrs.field(default=None, converter=_opt_timeouts)
    batch_events: Batch | None = attrs.field(default=None, converter=_opt_batch_events)
    idempotency: Key | None = attrs.field(default=None, converter=_idempotency)

    def is_empty(self) -> bool:
        """True when no option is set."""
        return self == _NONE


_NONE = Flow()
