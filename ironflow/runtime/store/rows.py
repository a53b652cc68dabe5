"""The row codec: history events to table rows and back, fast (replay reads these in bulk).

Shared by every store: a row is ``(seq, type, ts_us, body_json)``; timestamps are integer
microseconds since the epoch, bodies compact JSON. A hot path: no per-row objects beyond the
events themselves."""

from __future__ import annotations

import contextlib
import datetime as _dt
import gc
import json
from collections.abc import Callable, Iterator
from itertools import groupby
from operator import itemgetter
from typing import Any

import attrs

from ironflow.commands.event import Event
from ironflow.errors import StoreError
from ironflow.history.codec import parse_timestamp
from ironflow.history.events import (
    EVENT_TYPES,
    ChildFailed,
    CommandScheduled,
    ErrorInfo,
    HistoryEvent,
    RetryScheduled,
    RunFailed,
    RunStarted,
    StepCompleted,
    StepFailed,
    WaitMatched,
)

UTC = _dt.UTC
_RUN, _BODY = itemgetter(0), itemgetter(4)  # a history row's run id, body
EPOCH = _dt.datetime(1970, 1, 1, tzinfo=UTC)


def to_us(ts: _dt.datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact)."""
    # datetime's own subtraction: pendulum's override would build a slow Interval.
    delta = _dt.datetime.__sub__(ts, EPOCH)
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(us: int) -> _dt.datetime:
    """Integer microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + _dt.timedelta(0, 0, us)  # (days, seconds, microseconds): no keyword parsing


def utc(ts: _dt.datetime) -> _dt.datetime:
    """``ts`` as a plain aware UTC datetime (what every stored timestamp is)."""
    if type(ts) is _dt.datetime and ts.tzinfo is UTC:
        return ts  # already one (the system clock's)
    if ts.tzinfo is None or ts.utcoffset() is None:
        raise ValueError(f"clock returned a naive datetime {ts!r}; clocks must return aware times")
    return from_us(to_us(ts))


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _compact_encoder(sort_keys: bool = False) -> Callable[[Any], str]:
    """Compact, NaN-refusing JSON text of a value.

    ``json.dumps`` builds its C encoder anew on every call, which costs more than encoding
    a small event body; this one is built once. Values reaching it were checked to be JSON
    (no cycles), so it skips the circular-reference check.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the plain encoder
        plain = json.JSONEncoder(separators=(",", ":"), allow_nan=False, sort_keys=sort_keys)
        return plain.encode
    encode = make(
        None,
        _not_json,
        json.encoder.encode_basestring_ascii,
        None,
        ":",
        ",",
        sort_keys,
        False,
        False,
    )
    join = "".join

    def dumps(value: Any) -> str:
        return join(encode(value, 0))

    return dumps


dumps = _compact_encoder()
dumps_sorted = _compact_encoder(sort_keys=True)  # one text for equal values, whatever key order


def event_body(event: Event) -> dict[str, Any]:
    return {"id": event.id, "name": event.name, "data": event.data, "ts": to_us(event.ts)}


def event_from_body(body: dict[str, Any]) -> Event:
    return Event(body["id"], body["name"], body["data"], from_us(body["ts"]))


def error_body(error: ErrorInfo) -> dict[str, Any]:
    return {"type": error.type, "message": error.message, "traceback": error.traceback}


def error_info(body: dict[str, Any]) -> ErrorInfo:
    return ErrorInfo(body["type"], body["message"], body.get("traceback"))


_FIELDS: dict[type, tuple[str, ...]] = {
    cls: tuple(a.name for a in attrs.fields(cls) if a.name not in ("seq", "ts"))
    for cls in EVENT_TYPES.values()
}


def encode(event: HistoryEvent) -> tuple[int, str, int, str]:
    """``(seq, type, ts_us, body_json)`` for the history table."""
    cls = type(event)
    # The two events every step writes are stored as arrays: faster to parse back.
    if cls is StepCompleted:
        e: Any = event
        return (e.seq, "StepCompleted", to_us(e.ts), dumps([e.id, e.attempt, e.result]))
    if cls is CommandScheduled:
        e = event
        fields = [e.id, e.kind, e.name, e.scope, e.fingerprint, e.detail]
        return (e.seq, "CommandScheduled", to_us(e.ts), dumps(fields))
    body = {name: getattr(event, name) for name in _FIELDS[cls]}
    if cls is RunStarted or cls is WaitMatched:
        body["event"] = event_body(body["event"])
        if cls is RunStarted:  # a batch's events are stored only for a batched run
            batch = body.pop("events")
            if batch is not None:
                body["events"] = [event_body(item) for item in batch]
    elif cls is RetryScheduled:
        body["at"] = to_us(body["at"])
    elif "error" in body:
        body["error"] = error_body(body["error"])
    return (event.seq, cls.__name__, to_us(event.ts), dumps(body))


def _plain(cls: type) -> Callable[[int, _dt.datetime, dict[str, Any]], HistoryEvent]:
    def build(seq: int, ts: _dt.datetime, body: dict[str, Any]) -> HistoryEvent:
        event: HistoryEvent = cls(seq=seq, ts=ts, **body)
        return event

    return build


_DECODERS: dict[str, Callable[[int, _dt.datetime, dict[str, Any]], HistoryEvent]] = {
    name: _plain(cls) for name, cls in EVENT_TYPES.items()
}
_DECODERS["RunStarted"] = lambda seq, ts, b: RunStarted(
    seq,
    ts,
    b["run_id"],
    b["function_id"],
    event_from_body(b["event"]),
    b.get("parent_run_id"),
    tuple(map(event_from_body, b["events"])) if "events" in b else None,
)
_DECODERS["CommandScheduled"] = lambda seq, ts, b: (
    CommandScheduled(seq, ts, *b) if type(b) is list else CommandScheduled(seq, ts, **b)
)
_DECODERS["StepCompleted"] = lambda seq, ts, b: (
    StepCompleted(seq, ts, *b) if type(b) is list else StepCompleted(seq, ts, **b)
)
_DECODERS["WaitMatched"] = lambda seq, ts, b: WaitMatched(
    seq, ts, b["id"], event_from_body(b["event"])
)
_DECODERS["StepFailed"] = lambda seq, ts, b: StepFailed(
    seq, ts, b["id"], b["attempt"], error_info(b["error"]), b["retryable"]
)
_DECODERS["ChildFailed"] = lambda seq, ts, b: ChildFailed(
    seq, ts, b["id"], b["child_run_id"], error_info(b["error"])
)
_DECODERS["RunFailed"] = lambda seq, ts, b: RunFailed(seq, ts, error_info(b["error"]))
_DECODERS["RetryScheduled"] = lambda seq, ts, b: RetryScheduled(
    seq, ts, b["id"], b["attempt"], from_us(b["at"]), b.get("jitter", 0.0)
)


class CorruptRow(Exception):
    """A stored row of run ``run_id`` that cannot be decoded; ``error`` says which and why.

    A carrier, not what users see: the engine blocks that run with ``error`` (a
    ``StoreError``), and raises ``error`` where a caller asked for the run's history."""

    def __init__(self, run_id: str, error: StoreError) -> None:
        super().__init__(str(error))
        self.run_id = run_id
        self.error = error


