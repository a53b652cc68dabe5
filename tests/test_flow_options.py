"""The flow-control option values: what each accepts, and the ValueError naming a bad value."""

from __future__ import annotations

import datetime as dt
import json

import pendulum
import pytest

import ironflow
from ironflow import (
    Batch,
    CancelOn,
    Concurrency,
    Cron,
    Debounce,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    step,
)
from ironflow.commands.event import Event
from ironflow.commands.flow import Flow, key_of
from ironflow.commands.flow_settings import flow_settings
from ironflow.runtime.registry import settings


def _flow(ctx):  # pragma: no cover - never driven here
    yield step.sleep("nap", "1s")


EVENT = Event("e1", "order.created", {"customerId": "c-1", "n": [1, 2]}, dt.datetime.now(dt.UTC))


def test_every_option_is_exported_from_ironflow():
    for name in (
        "Concurrency",
        "Throttle",
        "RateLimit",
        "Debounce",
        "Priority",
        "Singleton",
        "CancelOn",
        "Timeouts",
        "Batch",
        "Cron",
        "RunTimeoutError",
    ):
        assert name in ironflow.__all__
        assert getattr(ironflow, name).__name__ == name


def test_periods_take_the_duration_forms_of_sleep():
    assert Throttle(2, "1.5m").period == pendulum.duration(seconds=90)
    assert Throttle(2, dt.timedelta(seconds=3)).period.total_seconds() == 3
    assert RateLimit(1, 10).period.total_seconds() == 10
    assert Debounce("500ms", max_wait="PT1S").max_wait.total_seconds() == 1
    assert Timeouts(start="7d").start.total_seconds() == 7 * 86400
    assert Timeouts(finish="2h").finish.total_seconds() == 7200
    assert Batch(10, "30s").timeout.total_seconds() == 30


def test_an_int_concurrency_is_a_concurrency_without_key():
    fn = ironflow.function(id="f", concurrency=3)(_flow)
    assert fn.flow is not None
    assert fn.flow.concurrency == Concurrency(3)
    assert fn.flow.concurrency.key is None


def test_a_function_without_options_has_no_flow():
    assert ironflow.function(id="f")(_flow).flow is None
    assert ironflow.function(id="f", cancel_on=[])(_flow).flow is None


def test_options_are_frozen_and_compare_by_value():
    assert Throttle(1, "1s", key="data.x") == Throttle(1, 1.0, key="data.x")
    with pytest.raises(AttributeError):
        Concurrency(1).limit = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: Concurrency(0), "concurrency limit must be a positive int, got 0"),
        (lambda: Concurrency(True), "got True"),
        (lambda: Concurrency(2.5), "got 2.5"),
        (lambda: ironflow.function(id="f", concurrency=-1), "got -1"),
        (lambda: ironflow.function(id="f", concurrency="3"), "got '3'"),
        (lambda: Throttle(0, "1s"), "throttle limit must be a positive int, got 0"),
        (lambda: Throttle(1, "0s"), "throttle period must be positive and finite, got '0s'"),
        (lambda: Throttle(1, "soon"), "invalid throttle period 'soon'"),
        (lambda: RateLimit(1, -5), "rate_limit period must be positive and finite, got -5"),
        (lambda: Debounce("10s", max_wait="5s"), "debounce max_wait"),
        (lambda: Debounce(0), "debounce period"),
        (lambda: Singleton(mode="queue"), "singleton mode must be 'skip' or 'cancel', got 'queue'"),
        (lambda: Priority(run=3), "priority run= must be a callable"),
        (lambda: Timeouts(start="0s"), "timeouts start"),
        (lambda: Timeouts(finish="nope"), "invalid timeouts finish 'nope'"),
        (lambda: Batch(0, "1s"), "batch max_size must be a positive int, got 0"),
        (lambda: Batch(5, 0), "batch timeout"),
        (lambda: CancelOn(""), "cancel_on event must be a non-empty string"),
        (lambda: CancelOn("x", match="orderId"), "cancel_on match 'orderId'"),
        (lambda: Concurrency(1, key="customerId"), "concurrency key 'customerId'"),
        (lambda: Concurrency(1, key="data..x"), "concurrency key 'data..x'"),
        (lambda: Concurrency(1, key=5), "concurrency key must be a dotted path"),
        (lambda: Cron("61 * * * *"), "invalid cron expression '61 * * * *'"),
        (lambda: Cron("every day"), "invalid cron expression 'every day'"),
        (lambda: Cron("0 9 * * *", tz="Mars/Olympus"), "unknown time zone 'Mars/Olympus'"),
        (lambda: Cron("0 9 * * *", tz="../etc/passwd"), "unknown time zone '../etc/passwd'"),
        (lambda: ironflow.function(id="f", throttle=3), "throttle= must be a Throttle(...)"),
        (lambda: ironflow.function(id="f", cancel_on="x"), "cancel_on= must be a CancelOn"),
        (lambda: ironflow.function(id="f", idempotency=7), "idempotency key must be"),
        (lambda: ironflow.function(id="f", on=[Cron("* * * * *"), ""]), "trigger event name"),
    ],
)
def test_bad_settings_raise_value_error_naming_the_value(make, named):
    with pytest.raises(ValueError) as caught:
        make()
    assert named in str(caught.value)


def test_keys_are_paths_or_callables():
    assert key_of("data.customerId", EVENT) == "c-1"
    assert key_of("data.n.1", EVENT) == 2
    assert key_of("data.missing", EVENT) is None  # an event without the field: key None
    assert key_of(None, EVENT) is None
    assert key_of(lambda e: e.data["customerId"].upper(), EVENT) == "C-1"


def test_cron_triggers_go_beside_event_triggers():
    cron = Cron("0 9 * * MON-FRI", tz="Europe/Paris")
    fn = ironflow.function(id="report", on=[cron, "report.requested"])(_flow)
    assert fn.on == ("report.requested",)
    assert fn.crons == (cron,)
    assert Cron("*/5 * * * *").tz == "UTC"
    alone = ironflow.function(id="tick", on=Cron("0 * * * *"))(_flow)
    assert alone.on == () and alone.crons == (Cron("0 * * * *"),)


def test_the_registry_records_options_as_json():
    def customer(event):
        return event.data["customerId"]

    fn = ironflow.function(
        id="sync",
        on="customer.updated",
        concurrency=Concurrency(2, key="data.customerId"),
        throttle=Throttle(5, "1m", key=customer),
        singleton=Singleton(mode="cancel"),
        timeouts=Timeouts(finish="1h"),
        cancel_on=CancelOn("customer.deleted", match="data.customerId"),
        idempotency="data.requestId",
    )(_flow)
    found = json.loads(json.dumps(settings(fn)))
    flow = found["flow"]
    assert flow["concurrency"] == {"limit": 2, "key": "data.customerId"}
    assert flow["throttle"]["period_s"] == 60
    assert flow["throttle"]["key"]["callable"].endswith("customer")
    assert flow["singleton"] == {"key": None, "mode": "cancel"}
    assert flow["timeouts"] == {"start_s": None, "finish_s": 3600}
    assert flow["cancel_on"] == [{"event": "customer.deleted", "match": "data.customerId"}]
    assert flow["idempotency"] == {"key": "data.requestId"}
    assert "crons" not in found
    # A function without options records what it recorded before options existed.
    assert set(settings(ironflow.function(id="plain")(_flow))) == {"retry"}
    assert flow_settings(Flow()) == {}
