"""Flow control applied when events arrive or times come (issue 13): idempotency, rate_limit,
batch_events, debounce, cancel_on and Cron triggers, and the events that started no run.

Every test runs on SQLite and PostgreSQL (the ``engine`` fixture) with a virtual clock.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import pytest
from click.testing import CliRunner

import ironflow
from ironflow import Engine, step
from ironflow.cli.main import cli
from ironflow.commands.flow import Batch, CancelOn, Cron, Debounce, RateLimit
from ironflow.history import dumps, loads
from ironflow.runtime import flow_timed
from ironflow.testing import VirtualClock, replay

T0 = _dt.datetime(2024, 1, 1, tzinfo=_dt.UTC)


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


def outputs(engine: Engine, function: str) -> list[Any]:
    """The outputs of ``function``'s runs, oldest first (all must have completed)."""
    runs = sorted(engine.list_runs(function=function), key=lambda run: (run.created_at, run.id))
    assert all(run.status == "completed" for run in runs), [(r.id, r.status) for r in runs]
    return [run.output for run in runs]


# --- idempotency ---------------------------------------------------------------------------


@ironflow.function(id="charge", on="order.created", idempotency="data.orderId")
def charge(ctx: Any) -> Any:
    return ctx.event.data["orderId"]
    yield


def test_idempotency_a_duplicate_key_within_a_day_starts_nothing(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(charge)
    first = engine.emit("order.created", {"orderId": "o-1"})
    assert len(first) == 1
    assert engine.emit("order.created", {"orderId": "o-1", "again": True}) == []
    assert len(engine.emit("order.created", {"orderId": "o-2"})) == 1
    clock.advance("23h")
    assert engine.emit("order.created", {"orderId": "o-1"}) == []
    clock.advance("1h")  # 24 h after the first: the key is free again
    assert len(engine.emit("order.created", {"orderId": "o-1"})) == 1
    engine.run_until_idle()
    found = outputs(engine, "charge")  # the first two started at one virtual instant
    assert sorted(found[:2]) == ["o-1", "o-2"] and found[2:] == ["o-1"], found
    skipped = engine.list_events()
    assert [(s.name, s.function, s.reason) for s in skipped] == [
        ("order.created", "charge", "idempotency")
    ] * 2
    assert skipped[1].data == {"orderId": "o-1", "again": True}
    assert 'idempotency key "o-1"' in skipped[0].detail


def test_idempotency_by_a_callable_key(engine: Engine) -> None:
    @ironflow.function(
        id="by-email", on="signup", idempotency=lambda event: event.data["email"].lower()
    )
    def by_email(ctx: Any) -> Any:
        return ctx.event.data["email"]
        yield

    engine.register(by_email)
    assert len(engine.emit("signup", {"email": "A@x.io"})) == 1
    assert engine.emit("signup", {"email": "a@X.io"}) == []
    engine.run_until_idle()
    assert outputs(engine, "by-email") == ["A@x.io"]


def test_a_key_function_that_fails_names_the_function_and_event(engine: Engine) -> None:
    @ironflow.function(id="bad-key", on="signup", idempotency=lambda event: event.data["nope"])
    def bad_key(ctx: Any) -> Any:
        return None
        yield

    engine.register(bad_key)
    with pytest.raises(ValueError, match="idempotency key of function 'bad-key' failed"):
        engine.emit("signup", {"email": "a"})
    assert engine.list_runs() == []


# --- rate limit ----------------------------------------------------------------------------


@ironflow.function(id="notify", on="alert", rate_limit=RateLimit(2, "1m", key="data.user"))
def notify(ctx: Any) -> Any:
    return ctx.event.data["n"]
    yield


@ironflow.function(id="listener", on="listen")
def listener(ctx: Any) -> Any:
    got = yield step.wait_for_event("alert", event="alert", match="data.user", timeout="1h")
    return got.data["n"]


def test_rate_limit_events_over_the_limit_start_no_run_but_are_recorded(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(notify)
    engine.register(listener)
    waiting = engine.start("listener", {"user": "u-2"})
    engine.run_until_idle()
    runs: list[str] = []  # in emit order: runs started at one virtual instant tie on time

    def emit(user: str, n: int) -> int:
        started = engine.emit("alert", {"user": user, "n": n})
        runs.extend(started)
        return len(started)

    assert [emit("u-1", n) for n in range(4)] == [1, 1, 0, 0]
    assert emit("u-2", 10) == 1  # another key's window
    clock.advance("30s")
    assert emit("u-1", 4) == 0
    clock.advance("30s")  # the window slid past the first two
    assert emit("u-1", 5) == 1
    assert emit("u-1", 6) == 1
    assert emit("u-1", 7) == 0
    engine.run_until_idle()
    assert sorted(outputs(engine, "notify")) == [0, 1, 5, 6, 10]
    assert [engine.get_run(run_id).output for run_id in runs] == [0, 1, 10, 5, 6]
    skipped = engine.list_events(function="notify")
    assert [s.data["n"] for s in skipped] == [7, 4, 3, 2]
    assert {s.reason for s in skipped} == {"rate_limit"}
    assert "rate limit of 2 per 1 minute" in skipped[0].detail
    assert engine.get_run(waiting).output == 10  # its wait took u-2's event


def test_a_rate_limited_event_still_satisfies_a_wait(engine: Engine) -> None:
    engine.register(notify)
    engine.register(listener)
    for n in range(2):
        engine.emit("alert", {"user": "u-3", "n": n})
    waiting = engine.start("listener", {"user": "u-3"})
    engine.run_until_idle()
    assert engine.emit("alert", {"user": "u-3", "n": 99}) == []  # over the limit
    engine.run_until_idle()
    assert engine.get_run(waiting).output == 99
    assert [s.data["n"] for s in engine.list_events("alert")] == [99]


# --- debounce ------------------------------------------------------------------------------


@ironflow.function(id="reindex", on="doc.edited", debounce=Debounce("10s", key="data.doc"))
def reindex(ctx: Any) -> Any:
    return ctx.event.data
    yield


def test_debounce_a_burst_makes_one_run_with_its_last_event(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(reindex)
    assert engine.emit("doc.edited", {"doc": "b", "v": 0}) == []
    for version in range(5):  # an edit of "a" every 9 s: its burst goes on
        assert engine.emit("doc.edited", {"doc": "a", "v": version}) == []
        clock.advance("9s")
        engine.run_until_idle()
    # "b" had one event, 45 s ago: its run started; "a"'s burst is still going.
    assert outputs(engine, "reindex") == [{"doc": "b", "v": 0}]
    clock.advance("1s")  # 10 s after "a"'s last edit
    engine.run_until_idle()
    assert outputs(engine, "reindex") == [{"doc": "b", "v": 0}, {"doc": "a", "v": 4}]
    run = next(r for r in engine.list_runs(function="reindex") if r.output["doc"] == "a")
    assert engine.history(run.id)[0].event.data == {"doc": "a", "v": 4}


def test_debounce_max_wait_caps_the_delay_from_the_first_event(
    engine: Engine, clock: VirtualClock
) -> None:
    @ironflow.function(id="capped", on="tick", debounce=Debounce("10s", max_wait="25s"))
    def capped(ctx: Any) -> Any:
        return ctx.event.data
        yield

    engine.register(capped)
    for n in range(6):  # an event every 5 s: without max_wait it would never settle
        engine.emit("tick", n)
        clock.advance("5s")
        engine.run_until_idle()
    # 25 s after the first (n=0 at 0 s) the run started, with the last event by then (n=4,
    # at 20 s); n=5 (at 25 s) began the next burst.
    assert outputs(engine, "capped") == [4]
    engine.emit("tick", 6)  # at 30 s: the burst's last event
    clock.advance("10s")
    engine.run_until_idle()
    assert outputs(engine, "capped") == [4, 6]


# --- batching -----------------------------------------------------------------------------


@ironflow.function(id="bulk", on="row", batch_events=Batch(3, "5s", key="data.table"))
def bulk(ctx: Any) -> Any:
    first = ctx.event.data["n"]
    total = yield step.run("sum", lambda: sum(e.data["n"] for e in ctx.events))
    return {"first": first, "ns": [e.data["n"] for e in ctx.events], "total": total}


def test_batch_starts_one_run_when_full_or_at_its_timeout(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(bulk)
    assert engine.emit("row", {"table": "t", "n": 1}) == []
    assert engine.emit("row", {"table": "u", "n": 100}) == []
    assert engine.emit("row", {"table": "t", "n": 2}) == []
    full = engine.emit("row", {"table": "t", "n": 3})
    assert len(full) == 1
    engine.run_until_idle()
    assert engine.get_run(full[0]).output == {"first": 1, "ns": [1, 2, 3], "total": 6}
    clock.advance("2s")
    assert engine.emit("row", {"table": "t", "n": 4}) == []  # a new batch of "t", due at 7 s
    clock.advance("2s")
    engine.run_until_idle()
    assert len(engine.list_runs(function="bulk")) == 1  # "u" and the second "t" still open
    clock.advance("1s")  # "u"'s timeout (5 s after its first event)
    engine.run_until_idle()
    assert sorted(r["first"] for r in outputs(engine, "bulk")) == [1, 100]
    clock.advance("2s")
    engine.run_until_idle()
    assert sorted(r["ns"] for r in outputs(engine, "bulk")) == [[1, 2, 3], [4], [100]]


def test_a_batched_runs_events_replay_exactly(engine: Engine) -> None:
    engine.register(bulk)
    for n in (5, 6, 7):
        ids = engine.emit("row", {"table": "r", "n": n})
    engine.run_until_idle()
    (run_id,) = ids
    history = engine.history(run_id)
    started = history[0]
    assert [e.data["n"] for e in started.events] == [5, 6, 7]
    assert started.event == started.events[0]
    exported = loads(dumps(history))
    assert exported == history
    decision = replay(bulk, exported)
    assert decision.output == {"first": 5, "ns": [5, 6, 7], "total": 18}
    # A run without a batch exports its RunStarted as before batches existed.
    engine.register(charge)
    (plain,) = engine.emit("order.created", {"orderId": "x"})
    engine.run_until_idle()
    assert "events" not in json.loads(dumps(engine.history(plain)))[0]


# --- cancel_on -----------------------------------------------------------------------------


@ironflow.function(
    id="onboard", on="user.signed_up", cancel_on=CancelOn("user.deleted", match="data.userId")
)
def onboard(ctx: Any) -> Any:
    yield step.run("welcome", lambda: "sent")
    yield step.sleep("wait-a-day", "1d")
    yield step.run("follow-up", lambda: "sent")
    return "done"


def test_cancel_on_cancels_a_parked_run_at_once_and_names_the_event(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(onboard)
    (early,) = engine.emit("user.signed_up", {"userId": "u-0"})
    engine.emit("user.deleted", {"userId": "u-0"})  # before u-1 signed up: not its cancel
    (one,) = engine.emit("user.signed_up", {"userId": "u-1"})
    (two,) = engine.emit("user.signed_up", {"userId": "u-2"})
    engine.run_until_idle()
    assert engine.get_run(early).status == "cancelled"  # u-0's cancel came after u-0 began
    assert engine.get_run(one).status == "waiting"
    engine.emit("user.deleted", {"userId": "u-1"})
    engine.run_until_idle()
    run = engine.get_run(one)
    assert run.status == "cancelled"
    assert run.error is not None and "'user.deleted'" in run.error.message
    assert engine.get_run(two).status == "waiting"
    clock.advance("1d")
    engine.run_until_idle()
    assert engine.get_run(two).status == "completed"
    engine.emit("user.deleted", {"userId": "u-2"})  # after it ended: nothing happens
    engine.run_until_idle()
    assert engine.get_run(two).status == "completed"


def test_cancel_on_a_running_run_ends_it_at_its_next_step_boundary(engine: Engine) -> None:
    calls: list[str] = []

    @ironflow.function(id="long", on="go", cancel_on=[CancelOn("stop")])
    def long(ctx: Any) -> Any:
        yield step.run("one", lambda: calls.append("one"))
        yield step.run("two", lambda: calls.append("two"))
        return "done"

    engine.register(long)
    (run_id,) = engine.emit("go")
    engine.emit("stop")  # before its first step ran: it ends before running one
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "cancelled"
    assert calls == []


def test_cancel_on_a_pending_run_without_the_match_field_is_not_watched(
    engine: Engine,
) -> None:
    engine.register(onboard)
    (run_id,) = engine.emit("user.signed_up", {"name": "no id"})
    engine.emit("user.deleted", {"name": "no id"})
    engine.run_until_idle()
    assert engine.get_run(run_id).status == "waiting"


# --- cron ----------------------------------------------------------------------------------


@ironflow.function(id="report", on=ironflow.Cron("0 9 * * MON-FRI", tz="Europe/Paris"))
def report(ctx: Any) -> Any:
    return {"name": ctx.event.name, **ctx.event.data}
    yield


def test_cron_one_run_per_tick_only_ticks_after_registration(
    store_url: str,
) -> None:
    clock = VirtualClock(_dt.datetime(2024, 1, 8, 8, 30, tzinfo=_dt.UTC))  # Mon 9:30 Paris
    engine = Engine(store_url, clock=clock)
    try:
        engine.register(report)
        engine.run_until_idle()
        assert engine.list_runs() == []  # 9:00 today was before it was registered
        clock.advance("23h")  # Tue 8:30 Paris
        engine.run_until_idle()
        assert engine.list_runs() == []
        clock.advance("30m")  # Tue 9:00 Paris, to the microsecond
        engine.run_until_idle()
        engine.run_until_idle()
        assert outputs(engine, "report") == [
            {
                "name": "cron",
                "schedule": "0 9 * * MON-FRI",
                "tz": "Europe/Paris",
                "tick": "2024-01-09T09:00:00+01:00",
            }
        ]
        # A second engine (another worker) on the same database does not run it again.
        other = Engine(store_url, clock=clock)
        other.register(report)
        other.run_until_idle()
        other.close()
        assert len(engine.list_runs()) == 1
        # Missed while no worker ran (Wed to Mon 9:00): only the latest tick runs, once.
        clock.advance(_dt.timedelta(days=6, minutes=1))
        engine.run_until_idle()
        engine.run_until_idle()
        ticks = [out["tick"] for out in outputs(engine, "report")]
        assert ticks == ["2024-01-09T09:00:00+01:00", "2024-01-15T09:00:00+01:00"]
    finally:
        engine.close()


def test_cron_beside_event_triggers(engine: Engine, clock: VirtualClock) -> None:
    @ironflow.function(id="both", on=["refresh.now", ironflow.Cron("*/15 * * * *")])
    def both(ctx: Any) -> Any:
        return ctx.event.name
        yield

    engine.register(both)
    assert len(engine.emit("refresh.now")) == 1
    clock.advance("15m")
    engine.run_until_idle()
    assert sorted(outputs(engine, "both")) == ["cron", "refresh.now"]


@pytest.mark.parametrize(
    ("expr", "start", "day", "ticks"),
    [
        # Spring forward (Paris, 31 March 2024: 02:00 CET -> 03:00 CEST): a tick at 02:30,
        # an hour that does not exist that day, runs once, at 03:00 CEST (01:00 UTC).
        ("30 2 * * *", "2024-03-30T12:00:00+00:00", "2024-03-31", ["2024-03-31T03:00:00+02:00"]),
        # Fall back (27 October 2024: 03:00 CEST -> 02:00 CET): a fixed-hour tick in the
        # repeated hour runs once, at its first occurrence (CEST).
        ("30 2 * * *", "2024-10-26T12:00:00+00:00", "2024-10-27", ["2024-10-27T02:30:00+02:00"]),
        # A wildcard hour runs in both occurrences of the repeated hour.
        (
            "30 * * * *",
            "2024-10-26T23:45:00+00:00",
            "2024-10-27T02",
            ["2024-10-27T02:30:00+02:00", "2024-10-27T02:30:00+01:00"],
        ),
    ],
)
def test_cron_across_daylight_saving_changes(
    engine: Engine, clock: VirtualClock, expr: str, start: str, day: str, ticks: list[str]
) -> None:
    clock.advance(_dt.datetime.fromisoformat(start) - clock.now())

    @ironflow.function(id="dst", on=ironflow.Cron(expr, tz="Europe/Paris"))
    def dst(ctx: Any) -> Any:
        return ctx.event.data["tick"]
        yield

    engine.register(dst)
    for _ in range(16 * 4):  # 16 hours, a look every 15 minutes
        clock.advance("15m")
        engine.run_until_idle()
    found = outputs(engine, "dst")
    assert [t for t in found if t.startswith(day)] == ticks


def test_cron_ticks_are_computed_in_the_zone() -> None:
    at = _dt.datetime(2024, 10, 27, 0, 45, tzinfo=_dt.UTC)  # 02:45 CEST
    us = int(at.timestamp() * 1_000_000)
    assert flow_timed.last_tick("30 2 * * *", "Europe/Paris", us).isoformat() == (
        "2024-10-27T02:30:00+02:00"
    )
    nxt = flow_timed.next_tick("30 2 * * *", "Europe/Paris", us)
    assert _dt.datetime.fromtimestamp(nxt / 1e6, _dt.UTC).isoformat() == (
        "2024-10-28T01:30:00+00:00"
    )


# --- emitters without the code --------------------------------------------------------------


def test_an_emitter_without_the_code_applies_path_keys_and_defers_callables(
    store_url: str, clock: VirtualClock
) -> None:
    @ironflow.function(
        id="keyed", on="k.ev", rate_limit=RateLimit(1, "1h", key=lambda e: e.data["k"])
    )
    def keyed(ctx: Any) -> Any:
        return ctx.event.data["n"]
        yield

    worker = Engine(store_url, clock=clock)
    worker.register(charge)  # path key
    worker.register(keyed)  # callable key
    bare = Engine(store_url, clock=clock)  # the CLI without --app, the HTTP API
    try:
        assert len(bare.emit("order.created", {"orderId": "z"})) == 1
        assert bare.emit("order.created", {"orderId": "z"}) == []  # judged right there
        assert bare.emit("k.ev", {"k": 1, "n": 1}) == []  # left for a worker with the code
        assert bare.emit("k.ev", {"k": 1, "n": 2}) == []
        assert bare.emit("k.ev", {"k": 2, "n": 3}) == []
        worker.run_until_idle()
        assert sorted(outputs(worker, "keyed")) == [1, 3]
        assert [s.data["n"] for s in worker.list_events(function="keyed")] == [2]
        assert [s.reason for s in bare.list_events("order.created")] == ["idempotency"]
    finally:
        bare.close()
        worker.close()


# --- listing the events that started no run -------------------------------------------------


def test_events_list_cli(store_url: str, clock: VirtualClock) -> None:
    engine = Engine(store_url, clock=clock)
    engine.register(charge)
    engine.emit("order.created", {"orderId": "c-1"})
    engine.emit("order.created", {"orderId": "c-1"})
    engine.close()
    result = CliRunner().invoke(cli, ["events", "list", "--db", store_url, "--json"])
    assert result.exit_code == 0, result.output
    (item,) = json.loads(result.stdout)
    assert (item["name"], item["function"], item["reason"]) == (
        "order.created",
        "charge",
        "idempotency",
    )
    assert item["data"] == {"orderId": "c-1"}
    text = CliRunner().invoke(cli, ["events", "list", "--db", store_url])
    assert text.exit_code == 0
    assert 'charge  idempotency: idempotency key "c-1"' in text.stdout
    empty = CliRunner().invoke(cli, ["events", "list", "--db", store_url, "--name", "other"])
    assert empty.stdout.strip() == "no events that started no run"


def test_list_events_checks_its_arguments(engine: Engine) -> None:
    with pytest.raises(ValueError, match="limit must be a positive int"):
        engine.list_events(limit=0)
    with pytest.raises(TypeError, match="function must be a function id"):
        engine.list_events(function=3)  # type: ignore[arg-type]
    assert engine.list_events() == []


def test_a_function_without_options_writes_no_flow_rows(engine: Engine) -> None:
    @ironflow.function(id="plain", on="p")
    def plain(ctx: Any) -> Any:
        return 1
        yield

    engine.register(plain)
    engine.emit("p")
    engine.run_until_idle()
    assert engine.store.query("SELECT COUNT(*) FROM flow_state")[0][0] == 0  # type: ignore[attr-defined]
    assert engine._driver.plans.timed == ()
    _ = (Cron, Batch)  # the option classes are importable from ironflow.commands.flow
