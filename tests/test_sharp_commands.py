"""Bad command input refused where the command is built (issue 10, items 1, 6, 9 and 11).

Durations the engine cannot schedule, instants it cannot store, step names it cannot store
or show (or that hold the scope separator '/'), and retry policies that contradict themselves
each raise ``ValueError`` naming the value, instead of failing later inside the engine.
"""

from __future__ import annotations

import datetime as _dt
import re
import threading
from collections.abc import Callable, Generator
from typing import Any

import pytest
from engine_kit import idle
from harness import Sim

import ironflow
from ironflow import Context, Engine, RetryPolicy, step
from ironflow.commands.durations import LATEST_INSTANT, MAX_DURATION, MAX_DURATION_DAYS
from ironflow.history import RunFailed
from ironflow.testing import VirtualClock


def echo(value: Any = None) -> Any:
    return value


# =============================================================================================
# 1. durations longer than the engine schedules
# =============================================================================================

DURATION_SITES: dict[str, Callable[[Any], Any]] = {
    "sleep": lambda d: step.sleep("nap", d),
    "step timeout": lambda d: step.run("call", echo, timeout=d),
    "wait timeout": lambda d: step.wait_for_event("wait", "go", timeout=d),
    "invoke timeout": lambda d: step.invoke("child", "kid", timeout=d),
    "retry initial_delay": lambda d: RetryPolicy(initial_delay=d, max_delay=d),
    "retry max_delay": lambda d: RetryPolicy(max_delay=d),
    "function retry": lambda d: ironflow.function(id="f", retry=RetryPolicy(max_delay=d)),
    "VirtualClock.advance": lambda d: VirtualClock().advance(d),
}
TOO_LONG = ["100000000d", "200000d", "36501d", _dt.timedelta(days=36501), 36501 * 86400, "P101Y"]


def test_the_maximum_is_100_years_and_fits_the_engines_arithmetic() -> None:
    assert MAX_DURATION.days == MAX_DURATION_DAYS == 36500
    # The engine stores instants as int64 microseconds and computes deadlines as datetimes;
    # the latest sleep_until target plus twice the maximum (a jittered retry delay) fits both.
    latest = LATEST_INSTANT + 2 * MAX_DURATION
    assert latest < _dt.datetime.max.replace(tzinfo=_dt.UTC)
    assert (latest - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)) // _dt.timedelta(
        microseconds=1
    ) < 2**63
    assert MAX_DURATION.total_seconds() < threading.TIMEOUT_MAX  # the worker's timed waits