def corrupt_row(run_id: str, row: str, problem: str) -> CorruptRow:
    """``CorruptRow`` for ``row`` (``"history row seq 3 (StepCompleted)"``) of ``run_id``."""
    return CorruptRow(run_id, StoreError(f"run {run_id!r}: {row} cannot be decoded: {problem}"))


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic GC paused while a history is read and decoded; left as found if off.

    A read makes objects that live on (rows, then events): the GC would walk them again and
    again while they are made and free nothing. It catches up once afterwards, as after the
    worker's round, which pauses it too (so nested reads leave it paused)."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def decode_histories(
    found: list[Any], corrupt: dict[str, StoreError] | None = None
) -> dict[str, list[HistoryEvent]]:
    """Histories by run id from ``(run_id, seq, type, ts_us, body)`` rows in run, seq order.

    One ``json.loads`` over all bodies: per-call decoder overhead dominates small bodies.
    A run with a row that cannot be decoded raises ``CorruptRow`` (the first such run, in
    run id order); or, given ``corrupt``, every such run is left out and put there with the
    error naming its first bad row, so that a caller can set them all aside at once.
    """
    if not found:
        return {}
    with gc_paused():
        return _decode(found, corrupt)


def _decode(
    found: list[Any], corrupt: dict[str, StoreError] | None
) -> dict[str, list[HistoryEvent]]:
    try:
        bodies = json.loads("[" + ",".join(map(_BODY, found)) + "]")
        if len(bodies) != len(found):  # a damaged body that holds a comma: "1,2"
            raise ValueError("not one body per row")
    except (TypeError, ValueError):
        # Off the fast path: parse row by row to name the rows that are not JSON.
        bodies = [_body(row, corrupt) for row in found]
    histories: dict[str, list[HistoryEvent]] = {}
    total = len(found)
    end = 0
    # Rows come ordered by run id: one group per run, found without a per-row object.
    for run_id, group in groupby(found, _RUN):
        run_rows = list(group)
        start, end = end, end + len(run_rows)
        if corrupt is not None and run_id in corrupt:
            continue
        try:
            events = build(run_rows, bodies if end - start == total else bodies[start:end])
        except _BadEvent as bad:
            error = corrupt_row(run_id, bad.row, bad.problem)
            if corrupt is None:
                raise error from bad.__cause__
            corrupt[run_id] = error.error
            histories.pop(run_id, None)
            continue
        if run_id in histories:
            # Its rows came apart (only a collation that ties distinct ids would do that);
            # each run's rows are still in seq order.
            histories[run_id] += events
        else:
            histories[run_id] = events
    return histories


