"""History events survive JSON exactly; the value and error codecs hold their promises."""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import enum
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import Sim

import ironflow
from ironflow import step
from ironflow.commands import Event, kinds
from ironflow.commands.jsonvalue import NotJSONError, copy_json, to_json_value
from ironflow.history import (
    EVENT_TYPES,
    ChildCompleted,
    ChildFailed,
    ChildStarted,
    CommandScheduled,
    CompensationScheduled,
    ErrorInfo,
    EventPublished,
    PatchMarked,
    RetryScheduled,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    RunTimedOut,
    StepCompleted,
    StepFailed,
    TimerFired,
    WaitMatched,
    WaitTimedOut,
    decode_error,
    dumps,
    encode_error,
    event_from_dict,
    event_to_dict,
    loads,
    type_name,
)
from ironflow.history.errors import RemoteError
from ironflow.interpreter import replay
from ironflow.testing.golden import load_path

IST = dt.timezone(dt.timedelta(hours=5, minutes=30))
NYC = dt.timezone(dt.timedelta(hours=-5))
T1 = dt.datetime(2026, 3, 4, 10, 15, 30, 123456, tzinfo=IST)
T2 = dt.datetime(2026, 3, 4, 23, 59, 59, 999999, tzinfo=NYC)
T3 = dt.datetime(2026, 3, 5, 0, 0, 0, 1, tzinfo=dt.UTC)
EVENT = Event("ev-1", "order.created", {"orderId": "o-1", "items": [1, 2.5, None, True]}, T1)
ERROR = ErrorInfo("ValueError", "card declined: 'ü' \n second line", "Traceback...\nValueError")

SAMPLES: dict[str, Any] = {
    "RunStarted": RunStarted(
        seq=0, ts=T1, run_id="run-1", function_id="order", event=EVENT, parent_run_id="parent-1"
    ),
    "StepCompleted": StepCompleted(
        seq=1, ts=T2, id="both/0/charge", attempt=2, result={"id": "ch_1", "tags": ["a", "ü"]}
    ),
    "StepFailed": StepFailed(seq=2, ts=T3, id="charge", attempt=3, error=ERROR, retryable=False),
    "TimerFired": TimerFired(seq=3, ts=T1, id="cool-off"),
    "WaitMatched": WaitMatched(
        seq=4,
        ts=T2,
        id="approve",
        event=Event("ev-2", "order.approved", {"orderId": "o-1", "by": "ann"}, T2),
    ),
    "WaitTimedOut": WaitTimedOut(seq=5, ts=T3, id="approve"),
    "ChildStarted": ChildStarted(seq=6, ts=T1, id="child", child_run_id="run-1/child"),
    "ChildCompleted": ChildCompleted(
        seq=7, ts=T2, id="child", child_run_id="run-1/child", output=[1, {"x": None}]
    ),
    "ChildFailed": ChildFailed(
        seq=8,
        ts=T3,
        id="child",
        child_run_id="run-1/child",
        error=ErrorInfo("ironflow.errors.InvokeError", "child failed"),
    ),
    "EventPublished": EventPublished(seq=9, ts=T1, id="pub", event_id="run-1/pub"),
    "RunCancelled": RunCancelled(seq=10, ts=T2, reason="user asked", compensate=True),
    "RunResumed": RunResumed(seq=11, ts=T3, reason="code fixed"),
    "RunTimedOut": RunTimedOut(seq=11, ts=T1, reason="run did not finish within 1 hour"),
    "CommandScheduled": CommandScheduled(
        seq=12,
        ts=T1,
        id="both/1/approve",
        kind="wait_event",
        name="approve",
        scope="both/1",
        fingerprint="order.approved",
        detail={"due": "2026-03-11T04:45:30.123456+00:00", "match": "data.orderId", "v": 1.5},
    ),
    "RetryScheduled": RetryScheduled(seq=13, ts=T2, id="charge", attempt=2, at=T3, jitter=0.07),
    "CompensationScheduled": CompensationScheduled(
        seq=14, ts=T3, id="compensate:charge", for_step="charge"
    ),
    "PatchMarked": PatchMarked(seq=15, ts=T1, change_id="use-new-api"),
    "RunCompleted": RunCompleted(seq=16, ts=T2, output={"ok": True, "n": 3, "f": -0.5}),
    "RunFailed": RunFailed(
        seq=17, ts=T3, error=ErrorInfo("WaitTimeoutError", "waitForEvent timed out")
    ),
}