@pytest.mark.parametrize("site", DURATION_SITES)
@pytest.mark.parametrize("value", TOO_LONG, ids=repr)
def test_every_duration_over_the_maximum_is_refused_when_built(site: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        DURATION_SITES[site](value)
    message = str(info.value)
    assert repr(value) in message
    assert "too long: the engine schedules at most 36500 days (100 years)" in message


@pytest.mark.parametrize("site", DURATION_SITES)
def test_the_maximum_itself_is_accepted_everywhere(site: str) -> None:
    DURATION_SITES[site]("36500d")


def test_an_overlong_sleep_fails_the_run_at_the_yield_instead_of_blocking_it(
    engine: Engine,
) -> None:
    @ironflow.function(id="forever")
    def forever(ctx: Context) -> Generator[Any, Any, None]:
        yield step.sleep("x", "100000000d")

    engine.register(forever)
    run_id = engine.start("forever")
    idle(engine)
    run = engine.get_run(run_id)
    assert run.status == "failed"  # was: blocked with OverflowError
    assert run.error is not None and run.error.type == "ValueError"
    assert "'100000000d' is too long" in run.error.message


def test_ten_years_and_the_maximum_work_end_to_end(engine: Engine, clock: VirtualClock) -> None:
    @ironflow.function(id="decade")
    def decade(ctx: Context) -> Generator[Any, Any, dict[str, str]]:
        started = ctx.now()
        got = yield from step.run("call", echo, "ok", timeout="3650d")
        event = yield from step.wait_for_event("wait", "go", timeout="3650d")
        yield from step.sleep("ten-years", "3650d")
        woke = ctx.now()
        child = yield from step.invoke("child", "kid", timeout="36500d")
        yield from step.sleep("a-century", "36500d")
        return {
            "started": started.isoformat(),
            "woke": woke.isoformat(),
            "end": ctx.now().isoformat(),
            "got": got,
            "event": event.data,
            "child": child,
        }

    @ironflow.function(id="kid")
    def kid(ctx: Context) -> Generator[Any, Any, str]:
        value: str = yield from step.run("k", echo, "kid")
        return value

    engine.register(decade)
    engine.register(kid)
    run_id = engine.start("decade")
    idle(engine)
    engine.emit("go", {"n": 1})
    idle(engine)
    clock.advance("3650d")
    idle(engine)
    assert engine.get_run(run_id).status == "waiting"  # the century
    clock.advance("36500d")
    idle(engine)
    run = engine.get_run(run_id)
    assert run.status == "completed", run.error
    assert run.output == {
        "started": "2026-01-01T00:00:00+00:00",
        "woke": "2035-12-30T00:00:00+00:00",
        "end": "2135-12-06T00:00:00+00:00",
        "got": "ok",
        "event": {"n": 1},
        "child": "kid",
    }


def test_a_retry_delay_of_the_maximum_with_full_jitter_is_scheduled(
    engine: Engine, clock: VirtualClock
) -> None:
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise RuntimeError("first try fails")
        return "second try"

    policy = RetryPolicy(max_attempts=2, initial_delay="36500d", max_delay="36500d", jitter=1.0)

    @ironflow.function(id="patient", retry=policy)
    def patient(ctx: Context) -> Generator[Any, Any, str]:
        result: str = yield from step.run("flaky", flaky)
        return result

    engine.register(patient)
    run_id = engine.start("patient")
    idle(engine)
    assert engine.get_run(run_id).status == "waiting" and len(tries) == 1
    clock.advance("36500d")
    idle(engine)
    clock.advance("36500d")  # up to twice the delay with jitter=1.0
    idle(engine)
    run = engine.get_run(run_id)
    assert (run.status, run.output, len(tries)) == ("completed", "second try", 2)


def test_retry_delays_of_late_attempts_do_not_overflow() -> None:
    policy = RetryPolicy(max_attempts=10_000, initial_delay="1s", backoff=2.0, max_delay="1h")
    # backoff ** 1499 is past what a float holds: this raised OverflowError in the worker.
    assert policy.delay_seconds(1500) == 3600.0
    assert policy.delay_seconds(9999, 0.5) == 3600.0
    assert RetryPolicy(max_attempts=5000, backoff=3).delay_seconds(4000) == 300.0


@pytest.mark.parametrize(
    "when",
    [
        "9999-12-31T23:59:59-01:00",  # past year 9999 in UTC: overflowed while converting
        "9999-12-31T23:59:59+00:00",
        _dt.datetime.max.replace(tzinfo=_dt.UTC),
        "9000-01-01T00:00:00.000001+00:00",
    ],
    ids=repr,
)
def test_sleep_until_past_the_latest_instant_is_refused(when: Any) -> None:
    with pytest.raises(ValueError) as info:
        step.sleep_until("later", when)
    assert str(info.value) == (
        f"sleep_until 'later' target {when!r} is too late: the latest instant the engine "
        f"schedules is 9000-01-01T00:00:00+00:00"
    )


def test_sleep_until_the_latest_instant_is_accepted() -> None:
    command = step.sleep_until("later", "9000-01-01T01:00:00+01:00")
    assert command.when == LATEST_INSTANT


def test_virtual_clock_refuses_to_pass_the_latest_instant() -> None:
    clock = VirtualClock("8999-12-31T00:00:00+00:00")
    with pytest.raises(ValueError, match=re.escape("cannot advance '2d' from 8999-12-31T00:00")):
        clock.advance("2d")
    assert clock.now() == _dt.datetime(8999, 12, 31, tzinfo=_dt.UTC)  # unchanged
    clock.advance("1d")
    with pytest.raises(ValueError, match="is too late"):
        clock.set("9999-01-01T00:00:00+00:00")
    with pytest.raises(ValueError, match="is too late"):
        VirtualClock("9500-01-01T00:00:00+00:00")


# =============================================================================================
# 6 and 11. step names that cannot be stored or shown, or that hold '/'
# =============================================================================================

NAME_SITES: dict[str, Callable[[str], Any]] = {
    "run": lambda n: step.run(n, echo),
    "sleep": lambda n: step.sleep(n, "1s"),
    "sleep_until": lambda n: step.sleep_until(n, "2030-01-01T00:00:00+00:00"),
    "wait_for_event": lambda n: step.wait_for_event(n, "go"),
    "parallel": lambda n: step.parallel(n, []),
    "map": lambda n: step.map(n, [], echo),
    "invoke": lambda n: step.invoke(n, "kid"),
    "invoke_async": lambda n: step.invoke_async(n, "kid"),
    "publish": lambda n: step.publish(n, "told"),
    "compensate": lambda n: step.compensate(n, echo),  # its step is 'compensate:<name>'
}
CONTROL = [
    ("line\nbreak", "'\\n' at index 4"),
    ("red\x1b[31m", "'\\x1b' at index 3"),
    ("tab\there", "'\\t' at index 3"),
    ("nul\x00", "'\\x00' at index 3"),
    ("del\x7f", "'\\x7f' at index 3"),
    ("c1\x85", "'\\x85' at index 2"),
    ("ünï\u2028code", "'\\u2028' at index 3"),
]


@pytest.mark.parametrize("site", NAME_SITES)
@pytest.mark.parametrize(("name", "where"), CONTROL, ids=[repr(n) for n, _ in CONTROL])
def test_control_characters_in_step_names_are_refused(site: str, name: str, where: str) -> None:
    with pytest.raises(ValueError) as info:
        NAME_SITES[site](name)
    assert str(info.value) == (
        f"step name {name!r} holds the control character {where}; step names are shown one "
        f"per line (`ironflow runs show`): use printable characters only"
    )


@pytest.mark.parametrize("site", NAME_SITES)
def test_a_lone_surrogate_in_a_step_name_is_refused(site: str) -> None:
    name = "caf\udce9"  # what os.fsdecode makes of b"caf\xe9"
    with pytest.raises(ValueError) as info:
        NAME_SITES[site](name)
    assert str(info.value).startswith(
        "step name 'caf\\udce9' cannot be stored: it holds the lone surrogate '\\udce9' at index 3"
    )


@pytest.mark.parametrize("site", NAME_SITES)
def test_a_slash_in_a_step_name_is_refused_as_reserved_for_scopes(site: str) -> None:
    with pytest.raises(ValueError) as info:
        NAME_SITES[site]("p/0/charge")
    assert str(info.value) == (
        "step name 'p/0/charge' contains '/', which is reserved for scope paths (step 'charge' "
        "in branch 0 of parallel 'p' has the id 'p/0/charge'); use another separator, such as "
        "'-' or '.'"
    )


@pytest.mark.parametrize("site", NAME_SITES)
@pytest.mark.parametrize("name", ["charge card", "café ☕", "日本語", "a.b-c_d:1", "x\u00a0y"])
def test_printable_names_of_any_script_are_accepted(site: str, name: str) -> None:
    assert NAME_SITES[site](name).name == name


def test_a_refused_name_is_refused_every_time() -> None:
    for _ in range(3):
        assert step.run("remembered", echo).name == "remembered"
        for bad in ("again\n", "again/0", "again\udc80"):
            with pytest.raises(ValueError, match=re.escape(repr(bad))):
                step.run(bad, echo)
            with pytest.raises(ValueError, match=re.escape(repr(bad))):
                step.sleep(bad, "1s")


def test_a_name_colliding_with_a_branch_id_is_refused_not_reported_as_used_twice() -> None:
    def flow(ctx: Any) -> Generator[Any, Any, Any]:
        yield step.parallel("p", [lambda s: s.run("charge", echo, 1)])
        yield step.run("p/0/charge", echo, 2)  # was: DuplicateStepError "used twice"

    sim = Sim(flow)
    sim.run_all()
    assert sim.decision.status == "failed"
    (failed,) = sim.events(RunFailed)
    assert failed.error.type == "ValueError"
    assert "'/', which is reserved for scope paths" in failed.error.message
    assert "used twice" not in failed.error.message


# =============================================================================================
# 9. a retry policy whose first delay exceeds its cap
# =============================================================================================


def test_initial_delay_longer_than_max_delay_is_refused_naming_both() -> None:
    with pytest.raises(ValueError) as info:
        RetryPolicy(initial_delay="10m")  # the default max_delay is 5m
    assert str(info.value) == (
        "RetryPolicy initial_delay (10 minutes) is longer than max_delay (5 minutes), which "
        "caps every delay; give a max_delay at least as long"
    )
    with pytest.raises(ValueError, match=re.escape("initial_delay (2 hours)")):
        RetryPolicy(initial_delay="2h", max_delay="1h")


def test_initial_delay_up_to_max_delay_is_accepted() -> None:
    policy = RetryPolicy(initial_delay="10m", max_delay="10m")
    assert policy.delay_seconds(1) == 600.0
    assert RetryPolicy(initial_delay="5m").delay_seconds(3) == 300.0
