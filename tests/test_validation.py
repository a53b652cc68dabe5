"""Bad input is refused at the builder boundary, with a message that names the bad value."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from typing import Any

import pendulum
import pytest

import ironflow
from ironflow import RetryPolicy, step
from ironflow.commands import (
    Compensate,
    Invoke,
    InvokeAsync,
    Map,
    Parallel,
    Publish,
    RunStep,
    Sleep,
    SleepUntil,
    WaitEvent,
)


def noop(*args: Any) -> None:
    return None


def workflow(ctx: Any) -> Any:
    yield step.run("a", noop)


def raises_naming(
    kind: type[Exception], value: Any, fn: Callable[[], Any], *fragments: str
) -> Exception:
    """Call ``fn``; it must raise ``kind`` whose message holds ``repr(value)`` and fragments."""
    with pytest.raises(kind) as info:
        fn()
    message = str(info.value)
    assert repr(value) in message, f"{message!r} does not name {value!r}"
    for fragment in fragments:
        assert fragment in message, f"{message!r} does not mention {fragment!r}"
    return info.value


# --- names --------------------------------------------------------------------------------

BAD_NAMES = ["", "   ", "\t\n", None, 5, 1.5, b"name", ["a"]]

BUILDERS_BY_NAME: dict[str, Callable[[Any], Any]] = {
    "run": lambda name: step.run(name, noop),
    "sleep": lambda name: step.sleep(name, "1s"),
    "sleep_until": lambda name: step.sleep_until(name, "2030-01-01T00:00:00+00:00"),
    "wait_for_event": lambda name: step.wait_for_event(name, "order.approved"),
    "parallel": lambda name: step.parallel(name, [lambda s: s.run("a", noop)]),
    "map": lambda name: step.map(name, [1], lambda item, s, i: s.run("a", noop)),
    "invoke": lambda name: step.invoke(name, "child"),
    "invoke_async": lambda name: step.invoke_async(name, "child"),
    "publish": lambda name: step.publish(name, "order.done"),
    "compensate": lambda name: step.compensate(name, noop),
}

EXPECTED_CLASS = {
    "run": RunStep,
    "sleep": Sleep,
    "sleep_until": SleepUntil,
    "wait_for_event": WaitEvent,
    "parallel": Parallel,
    "map": Map,
    "invoke": Invoke,
    "invoke_async": InvokeAsync,
    "publish": Publish,
    "compensate": Compensate,
}


@pytest.mark.parametrize("builder", sorted(BUILDERS_BY_NAME))
@pytest.mark.parametrize("name", BAD_NAMES, ids=repr)
def test_every_builder_rejects_a_bad_name(builder: str, name: Any) -> None:
    raises_naming(ValueError, name, lambda: BUILDERS_BY_NAME[builder](name), "name")


@pytest.mark.parametrize("builder", sorted(BUILDERS_BY_NAME))
def test_every_builder_accepts_a_good_name_and_keeps_it(builder: str) -> None:
    command = BUILDERS_BY_NAME[builder]("charge-card #1")
    assert isinstance(command, EXPECTED_CLASS[builder])
    assert command.name == "charge-card #1"


def test_name_error_says_what_a_name_must_be() -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        step.sleep("", "1s")


EVENT_BUILDERS: dict[str, Callable[[Any], Any]] = {
    "wait_for_event": lambda event: step.wait_for_event("w", event),
    "publish": lambda event: step.publish("p", event),
}


@pytest.mark.parametrize("builder", sorted(EVENT_BUILDERS))
@pytest.mark.parametrize("event", BAD_NAMES, ids=repr)
def test_event_names_are_checked(builder: str, event: Any) -> None:
    raises_naming(ValueError, event, lambda: EVENT_BUILDERS[builder](event), "event name")


@pytest.mark.parametrize("builder", sorted(EVENT_BUILDERS))
def test_event_names_are_trimmed_the_same_way_by_wait_and_publish(builder: str) -> None:
    # A published " order.done " must reach a wait on "order.done": both trim alike.
    assert EVENT_BUILDERS[builder]("  order.done ").event == "order.done"


@pytest.mark.parametrize("match", ["", "  ", 5])
def test_wait_match_path_is_checked(match: Any) -> None:
    raises_naming(ValueError, match, lambda: step.wait_for_event("w", "e", match=match), "match")


def test_wait_value_needs_a_match_path() -> None:
    with pytest.raises(ValueError, match=r"'w'.*match="):
        step.wait_for_event("w", "e", value=5)


INVOKE_BUILDERS: dict[str, Callable[[Any], Any]] = {
    "invoke": lambda function: step.invoke("i", function),
    "invoke_async": lambda function: step.invoke_async("i", function),
}


@pytest.mark.parametrize("builder", sorted(INVOKE_BUILDERS))
@pytest.mark.parametrize("function", BAD_NAMES, ids=repr)
def test_function_ids_are_checked(builder: str, function: Any) -> None:
    raises_naming(ValueError, function, lambda: INVOKE_BUILDERS[builder](function), "function id")


@pytest.mark.parametrize("builder", sorted(INVOKE_BUILDERS))
def test_invoke_takes_an_id_or_a_declared_function(builder: str) -> None:
    declared = ironflow.function(id="child-flow")(workflow)
    assert INVOKE_BUILDERS[builder]("child-flow").function == "child-flow"
    assert INVOKE_BUILDERS[builder](declared).function == "child-flow"


# --- durations ----------------------------------------------------------------------------

GOOD_DURATIONS = [
    ("500ms", 0.5),
    ("30s", 30.0),
    ("1.5m", 90.0),
    ("2h", 7200.0),
    ("7d", 7 * 86400.0),
    (".25s", 0.25),
    ("PT30S", 30.0),
    (dt.timedelta(minutes=3), 180.0),
    (dt.timedelta(milliseconds=1), 0.001),
    (pendulum.duration(hours=1, minutes=30), 5400.0),
    (45, 45.0),
    (2.5, 2.5),
    (0.001, 0.001),
]

BAD_DURATIONS = [
    0,
    -1,
    0.0,
    -0.5,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "5 m",
    "10x",
    "0s",
    "0ms",
    "-5s",
    "5",
    "1e3s",
    " 5s",
    "PT0S",
    "soon",
    True,
    False,
    None,
    dt.timedelta(0),
    dt.timedelta(seconds=-1),
    [5],
    b"5s",
    1e300,  # does not fit a timedelta: still a ValueError, not an OverflowError
    10**30,
    "99999999999999d",
    1e-9,  # rounds to a zero duration
    "0.0001ms",
]

DURATION_SITES: dict[str, Callable[[Any], Any]] = {
    "sleep": lambda d: step.sleep("nap", d).duration,
    "wait timeout": lambda d: step.wait_for_event("nap", "e", timeout=d).timeout,
    "invoke timeout": lambda d: step.invoke("nap", "child", timeout=d).timeout,
    "step timeout": lambda d: step.run("nap", noop, timeout=d).timeout,
    # initial_delay may not exceed max_delay (issue 10, item 9): give both.
    "retry initial_delay": lambda d: RetryPolicy(initial_delay=d, max_delay=d).initial_delay,
    "retry max_delay": lambda d: RetryPolicy(initial_delay=d, max_delay=d).max_delay,
}


@pytest.mark.parametrize("site", sorted(DURATION_SITES))
@pytest.mark.parametrize(("value", "seconds"), GOOD_DURATIONS, ids=repr)
def test_durations_are_parsed(site: str, value: Any, seconds: float) -> None:
    parsed = DURATION_SITES[site](value)
    assert isinstance(parsed, pendulum.Duration)
    assert parsed.total_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize("site", sorted(DURATION_SITES))
@pytest.mark.parametrize("value", BAD_DURATIONS, ids=repr)
def test_bad_durations_are_refused_naming_the_value(site: str, value: Any) -> None:
    if value is None and site in ("invoke timeout", "step timeout"):
        # Not bad input there: timeout=None is the default and means "no timeout".
        assert DURATION_SITES[site](value) is None
        return
    raises_naming(ValueError, value, lambda: DURATION_SITES[site](value))


@pytest.mark.parametrize("site", ["sleep", "wait timeout", "invoke timeout", "step timeout"])
def test_duration_errors_name_the_step(site: str) -> None:
    raises_naming(ValueError, "10x", lambda: DURATION_SITES[site]("10x"), "'nap'")


@pytest.mark.parametrize("value", ["10x", "5 m", ""])
def test_unparseable_duration_message_shows_the_accepted_forms(value: str) -> None:
    raises_naming(ValueError, value, lambda: step.sleep("nap", value), '"500ms"', '"7d"')


def test_no_timeout_is_the_default_for_run_and_invoke() -> None:
    assert step.run("r", noop).timeout is None
    assert step.run("r", noop, timeout=None).timeout is None
    assert step.invoke("i", "child").timeout is None


def test_wait_timeout_defaults_to_seven_days() -> None:
    assert step.wait_for_event("w", "e").timeout.total_seconds() == 7 * 86400


# --- sleep_until --------------------------------------------------------------------------

BAD_INSTANTS = [
    dt.datetime(2030, 1, 1, 9, 0),
    pendulum.naive(2030, 1, 1, 9, 0),
    "2030-01-01T09:00:00",
    "2030-01-01 09:00",
    "garbage",
    "",
    "2030-13-01T00:00:00+00:00",
    "2030-01-01",
    "09:00+02:00",
    "P1D",
    5,
    None,
    dt.date(2030, 1, 1),
]


@pytest.mark.parametrize("when", BAD_INSTANTS, ids=repr)
def test_sleep_until_refuses_naive_or_unparseable_targets(when: Any) -> None:
    raises_naming(ValueError, when, lambda: step.sleep_until("alarm", when), "'alarm'")


def test_naive_target_message_says_to_add_an_offset() -> None:
    with pytest.raises(ValueError, match=r"naive.*offset"):
        step.sleep_until("alarm", dt.datetime(2030, 1, 1))


UTC = dt.UTC
GOOD_INSTANTS = [
    (
        dt.datetime(2030, 1, 1, 9, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        dt.datetime(2030, 1, 1, 7, 0, tzinfo=UTC),
    ),
    (
        dt.datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=UTC),
        dt.datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=UTC),
    ),
    (
        pendulum.datetime(2030, 1, 1, 0, 0, tz="Europe/Paris"),
        dt.datetime(2029, 12, 31, 23, 0, tzinfo=UTC),
    ),
    ("2030-01-01T09:00:00+02:00", dt.datetime(2030, 1, 1, 7, 0, tzinfo=UTC)),
    ("2030-01-01T00:00:00Z", dt.datetime(2030, 1, 1, 0, 0, tzinfo=UTC)),
    (
        "2030-01-01T00:00:00.654321-05:30",
        dt.datetime(2030, 1, 1, 5, 30, 0, 654321, tzinfo=UTC),
    ),
]


@pytest.mark.parametrize(("when", "expected"), GOOD_INSTANTS, ids=repr)
def test_sleep_until_accepts_aware_targets_in_utc(when: Any, expected: dt.datetime) -> None:
    target = step.sleep_until("alarm", when).when
    assert target == expected
    assert target.utcoffset() == dt.timedelta(0)
    assert target.tzinfo is not None and target.tzinfo.tzname(target) == "UTC"
    assert target.microsecond == expected.microsecond


# --- parallel and map options -------------------------------------------------------------

FAN_OUT: dict[str, Callable[..., Any]] = {
    "parallel": lambda **kw: step.parallel("fan", [lambda s: s.run("a", noop)], **kw),
    "map": lambda **kw: step.map("fan", [1, 2], lambda item, s, i: s.run("a", noop), **kw),
}


@pytest.mark.parametrize("builder", sorted(FAN_OUT))
@pytest.mark.parametrize("concurrency", [0, -1, 1.5, True, False, "2", math.inf])
def test_concurrency_must_be_a_positive_int(builder: str, concurrency: Any) -> None:
    raises_naming(
        ValueError, concurrency, lambda: FAN_OUT[builder](concurrency=concurrency), "concurrency"
    )


@pytest.mark.parametrize("builder", sorted(FAN_OUT))
@pytest.mark.parametrize("concurrency", [None, 1, 3, 1000])
def test_good_concurrency_is_kept(builder: str, concurrency: Any) -> None:
    assert FAN_OUT[builder](concurrency=concurrency).concurrency == concurrency


@pytest.mark.parametrize("builder", sorted(FAN_OUT))
@pytest.mark.parametrize("on_error", ["nope", "FAIL_FAST", "", None, ["fail_fast"]])
def test_unknown_on_error_is_refused(builder: str, on_error: Any) -> None:
    raises_naming(
        ValueError,
        on_error,
        lambda: FAN_OUT[builder](on_error=on_error),
        "'fail_fast'",
        "'all_settled'",
    )


@pytest.mark.parametrize("builder", sorted(FAN_OUT))
@pytest.mark.parametrize("on_error", ["fail_fast", "all_settled"])
def test_known_on_error_is_kept(builder: str, on_error: str) -> None:
    assert FAN_OUT[builder](on_error=on_error).on_error == on_error


def test_parallel_branches_are_kept_in_order() -> None:
    branches = [lambda s: s.run("a", noop), lambda s: s.run("b", noop)]
    assert step.parallel("p", iter(branches)).branches == tuple(branches)


def test_map_items_become_a_tuple_and_empty_is_fine() -> None:
    assert step.map("m", [3, 4], noop).items == (3, 4)
    assert step.map("m", [], noop).items == ()


@pytest.mark.parametrize("branches", [noop, "ab", 5, None])
def test_parallel_branches_must_be_a_list(branches: Any) -> None:
    raises_naming(TypeError, branches, lambda: step.parallel("p", branches), "'p'")


@pytest.mark.parametrize("items", ["ab", 5, None])
def test_map_items_must_be_a_list(items: Any) -> None:
    raises_naming(TypeError, items, lambda: step.map("m", items, noop), "'m'")


# --- callables ----------------------------------------------------------------------------

NOT_CALLABLE = [None, 5, "noop", ["noop"]]


@pytest.mark.parametrize("fn", NOT_CALLABLE, ids=repr)
def test_step_function_must_be_callable(fn: Any) -> None:
    raises_naming(TypeError, fn, lambda: step.run("charge", fn), "'charge'", "callable")


@pytest.mark.parametrize("fn", NOT_CALLABLE, ids=repr)
def test_branch_must_be_callable(fn: Any) -> None:
    raises_naming(
        TypeError, fn, lambda: step.parallel("p", [noop, fn]), "branch 1", "'p'", "callable"
    )


@pytest.mark.parametrize("fn", NOT_CALLABLE, ids=repr)
def test_map_function_must_be_callable(fn: Any) -> None:
    raises_naming(TypeError, fn, lambda: step.map("m", [1], fn), "'m'", "callable")


@pytest.mark.parametrize("fn", NOT_CALLABLE, ids=repr)
def test_undo_must_be_callable(fn: Any) -> None:
    raises_naming(TypeError, fn, lambda: step.compensate("charge", fn), "'charge'", "callable")


def test_async_step_functions_are_accepted() -> None:
    async def fetch() -> int:
        return 1

    assert step.run("fetch", fetch).fn is fetch


@pytest.mark.parametrize("retry", [3, "3", {"max_attempts": 3}])
def test_step_retry_must_be_a_policy(retry: Any) -> None:
    raises_naming(TypeError, retry, lambda: step.run("r", noop, retry=retry), "RetryPolicy")


def test_step_args_are_kept() -> None:
    command = step.run("r", noop, 1, "two", retry=RetryPolicy(max_attempts=5))
    assert command.args == (1, "two")
    assert command.retry == RetryPolicy(max_attempts=5)
    assert step.compensate("r", noop, 7).args == (7,)


# --- JSON data ----------------------------------------------------------------------------

DATA_SITES: dict[str, Callable[[Any], Any]] = {
    "invoke": lambda data: step.invoke("i", "child", data).data,
    "invoke_async": lambda data: step.invoke_async("i", "child", data).data,
    "publish": lambda data: step.publish("i", "order.done", data).data,
    "wait value": lambda data: step.wait_for_event("i", "e", match="data.id", value=data).value,
}

BAD_DATA = [
    # (data, the path the message must show, the offending value)
    ({"a": [1, {2}]}, "['a'][1]", {2}),
    ({"a": [1, math.nan]}, "['a'][1]", math.nan),
    ([{"x": math.inf}], "[0]['x']", math.inf),
    ({"when": dt.datetime(2030, 1, 1)}, "['when']", dt.datetime(2030, 1, 1)),
    ({"b": b"bytes"}, "['b']", b"bytes"),
    (object, "", object),
    ({1: "one"}, "", 1),
    ({"nested": {("a",): 1}}, "['nested']", ("a",)),
]


@pytest.mark.parametrize("site", sorted(DATA_SITES))
@pytest.mark.parametrize(("data", "path", "bad"), BAD_DATA, ids=repr)
def test_non_json_data_is_refused_naming_the_path(
    site: str, data: Any, path: str, bad: Any
) -> None:
    exc = raises_naming(TypeError, bad, lambda: DATA_SITES[site](data), "'i'")
    assert f"'i'{path}" in str(exc)


@pytest.mark.parametrize("site", sorted(DATA_SITES))
def test_json_data_is_normalised(site: str) -> None:
    data = {"t": (1, 2), "nested": [{"ok": True, "n": None, "f": 1.5}]}
    assert DATA_SITES[site](data) == {"t": [1, 2], "nested": [{"ok": True, "n": None, "f": 1.5}]}


def test_data_defaults_to_none() -> None:
    assert step.invoke("i", "child").data is None
    assert step.publish("p", "e").data is None


# --- RetryPolicy --------------------------------------------------------------------------

BAD_POLICIES = [
    ("max_attempts", 0),
    ("max_attempts", -1),
    ("max_attempts", 1.5),
    ("max_attempts", True),
    ("max_attempts", "3"),
    ("max_attempts", None),
    ("backoff", 0.5),
    ("backoff", 0),
    ("backoff", -2),
    ("backoff", math.nan),
    ("backoff", math.inf),
    ("backoff", True),
    ("backoff", "2"),
    ("jitter", -0.1),
    ("jitter", 1.5),
    ("jitter", math.nan),
    ("jitter", True),
    ("jitter", "0.1"),
    ("initial_delay", 0),
    ("initial_delay", "10x"),
    ("initial_delay", None),
    ("initial_delay", -1),
    ("max_delay", "0s"),
    ("max_delay", math.inf),
    ("max_delay", "5 m"),
]


@pytest.mark.parametrize(("field", "value"), BAD_POLICIES, ids=repr)
def test_retry_policy_refuses_bad_values(field: str, value: Any) -> None:
    fragment = "retry delay" if field.endswith("delay") else field
    raises_naming(ValueError, value, lambda: RetryPolicy(**{field: value}), fragment)


def test_retry_policy_max_attempts_message_says_it_counts_the_first_try() -> None:
    with pytest.raises(ValueError, match="first try"):
        RetryPolicy(max_attempts=0)


def test_retry_policy_defaults_and_good_values() -> None:
    default = RetryPolicy()
    assert default.max_attempts == 3
    assert default.initial_delay.total_seconds() == 1
    assert default.backoff == 2.0
    assert default.max_delay.total_seconds() == 300
    assert default.jitter == 0.0
    policy = RetryPolicy(max_attempts=1, initial_delay="500ms", backoff=1, max_delay="1h", jitter=1)
    assert policy.initial_delay.total_seconds() == 0.5
    assert policy.max_delay.total_seconds() == 3600
    assert RetryPolicy(initial_delay=dt.timedelta(seconds=2)).initial_delay.total_seconds() == 2


def test_retry_delays_grow_and_are_capped() -> None:
    policy = RetryPolicy(initial_delay="1s", backoff=2, max_delay="5s", jitter=0.5)
    assert [policy.delay_seconds(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]
    assert policy.delay_seconds(1, roll=0.5) == pytest.approx(1.25)


# --- @ironflow.function -------------------------------------------------------------------


@pytest.mark.parametrize("fid", BAD_NAMES, ids=repr)
def test_function_id_must_be_a_name(fid: Any) -> None:
    raises_naming(ValueError, fid, lambda: ironflow.function(id=fid), "function id")


@pytest.mark.parametrize(
    ("on", "bad"),
    [
        ("", ""),
        ("   ", "   "),
        ([], []),
        ((), ()),
        (5, 5),
        ({"order.created"}, {"order.created"}),
        (["order.created", ""], ""),
        (["order.created", 5], 5),
        ([None], None),
    ],
    ids=repr,
)
def test_function_on_must_name_events(on: Any, bad: Any) -> None:
    raises_naming(ValueError, bad, lambda: ironflow.function(id="f", on=on))


@pytest.mark.parametrize(
    ("on", "triggers"),
    [
        (None, ()),
        ("order.created", ("order.created",)),
        ("order.*", ("order.*",)),
        (["a", " b "], ("a", "b")),
        (("a",), ("a",)),
    ],
)
def test_function_on_is_normalised(on: Any, triggers: tuple[str, ...]) -> None:
    declared = ironflow.function(id="f", on=on)(workflow)
    assert declared.on == triggers
    assert declared.id == "f"


def test_function_wildcard_triggers() -> None:
    declared = ironflow.function(id="f", on=["order.*", "user.created"])(workflow)
    assert declared.triggered_by("order.paid")
    assert declared.triggered_by("user.created")
    assert not declared.triggered_by("user.deleted")


def test_function_retry_must_be_a_policy() -> None:
    raises_naming(TypeError, 3, lambda: ironflow.function(id="f", retry=3), "RetryPolicy")


def plain(ctx: Any) -> int:
    return 1


async def coroutine(ctx: Any) -> int:
    return 1


async def async_gen(ctx: Any) -> Any:
    yield 1


@pytest.mark.parametrize("fn", [plain, coroutine, async_gen, lambda ctx: 1], ids=repr)
def test_function_must_be_a_generator_function(fn: Any) -> None:
    with pytest.raises(TypeError) as info:
        ironflow.function(id="f")(fn)
    message = str(info.value)
    assert repr(fn.__qualname__) in message
    assert "generator function" in message
    assert "yield" in message


@pytest.mark.parametrize("fn", [5, None, "workflow"], ids=repr)
def test_function_must_be_callable(fn: Any) -> None:
    raises_naming(TypeError, fn, lambda: ironflow.function(id="f")(fn), "generator function")


def test_declared_function_calls_through() -> None:
    declared = ironflow.function(id="f", retry=RetryPolicy(max_attempts=2))(workflow)
    assert isinstance(declared, ironflow.Function)
    assert declared.fn is workflow
    assert declared.retry == RetryPolicy(max_attempts=2)
    command = next(declared(None))
    assert isinstance(command, RunStep) and command.name == "a"