def _body(row: tuple[Any, ...], corrupt: dict[str, StoreError] | None) -> Any:
    run_id, seq, kind, _, body = row
    try:
        if not isinstance(body, str | bytes):
            raise TypeError(f"it is {type(body).__name__} {body!r}, not JSON text")
        return json.loads(body)
    except (TypeError, ValueError) as exc:
        error = corrupt_row(
            run_id, f"history row seq {seq} ({kind})", f"its body is not JSON: {exc}"
        )
        if corrupt is None:
            raise error from None
        corrupt.setdefault(run_id, error.error)  # its first bad row (rows come in seq order)
        return None


class _BadEvent(Exception):
    def __init__(self, row: str, problem: str) -> None:
        super().__init__(row, problem)
        self.row = row
        self.problem = problem


# The two events of every step are built slot by slot, not through their classes: the attrs
# ``__init__`` of a frozen class is a Python call that sets each field with
# ``object.__setattr__``; setting the slots' descriptors inline does the same in about a
# third fewer instructions. The instances are the same: same class, equal, same hash and repr.
_new = object.__new__


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Any, ...]:
    """The slot setters of ``cls`` in field order; its fields must be exactly ``names``."""
    fields = tuple(a.name for a in attrs.fields(cls))
    if fields != names:  # a field was added or moved: update the fast path in ``build``
        raise RuntimeError(f"{cls.__name__} fields are {fields}, the row codec expects {names}")
    return tuple(cls.__dict__[name].__set__ for name in names)


_STEP_COMPLETED = _slot_setters(StepCompleted, ("seq", "ts", "id", "attempt", "result"))
_COMMAND_SCHEDULED = _slot_setters(
    CommandScheduled, ("seq", "ts", "id", "kind", "name", "scope", "fingerprint", "detail")
)


def build(rows: list[Any], bodies: list[Any]) -> list[HistoryEvent]:
    """History events from ``(run_id, seq, type, ts_us, body)`` rows and their parsed bodies."""
    decoders = _DECODERS
    times: dict[int, _dt.datetime] = {}  # events of one commit share their timestamp
    events: list[HistoryEvent] = []
    append = events.append
    new, timedelta = _new, _dt.timedelta
    step_completed, command_scheduled = StepCompleted, CommandScheduled
    sc_seq, sc_ts, sc_id, sc_attempt, sc_result = _STEP_COMPLETED
    cs_seq, cs_ts, cs_id, cs_kind, cs_name, cs_scope, cs_fp, cs_detail = _COMMAND_SCHEDULED
    last_us, ts = None, EPOCH
    seq = kind = None
    event: Any
    try:  # free unless raised: the loop stays the fast path
        for (_, seq, kind, ts_us, _), body in zip(rows, bodies, strict=True):
            if ts_us != last_us:
                last_us = ts_us
                known = times.get(ts_us)
                if known is None:
                    known = times[ts_us] = EPOCH + timedelta(0, 0, ts_us)
                ts = known
            # The two events of every step, inline: most of a long history is these. Their
            # bodies are arrays (see ``encode``); any other shape takes the decoder's checks.
            if kind == "StepCompleted" and type(body) is list and len(body) == 3:
                event = new(step_completed)
                sc_seq(event, seq)
                sc_ts(event, ts)
                sc_id(event, body[0])
                sc_attempt(event, body[1])
                sc_result(event, body[2])
            elif kind == "CommandScheduled" and type(body) is list and len(body) == 6:
                event = new(command_scheduled)
                cs_seq(event, seq)
                cs_ts(event, ts)
                cs_id(event, body[0])
                cs_kind(event, body[1])
                cs_name(event, body[2])
                cs_scope(event, body[3])
                cs_fp(event, body[4])
                cs_detail(event, body[5])
            else:
                event = decoders[kind](seq, ts, body)
            append(event)
    except Exception as exc:
        # ``seq`` and ``kind`` are those of the row that failed.
        if isinstance(exc, KeyError) and kind not in decoders:
            problem = f"unknown event type {kind!r}"
        else:
            problem = f"{type(exc).__name__}: {exc}"
        raise _BadEvent(f"history row seq {seq} ({kind})", problem) from exc
    return events


def as_datetime(value: Any) -> _dt.datetime:
    """A due time from a Work item (datetime or ISO string) as an aware datetime."""
    if isinstance(value, _dt.datetime):
        return value
    return parse_timestamp(value)