def test_there_is_a_sample_of_every_event_type() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)
    for name, sample in SAMPLES.items():
        assert type(sample) is EVENT_TYPES[name]


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_each_event_round_trips(name: str) -> None:
    event = SAMPLES[name]
    text = dumps([event])
    (back,) = loads(text)
    assert type(back) is type(event)
    assert back == event
    assert event_from_dict(event_to_dict(event)) == event
    assert dumps([back]) == text
    assert json.loads(text)[0]["type"] == name


@pytest.mark.parametrize("name", sorted(EVENT_TYPES))
def test_timestamps_come_back_in_utc_with_their_microseconds(name: str) -> None:
    event = SAMPLES[name]
    (back,) = loads(dumps([event]))
    stamps = [(event.ts, back.ts)]
    if isinstance(event, RetryScheduled):
        stamps.append((event.at, back.at))
    if isinstance(event, RunStarted | WaitMatched):
        stamps.append((event.event.ts, back.event.ts))
    for before, after in stamps:
        assert after == before
        assert after.utcoffset() == dt.timedelta(0)
        assert after.microsecond == before.astimezone(dt.UTC).microsecond
    raw = json.loads(dumps([event]))[0]["ts"]
    assert raw.endswith("+00:00")


def test_error_traceback_survives_even_though_it_is_not_compared() -> None:
    (back,) = loads(dumps([SAMPLES["StepFailed"]]))
    assert back.error.traceback == ERROR.traceback
    assert ErrorInfo("X", "m", "tb one") == ErrorInfo("X", "m", "tb two")


def test_a_whole_history_round_trips_and_dumps_are_stable() -> None:
    history = list(SAMPLES.values())
    text = dumps(history)
    back = loads(text)
    assert back == history
    assert dumps(back) == text
    assert dumps(back, indent=None) == dumps(history, indent=None)
    assert loads(json.dumps({"events": json.loads(text)})) == history


