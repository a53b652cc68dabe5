"""Values a step returns, or a caller passes, that JSON cannot hold (issue 10, item 10).

A naive datetime used to become a string in the worker's local time zone, an enum member its
value. Now: JSON only, or an attrs class/dataclass converted by cattrs (naive datetimes
refused there too); everything else fails the step non-retryably with nothing memoized, with a
message naming the type, the path inside the value and what to do instead. Live and replay
agree. Values nest at most ``MAX_DEPTH`` (100) lists/dicts deep.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import uuid
from typing import Any

import attrs
import pytest

import ironflow
from ironflow import RetryPolicy, step
from ironflow.commands.jsonvalue import MAX_DEPTH
from ironflow.history import StepCompleted, StepFailed
from ironflow.testing import replay
from ironflow.testing.simulate import Simulation
from ironflow.testing.strategies import Tape


class Color(enum.Enum):
    RED = "red"


class Shade(enum.StrEnum):
    DARK = "dark"


class Size(enum.IntEnum):
    BIG = 3


NAIVE = dt.datetime(2026, 3, 1, 9, 30)
AWARE = dt.datetime(2026, 3, 1, 9, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))


def nested(levels: int) -> list[Any]:
    """A list holding a list ... ``levels`` lists in all."""
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def run_step_returning(engine: Any, value: Any) -> tuple[Any, Any, str]:
    calls = []

    def produce() -> Any:
        calls.append(1)
        return value

    @ironflow.function(id="produce", retry=RetryPolicy(max_attempts=3, initial_delay="1s"))
    def flow(ctx: Any) -> Any:
        return (yield step.run("produce", produce))

    engine.register(flow)
    rid = engine.start("produce")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert len(calls) == 1, "a value that cannot be stored is not retried"
    return flow, run, rid


# --- step results that are not JSON ---------------------------------------------------------

REFUSED = [
    ({"when": NAIVE}, "result['when'] is a datetime.datetime", "isoformat()"),
    ({"when": AWARE}, "result['when'] is a datetime.datetime", "isoformat()"),
    ([dt.date(2026, 3, 1)], "result[0] is a datetime.date", "isoformat()"),
    (Color.RED, "result is a test_sharp_values.Color", ".value"),
    ({"shade": Shade.DARK}, "result['shade'] is a test_sharp_values.Shade", ".value"),
    ([Size.BIG], "result[0] is a test_sharp_values.Size", ".value"),
    ({Shade.DARK: 1}, "result has the key <Shade.DARK: 'dark'>", ".value as the key"),
    ({"tags": {1, 2}}, "result['tags'] is a builtins.set", "sorted list"),
    ({"raw": b"x"}, "result['raw'] is a builtins.bytes", "base64"),
    ({"price": decimal.Decimal("9.99")}, "result['price'] is a decimal.Decimal", "a str"),
    ({"id": uuid.UUID(int=1)}, "result['id'] is a uuid.UUID", "str(value)"),
    ({"gap": dt.timedelta(hours=1)}, "result['gap'] is a datetime.timedelta", "total_seconds"),
]


@pytest.mark.parametrize(("value", "where", "fix"), REFUSED, ids=repr)
def test_a_non_json_result_fails_the_step_for_good_naming_path_type_and_fix(
    engine: Any, value: Any, where: str, fix: str
) -> None:
    flow, run, rid = run_step_returning(engine, value)
    assert run.status == "failed"
    assert run.error.type == "TypeError"
    message = run.error.message
    assert message.startswith("step 'produce' returned a value ironflow cannot store: " + where)
    assert fix in message
    assert "return annotation" in message  # the way to keep a class: attrs/dataclass
    history = engine.history(rid)
    assert not [e for e in history if isinstance(e, StepCompleted)], "nothing memoized"
    (failed,) = [e for e in history if isinstance(e, StepFailed)]
    assert failed.retryable is False
    # A replay of the stored history decides the same: the same failure, the same message.
    again = replay(flow, history)
    assert again.status == "failed" and str(again.error) == message


def test_a_naive_datetime_no_longer_becomes_a_local_time_string(engine: Any) -> None:
    _, run, _ = run_step_returning(engine, {"when": NAIVE})
    assert run.status == "failed"
    assert "naive datetime would be read in each worker's local time zone" in run.error.message


# --- attrs and dataclass results: converted by cattrs ---------------------------------------


@attrs.frozen
class Meeting:
    title: str
    when: dt.datetime
    color: Color


@dataclasses.dataclass(frozen=True)
class Slot:
    when: dt.datetime
    size: Size


@attrs.frozen
class Loose:
    meta: dict[str, Any]


def test_an_annotated_attrs_result_keeps_aware_datetimes_and_enum_members(engine: Any) -> None:
    seen: list[Any] = []

    def book() -> Meeting:
        return Meeting("kickoff", AWARE, Color.RED)

    def slot() -> Slot:
        return Slot(AWARE, Size.BIG)

    @ironflow.function(id="book")
    def flow(ctx: Any) -> Any:
        meeting = yield step.run("book", book)
        free = yield step.run("slot", slot)
        seen.append((meeting, free))
        return {"when": meeting.when.isoformat(), "color": meeting.color.value}

    engine.register(flow)
    rid = engine.start("book")
    output = engine.wait(rid, timeout=10)
    ((meeting, free),) = seen
    assert isinstance(meeting, Meeting) and meeting.color is Color.RED
    assert meeting.when == AWARE and meeting.when.utcoffset() == dt.timedelta(0)  # same instant
    assert isinstance(free, Slot) and free.size is Size.BIG and free.when == AWARE
    assert output == {"when": "2026-03-01T07:30:00+00:00", "color": "red"}
    # Live and replay agree: the replay gets the same values from the stored history.
    assert replay(flow, engine.history(rid)).output == output
    assert seen[1] == seen[0]


class Shade(enum.StrEnum):
    DARK = "dark"


class Tone(str, enum.Enum):  # noqa: UP042 - the pre-3.11 spelling users still write
    WARM = "warm"


@attrs.frozen
class Palette:
    shade: Shade
    shades: list[Shade]
    tone: Tone
    label: str


def test_str_enum_fields_come_back_as_members_and_a_str_field_as_a_str(engine: Any) -> None:
    # cattrs dispatches a StrEnum field by its MRO to the str hook, which passed the member
    # through, and the JSON check then refused what the docs promise to keep.
    seen: list[Any] = []

    def paint() -> Palette:
        return Palette(Shade.DARK, [Shade.DARK], Tone.WARM, Shade.DARK)

    @ironflow.function(id="paint")
    def flow(ctx: Any) -> Any:
        palette = yield step.run("paint", paint)
        seen.append(palette)
        return [
            type(palette.shade).__name__,
            type(palette.shades[0]).__name__,
            type(palette.tone).__name__,
            type(palette.label).__name__,
        ]

    engine.register(flow)
    rid = engine.start("paint")
    output = engine.wait(rid, timeout=10)
    assert output == ["Shade", "Shade", "Tone", "str"]  # a field typed str gets a plain str
    assert seen[0] == Palette(Shade.DARK, [Shade.DARK], Tone.WARM, "dark")
    [completed] = [e for e in engine.history(rid) if isinstance(e, StepCompleted)]
    assert completed.result == {
        "shade": "dark",
        "shades": ["dark"],
        "tone": "warm",
        "label": "dark",
    }
    assert replay(flow, engine.history(rid)).output == output
    assert seen[1] == seen[0]


def test_a_naive_datetime_in_an_attrs_result_is_refused(engine: Any) -> None:
    def book() -> Meeting:
        return Meeting("kickoff", NAIVE, Color.RED)

    @ironflow.function(id="naive")
    def flow(ctx: Any) -> Any:
        yield step.run("book", book)

    engine.register(flow)
    rid = engine.start("naive")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.type == "TypeError"
    message = run.error.message
    assert "result is a test_sharp_values.Meeting" in message
    assert "is a naive datetime" in message and "give it a time zone" in message
    assert replay(flow, engine.history(rid)).status == "failed"


def test_a_field_typed_any_holds_plain_json_only(engine: Any) -> None:
    def loose() -> Loose:
        return Loose({"color": Color.RED})

    @ironflow.function(id="loose")
    def flow(ctx: Any) -> Any:
        yield step.run("loose", loose)

    engine.register(flow)
    rid = engine.start("loose")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed"
    assert "a field typed Any must hold plain JSON" in run.error.message
    assert "test_sharp_values.Color" in run.error.message


@attrs.frozen
class Bare:
    """Containers without item types: what they hold is as untyped as a field typed Any."""

    mapping: dict = attrs.Factory(dict)  # type: ignore[type-arg]
    items: list = attrs.Factory(list)  # type: ignore[type-arg]
    pair: tuple = ()  # type: ignore[type-arg]


@dataclasses.dataclass(frozen=True)
class BareRows:
    rows: list[dict]  # type: ignore[type-arg]


@pytest.mark.parametrize(
    ("value", "typed", "where"),
    [
        (Bare(mapping={"k": Color.RED}), "dict", "its value['k'] is a test_sharp_values.Color"),
        (Bare(mapping={Color.RED: 1}), "dict", "its value has the key <Color.RED: 'red'>"),
        (Bare(items=[Shade.DARK]), "list", "its value[0] is a test_sharp_values.Shade"),
        (Bare(pair=(1, Size.BIG)), "tuple", "its value[1] is a test_sharp_values.Size"),
        (Bare(mapping={"at": AWARE}), "dict", "its value['at'] is a datetime.datetime"),
        (BareRows([{"k": Color.RED}]), "dict", "its value['k'] is a test_sharp_values.Color"),
    ],
    ids=["dict value", "dict key", "list", "tuple", "aware datetime", "list of dict"],
)
def test_a_field_typed_dict_list_or_tuple_without_item_types_holds_plain_json_only(
    engine: Any, value: Any, typed: str, where: str
) -> None:
    # cattrs would unstructure such items by their runtime type: a member to its plain
    # value, never to be turned back, so they are refused like in a field typed Any.
    flow, run, rid = run_step_returning(engine, value)
    assert run.status == "failed" and run.error.type == "TypeError"
    message = run.error.message
    assert (
        f"whose fields cannot be stored: a field typed {typed} without item types must hold "
        f"plain JSON, since nothing converts its items back; name the item types "
        f"(dict[str, Color], list[datetime]...) to get them back: {where}"
    ) in message, message
    assert not [e for e in engine.history(rid) if isinstance(e, StepCompleted)]
    assert str(replay(flow, engine.history(rid)).error) == message


@attrs.frozen
class Typed:
    colors: dict[str, Color]
    sizes: list[Size]


def test_plain_json_in_bare_containers_and_members_in_typed_ones_are_kept(engine: Any) -> None:
    seen: list[Any] = []

    def bare() -> Bare:
        return Bare({"n": [1, (2, 3)], "none": None}, [{"a": "b"}], (1, "x"))

    def typed() -> Typed:
        return Typed({"k": Color.RED}, [Size.BIG])

    @ironflow.function(id="containers")
    def flow(ctx: Any) -> Any:
        seen.append((yield step.run("bare", bare)))
        seen.append((yield step.run("typed", typed)))

    engine.register(flow)
    engine.wait(engine.start("containers"), timeout=10)
    assert seen == [
        Bare({"n": [1, [2, 3]], "none": None}, [{"a": "b"}], (1, "x")),
        Typed({"k": Color.RED}, [Size.BIG]),
    ]
    assert seen[1].colors["k"] is Color.RED and seen[1].sizes[0] is Size.BIG


def test_the_check_kit_stores_results_as_the_engine_does() -> None:
    def produce() -> Any:
        return {"when": NAIVE}

    @ironflow.function(id="kit")
    def flow(ctx: Any) -> Any:
        yield step.run("produce", produce)

    outcome = Simulation(flow, None, Tape([]), crashes=False).run()
    assert outcome.status == "failed"
    assert outcome.error is not None
    assert "step 'produce' returned a value ironflow cannot store: result['when']" in (
        outcome.error
    )


# --- data passed in: its own wording, no talk of step return annotations --------------------


def test_start_and_emit_data_say_what_they_are(engine: Any) -> None:
    @ironflow.function(id="target", on="thing")
    def target(ctx: Any) -> Any:
        return None
        yield

    engine.register(target)
    with pytest.raises(TypeError) as start_error:
        engine.start("target", {"when": NAIVE})
    with pytest.raises(TypeError) as emit_error:
        engine.emit("thing", {"color": Color.RED})
    start_message, emit_message = str(start_error.value), str(emit_error.value)
    assert start_message.startswith("start data['when'] is a datetime.datetime")
    assert emit_message.startswith("data of event 'thing'['color'] is a test_sharp_values.Color")
    for message in (start_message, emit_message):
        assert "annotation" not in message
        assert "Values must be JSON: dicts with string keys" in message
    assert engine.list_runs() == []


@pytest.mark.parametrize(
    ("build", "where"),
    [
        (lambda: step.publish("p", "evt", {"at": NAIVE}), "data of publish 'p'['at']"),
        (lambda: step.invoke("i", "child", [Shade.DARK]), "data of invoke 'i'[0]"),
        (lambda: step.invoke_async("a", "child", {1, 2}), "data of invoke 'a' is"),
        (
            lambda: step.wait_for_event("w", "evt", match="data.k", value=Size.BIG),
            "value of wait 'w' is",
        ),
    ],
    ids=["publish", "invoke", "invoke_async", "wait value"],
)
def test_command_data_names_the_argument_not_step_results(build: Any, where: str) -> None:
    with pytest.raises(TypeError) as caught:
        build()
    message = str(caught.value)
    assert message.startswith(where)
    assert "annotation" not in message and "step's result" not in message


def test_a_workflow_return_value_names_itself(engine: Any) -> None:
    @ironflow.function(id="returns-a-date")
    def flow(ctx: Any) -> Any:
        yield step.run("a", str, "x")
        return {"on": dt.date(2026, 3, 1)}

    engine.register(flow)
    rid = engine.start("returns-a-date")
    engine.run_until_idle()
    run = engine.get_run(rid)
    assert run.status == "failed" and run.error.type == "TypeError"
    assert run.error.message.startswith(
        "the workflow's return value['on'] is a datetime.date (datetime.date(2026, 3, 1))"
    )
    assert "annotation" not in run.error.message
    assert str(replay(flow, engine.history(rid)).error) == run.error.message


# --- how deep values may nest ---------------------------------------------------------------


def test_max_depth_is_one_hundred() -> None:
    assert MAX_DEPTH == 100


def test_data_at_the_limit_is_stored_and_one_deeper_is_refused(engine: Any) -> None:
    @ironflow.function(id="echo-data", on="deep")
    def flow(ctx: Any) -> Any:
        return ctx.event.data
        yield

    engine.register(flow)
    rid = engine.start("echo-data", nested(MAX_DEPTH))
    assert engine.wait(rid, timeout=10) == nested(MAX_DEPTH)
    for call in (
        lambda: engine.start("echo-data", nested(MAX_DEPTH + 1)),
        lambda: engine.emit("deep", {"x": nested(MAX_DEPTH)}),
        lambda: engine.start("echo-data", nested(1000)),
        lambda: step.publish("p", "evt", nested(MAX_DEPTH + 1)),
    ):
        with pytest.raises(ValueError, match="nested more than 100 lists/dicts deep") as caught:
            call()
        assert "RecursionError" not in str(caught.value)
        assert len(str(caught.value)) < 400  # the path is clipped, not 100 levels of [0]
    assert [run.id for run in engine.list_runs()] == [rid]


def test_a_step_result_one_level_too_deep_fails_with_value_error(engine: Any) -> None:
    flow, run, rid = run_step_returning(engine, {"tree": nested(MAX_DEPTH)})
    assert run.status == "failed" and run.error.type == "ValueError"
    assert run.error.message.startswith(
        "step 'produce' returned a value ironflow cannot store: result['tree']"
    )
    assert "nested more than 100 lists/dicts deep" in run.error.message
    assert str(replay(flow, engine.history(rid)).error) == run.error.message