def test_load_path_reads_an_exported_file(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text(dumps(list(SAMPLES.values())), encoding="utf-8")
    assert load_path(path) == list(SAMPLES.values())
    assert load_path(str(path)) == list(SAMPLES.values())


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        dumps([StepCompleted(seq=1, ts=T1, id="a", attempt=1, result=math.nan)])


GOOD_TS = "2026-01-01T00:00:00+00:00"


def _timer(**fields: Any) -> str:
    body = {"type": "TimerFired", "seq": 1, "ts": GOOD_TS, "id": "a"}
    body.update(fields)
    return json.dumps([{k: v for k, v in body.items() if v is not _DROP}])


_DROP = object()

MALFORMED = [
    # (text, fragments the message must hold)
    ('[{"type": "Nope", "seq": 1}]', ["'Nope'", "unknown", "TimerFired"]),
    ('[{"seq": 1, "ts": "2026-01-01T00:00:00+00:00"}]', ["None", "unknown"]),
    ('[{"type": 5}]', ["5", "unknown"]),
    (_timer(id=_DROP), ["TimerFired", "missing", "$.id"]),
    (_timer(ts=_DROP), ["missing", "$.ts"]),
    (_timer(id=5), ["TimerFired", "$.id", "str"]),
    (_timer(id=None), ["$.id"]),
    (_timer(seq="x"), ["$.seq", "int"]),
    (_timer(seq=1.5), ["$.seq", "int"]),
    (_timer(seq=True), ["$.seq", "int"]),
    (_timer(ts="garbage"), ["$.ts", "'garbage'"]),
    (_timer(ts=5), ["$.ts"]),
    (_timer(ts="2026-01-01T00:00:00"), ["$.ts", "'2026-01-01T00:00:00'"]),
    (
        json.dumps(
            [
                {
                    "type": "StepFailed",
                    "seq": 1,
                    "ts": GOOD_TS,
                    "id": "a",
                    "attempt": 1,
                    "error": "boom",
                    "retryable": True,
                }
            ]
        ),
        ["StepFailed", "$.error"],
    ),
    (
        json.dumps(
            [
                {
                    "type": "StepFailed",
                    "seq": 1,
                    "ts": GOOD_TS,
                    "id": "a",
                    "attempt": 1,
                    "error": {"type": "ValueError"},
                    "retryable": True,
                }
            ]
        ),
        ["$.error.message", "missing"],
    ),
    (
        json.dumps(
            [
                {
                    "type": "StepFailed",
                    "seq": 1,
                    "ts": GOOD_TS,
                    "id": "a",
                    "attempt": 1,
                    "error": {"type": "ValueError", "message": "m"},
                    "retryable": "no",
                }
            ]
        ),
        ["$.retryable", "bool"],
    ),
    (
        json.dumps(
            [
                {
                    "type": "CommandScheduled",
                    "seq": 1,
                    "ts": GOOD_TS,
                    "id": "a",
                    "kind": "run",
                    "name": "a",
                    "scope": "",
                    "fingerprint": "f",
                    "detail": [1],
                }
            ]
        ),
        ["$.detail"],
    ),
    (
        json.dumps(
            [
                {
                    "type": "RunStarted",
                    "seq": 0,
                    "ts": GOOD_TS,
                    "run_id": "r",
                    "function_id": "f",
                    "event": {"id": "e", "name": "n", "data": None},
                }
            ]
        ),
        ["$.event.ts", "missing"],
    ),
    ('{"a": 1}', ["JSON list"]),
    ("5", ["JSON list"]),
    ("null", ["JSON list"]),
    ('"history"', ["JSON list"]),
    ("[5]", ["JSON object", "5"]),
    ('[["TimerFired"]]', ["JSON object", "['TimerFired']"]),
    ("not json", ["JSON"]),
    ("", ["JSON"]),
    (
        '[{"type": "StepCompleted", "seq": 1, "ts": "2026-01-01T00:00:00+00:00", '
        '"id": "a", "attempt": 1, "result": NaN}]',
        ["NaN"],
    ),
    (
        '[{"type": "RunCompleted", "seq": 1, "ts": "2026-01-01T00:00:00+00:00", '
        '"output": [Infinity]}]',
        ["Infinity"],
    ),
]


@pytest.mark.parametrize(("text", "fragments"), MALFORMED, ids=repr)
def test_loads_refuses_malformed_input_naming_the_problem(text: str, fragments: list[str]) -> None:
    with pytest.raises(ValueError) as info:
        loads(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{message!r} lacks {fragment!r}"


def test_event_from_dict_refuses_non_objects() -> None:
    with pytest.raises(ValueError, match="JSON object"):
        event_from_dict(["TimerFired"])


def test_ints_are_fine_where_floats_belong() -> None:
    (event,) = loads(
        json.dumps(
            [
                {
                    "type": "RetryScheduled",
                    "seq": 3,
                    "ts": GOOD_TS,
                    "id": "a",
                    "attempt": 2,
                    "at": "2026-01-01T00:00:01+00:00",
                    "jitter": 0,
                }
            ]
        )
    )
    assert event.jitter == 0.0 and type(event.jitter) is float


def test_optional_fields_may_be_left_out() -> None:
    (event,) = loads(json.dumps([{"type": "RunCancelled", "seq": 4, "ts": GOOD_TS}]))
    assert event == RunCancelled(seq=4, ts=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


# --- a real history through the codec and the interpreter ---------------------------------


def fetch(order_id: int) -> dict[str, Any]:
    return {"id": order_id, "pair": (1, 2), "f": 0.1}


def add(a: int, b: int) -> int:
    return a + b


def refund(order_id: int) -> None:
    return None


@ironflow.function(id="order", on="order.created")
def order_flow(ctx: Any) -> Any:
    got = yield step.run("fetch", fetch, ctx.event.data["id"])
    yield step.compensate("fetch", refund, got["id"])
    yield step.sleep("cool-off", "30m")
    approval = yield step.wait_for_event("approve", "order.approved", match="data.id", timeout="1d")
    a, b = yield step.parallel(
        "both", [lambda s: s.run("x", add, 1, 2), lambda s: s.run("x", add, 3, 4)]
    )
    event_id = yield step.publish("pub", "order.done", {"id": got["id"]})
    child = yield step.invoke("child", "other", {"x": 1})
    squares = yield step.map("sq", [1, 2, 3], lambda i, s, n: s.run("sq", add, i, i))
    return {
        "by": approval.data["by"],
        "sum": a + b,
        "event": event_id,
        "child": child,
        "squares": squares,
        "at": ctx.now().isoformat(),
        "uuid": str(ctx.uuid()),
    }


def drive(sim: Sim) -> None:
    """Carry the run to its end: steps run for real, waits match, children complete."""
    for _ in range(200):
        if sim.decision.done:
            return
        work = sim.decision.pending[0]
        sim.tick(1.25)
        if work.kind == kinds.WAIT_EVENT:  # with the data the workflow reads
            sim.match(work.id, "order.approved", {"id": 7, "by": "ann"})
        else:  # as a runtime would: steps run, timers fire, the child completes
            sim.carry_out(work)
    raise AssertionError("the run did not finish")


def test_a_simulated_history_replays_identically_after_the_codec() -> None:
    sim = Sim(order_flow, {"id": 7})
    drive(sim)
    assert sim.decision.done and sim.decision.status == "completed"
    assert sim.decision.output["squares"] == [2, 4, 6]

    loaded = loads(dumps(sim.history))
    assert loaded == sim.history
    assert dumps(loaded) == dumps(sim.history)
    # Every decision the live run took, a fresh replay of the decoded prefix takes too.
    for length, decision in sim.decisions:
        assert replay(order_flow, loaded[:length]) == decision
    assert replay(order_flow, loaded) == replay(order_flow, sim.history)


class CardDeclined(Exception):
    pass


def test_a_failing_history_replays_identically_after_the_codec() -> None:
    calls = {"flaky": 0}

    def flaky() -> str:
        calls["flaky"] += 1
        if calls["flaky"] == 1:
            raise ConnectionError("try again")
        return "ok"

    def charge() -> None:
        raise ironflow.NonRetryableError("card declined for good")

    def undo_broken() -> None:
        raise CardDeclined("undo broke too")

    @ironflow.function(id="failing", retry=ironflow.RetryPolicy(max_attempts=2, jitter=0.5))
    def failing(ctx: Any) -> Any:
        yield step.run("flaky", flaky)
        yield step.compensate("flaky", undo_broken)
        yield step.compensate("flaky-2", refund, 1)
        with contextlib.suppress(ZeroDivisionError):
            yield step.run("oops", lambda: 1 / 0, retry=ironflow.RetryPolicy(max_attempts=1))
        yield step.run("charge", charge)
        return "unreachable"

    sim = Sim(failing, {"n": 1})
    sim.run_all()
    assert sim.decision.done and sim.decision.status == "failed"
    kinds = {type(event).__name__ for event in sim.history}
    assert {"StepFailed", "RetryScheduled", "CompensationScheduled", "RunFailed"} <= kinds

    loaded = loads(dumps(sim.history))
    assert loaded == sim.history
    for length, decision in sim.decisions:
        assert replay(failing, loaded[:length]) == decision
    for length in range(1, len(sim.history) + 1):
        assert replay(failing, loaded[:length]) == replay(failing, sim.history[:length])
    final = replay(failing, loaded)
    assert final.done and final.status == "failed"
    assert "card declined for good" in str(final.error)


# --- JSON values --------------------------------------------------------------------------


class Color(str, enum.Enum):  # noqa: UP042 -- str() of such a member is "Color.RED"
    RED = "red"


class Shade(enum.StrEnum):
    DARK = "dark"


class Size(enum.IntEnum):
    BIG = 3


class Loud(str):
    def __str__(self) -> str:
        return "LOUD"


class Ratio(float):
    pass


class Box(dict):  # type: ignore[type-arg]
    pass


class Bag(list):  # type: ignore[type-arg]
    pass


Point = collections.namedtuple("Point", "x y")

NORMALISED = [
    ((1, 2), [1, 2]),
    ({"a": (1, (2, 3))}, {"a": [1, [2, 3]]}),
    (Point(1, (2,)), [1, [2]]),
    (Loud("quiet"), "quiet"),
    (Ratio(0.5), 0.5),
    (Box(a=Bag([1])), {"a": [1]}),
    (collections.OrderedDict(b=1, a=2), {"b": 1, "a": 2}),
    (True, True),
    (None, None),
    (-0.0, -0.0),
    ("ü\n", "ü\n"),
    (10**30, 10**30),
]


@pytest.mark.parametrize(("value", "expected"), NORMALISED, ids=repr)
def test_to_json_value_normalises_to_plain_types(value: Any, expected: Any) -> None:
    out = to_json_value(value)
    assert out == expected
    assert json.loads(json.dumps(out)) == expected

    def plain(v: Any) -> bool:
        if isinstance(v, dict):
            return type(v) is dict and all(type(k) is str and plain(i) for k, i in v.items())
        if isinstance(v, list):
            return type(v) is list and all(plain(i) for i in v)
        return v is None or type(v) in (str, int, float, bool)

    assert plain(out), f"{out!r} still holds subclasses"


REJECTED = [
    # (value, path in the message, the bad part)
    (math.nan, "result", math.nan),
    (math.inf, "result", math.inf),
    (-math.inf, "result", -math.inf),
    ({"a": [1, math.nan]}, "result['a'][1]", math.nan),
    ([(0, {"x": math.inf})], "result[0][1]['x']", math.inf),
    ({1: "one"}, "result", 1),
    ({"a": {None: 1}}, "result['a']", None),
    ({"a": {1.5: 1}}, "result['a']", 1.5),
    ({"s": {1, 2}}, "result['s']", {1, 2}),
    ([b"x"], "result[0]", b"x"),
    ([dt.date(2026, 1, 1)], "result[0]", dt.date(2026, 1, 1)),
    (Ratio("nan"), "result", math.nan),
    # Enum members, even str/int ones: the workflow would get back the plain value, not the
    # member (issue 10, item 10: they were stored as their value before).
    (Color.RED, "result", Color.RED),
    ({"c": Color.RED}, "result['c']", Color.RED),
    ({Color.RED: 1}, "result", Color.RED),
    (Shade.DARK, "result", Shade.DARK),
    ([Size.BIG], "result[0]", Size.BIG),
]


@pytest.mark.parametrize(("value", "path", "bad"), REJECTED, ids=repr)
def test_to_json_value_rejects_naming_the_path(value: Any, path: str, bad: Any) -> None:
    with pytest.raises(NotJSONError) as info:
        to_json_value(value, "result")
    message = str(info.value)
    assert message.startswith(path + " "), message
    assert repr(bad) in message
    assert isinstance(info.value, TypeError)


def test_non_str_keys_message_says_keys_must_be_strings() -> None:
    with pytest.raises(NotJSONError, match="keys must be strings"):
        to_json_value({1: 2})


def test_to_json_value_does_not_share_containers() -> None:
    inner = [1]
    value = {"a": inner}
    out = to_json_value(value)
    inner.append(2)
    assert out == {"a": [1]}


def test_copy_json_is_deep() -> None:
    value = {"a": [{"b": 1}]}
    copied = copy_json(value)
    copied["a"][0]["b"] = 2
    assert value == {"a": [{"b": 1}]}


# --- the error codec ----------------------------------------------------------------------


class PaymentError(Exception):
    pass


class Outer:
    class InnerError(ValueError):
        pass


class TwoArgs(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code


class KeywordOnly(Exception):
    def __init__(self, *, why: str) -> None:
        super().__init__(why)


class NoArgs(Exception):
    def __init__(self) -> None:
        super().__init__("always the same")


class FancyStr(Exception):
    """Its ``__str__`` needs an attribute only its ``__init__`` sets."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a, b)
        self.a = a

    def __str__(self) -> str:
        return f"fancy {self.a}"


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (ValueError("bad"), "ValueError"),
        (KeyError("k"), "KeyError"),
        (ZeroDivisionError("division by zero"), "ZeroDivisionError"),
        (FileNotFoundError(2, "no such file", "f.txt"), "FileNotFoundError"),
        (ironflow.StepError("s", step_id="x", attempts=2), "ironflow.errors.StepError"),
        (ironflow.WaitTimeoutError(), "ironflow.errors.WaitTimeoutError"),
        (PaymentError("declined"), f"{__name__}.PaymentError"),
        (Outer.InnerError("inner"), f"{__name__}.Outer.InnerError"),
        (TwoArgs(402, "declined"), f"{__name__}.TwoArgs"),
        (KeywordOnly(why="because"), f"{__name__}.KeywordOnly"),
        (NoArgs(), f"{__name__}.NoArgs"),
        (FancyStr(1, 2), f"{__name__}.FancyStr"),
        (ValueError(), "ValueError"),
        (ValueError(1, 2), "ValueError"),
    ],
    ids=repr,
)
def test_errors_round_trip_as_their_own_class(exc: BaseException, name: str) -> None:
    info = encode_error(exc)
    assert info.type == name
    assert info.type == type_name(type(exc))
    back = decode_error(info)
    assert isinstance(back, type(exc))
    assert str(back) == str(exc)
    assert encode_error(back) == info
    # And once more through JSON.
    (event,) = loads(dumps([RunFailed(seq=1, ts=T1, error=info)]))
    assert event.error == info


def test_builtins_are_stored_by_bare_name_and_user_classes_module_qualified() -> None:
    assert type_name(ValueError) == "ValueError"
    assert type_name(ironflow.NonRetryableError) == "ironflow.errors.NonRetryableError"
    assert type_name(Outer.InnerError) == f"{__name__}.Outer.InnerError"


def test_traceback_is_stored_when_asked() -> None:
    try:
        raise PaymentError("declined")
    except PaymentError as exc:
        info = encode_error(exc, with_traceback=True)
        assert encode_error(exc).traceback is None
    assert info.traceback is not None
    assert "PaymentError: declined" in info.traceback
    assert "test_traceback_is_stored_when_asked" in info.traceback


@pytest.mark.parametrize(
    "name",
    [
        "nosuchmodule.PaymentError",
        "ironflow.errors.NoSuchError",
        f"{__name__}.Outer.Missing",
        "NoSuchBuiltinError",
        "print",  # a builtin, but not an exception class
        "ironflow.errors",  # a module, not a class
        f"{__name__}.fetch",  # a function, not a class
    ],
)
def test_a_class_not_loaded_becomes_remote_error_keeping_its_name(name: str) -> None:
    back = decode_error(ErrorInfo(name, "declined"))
    assert isinstance(back, RemoteError)
    assert back.type_name == name
    assert str(back) == f"{name}: declined"
    assert encode_error(back) == ErrorInfo(name, "declined")


def test_decoding_never_imports() -> None:
    name = "ironflow_never_imported_module_xyz"
    assert name not in sys.modules
    back = decode_error(ErrorInfo(f"{name}.Boom", "m"))
    assert isinstance(back, RemoteError)
    assert name not in sys.modules
