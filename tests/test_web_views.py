"""What the web view's JSON routes read (``ironflow.server.web.views``), on both stores, and the
web view's routes behind a token: the shell is public, its data is not."""

from __future__ import annotations

from typing import Any

import browser_kit
import httpx
import pytest

import ironflow
from ironflow import Engine, NonRetryableError, step
from ironflow.runtime import registry
from ironflow.server.web import views
from ironflow.testing import VirtualClock

HOSTILE = "<img src=x onerror=alert(1)>"


def double(x: int) -> int:
    return 2 * x


def refuse(x: int) -> int:
    raise NonRetryableError(f"refused {x} {HOSTILE}")


@ironflow.function(id="approve", on="order.placed")
def approve(ctx: Any) -> Any:
    doubled = yield step.run("double", double, 21)
    items = yield step.map("each", [1, 2], lambda item, s, i: s.run("twice", double, item))
    approved = yield step.wait_for_event(
        "approval", "order.approved", match="data.orderId", timeout="1h"
    )
    return [doubled, items, approved.data["by"]]


@ironflow.function(id="failing")
def failing(ctx: Any) -> Any:
    value = yield step.run("refuse", refuse, 1)
    return value


def test_run_page_has_steps_nested_attempts_waits_and_the_error_traceback(
    engine: Engine, clock: VirtualClock
) -> None:
    engine.register(approve)
    engine.register(failing)
    [run_id] = engine.emit("order.placed", {"orderId": "o-1"})
    engine.run_until_idle()
    page = views.run_page(engine, run_id)
    assert page["run"]["status"] == "waiting"
    assert page["trigger"]["data"] == {"orderId": "o-1"}
    by_id = {step["id"]: step for step in page["steps"]}
    assert [step["id"] for step in page["steps"]] == [
        "double",
        "each",
        "each/0/twice",
        "each/1/twice",
        "approval",
    ]
    assert by_id["each/1/twice"]["parent"] == "each"
    assert by_id["each/1/twice"]["branch"] == 1
    assert by_id["each/1/twice"]["depth"] == 1
    assert by_id["double"]["output"] == 42
    assert [a["status"] for a in by_id["double"]["attempt_list"]] == ["completed"]
    wait = by_id["approval"]
    assert wait["status"] == "waiting"
    assert wait["detail"]["event"] == "order.approved"
    assert wait["detail"]["match"] == "data.orderId"
    assert wait["due"] == "2026-01-01T01:00:00+00:00"  # the virtual clock's start + 1h

    failed = engine.start("failing", None)
    engine.run_until_idle()
    page = views.run_page(engine, failed)
    assert page["run"]["error"]["message"] == f"refused 1 {HOSTILE}"
    assert "Traceback" in page["run"]["error"]["traceback"]
    [attempt] = page["steps"][0]["attempt_list"]
    assert attempt["status"] == "failed"
    assert attempt["error"]["type"] == "ironflow.errors.NonRetryableError"
    assert "in refuse" in attempt["error"]["traceback"]
    assert page["diff"] is None
    with pytest.raises(KeyError, match="no run with id 'nope'"):
        views.run_page(engine, "nope")


def test_events_page_lists_the_runs_each_event_started_and_woke(engine: Engine) -> None:
    engine.register(approve)
    [first] = engine.emit("order.placed", {"orderId": "o-1"})
    engine.run_until_idle()
    assert engine.emit("order.approved", {"orderId": "o-1", "by": "maria"}) == []
    engine.run_until_idle()
    engine.emit("noise", {"note": HOSTILE})
    assert engine.get_run(first).output == [42, [2, 4], "maria"]

    page = views.events_page(engine, 50, None)
    assert [e["name"] for e in page["events"]] == ["noise", "order.approved", "order.placed"]
    noise, approved, placed = page["events"]
    assert noise["data"] == {"note": HOSTILE}
    assert placed["started"] == [first]
    assert placed["woke"] == []
    assert approved["started"] == []
    assert approved["woke"] == [first]
    assert page["next_before"] is None

    newest = views.events_page(engine, 2, None)
    assert [e["name"] for e in newest["events"]] == ["noise", "order.approved"]
    older = views.events_page(engine, 2, newest["next_before"])
    assert [e["name"] for e in older["events"]] == ["order.placed"]
    assert older["next_before"] is None


def test_workers_page_shows_each_live_worker_code_version(store_url: str) -> None:
    engine = Engine(store_url, clock=VirtualClock())
    try:
        engine.register(approve)
        engine.run_until_idle()  # a worker's round sends its heartbeat
        [worker] = views.workers_page(engine)["workers"]
        assert worker["id"] == engine.worker_id
        assert worker["functions"] == {"approve": registry.code_version(approve)}
    finally:
        engine.close()


def test_a_blocked_run_shows_its_recorded_and_current_command(store_url: str) -> None:
    clock = VirtualClock()

    @ironflow.function(id="shift")
    def before(ctx: Any) -> Any:
        yield step.run("double", double, 1)
        yield step.sleep("nap", "1m")
        return "done"

    @ironflow.function(id="shift")
    def after(ctx: Any) -> Any:
        yield step.sleep("nap", "1m")  # moved first: old runs no longer replay
        return "done"

    old = Engine(store_url, clock=clock)
    old.register(before)
    run_id = old.start("shift")
    old.run_until_idle()
    old.close()
    new = Engine(store_url, clock=clock)
    try:
        new.register(after)
        clock.advance("1m")
        new.run_until_idle()
        page = views.run_page(new, run_id)
        assert page["run"]["status"] == "blocked"
        assert page["diff"] == {
            "seq": 1,
            "recorded": "run 'double' in scope '(root)' (fingerprint 'double')",
            "current": "sleep 'nap' in scope '(root)' (fingerprint '')",
        }
    finally:
        new.close()


def test_shell_is_public_and_its_data_needs_the_token(tmp_path: Any) -> None:
    engine = Engine(str(tmp_path / "t.db"), clock=VirtualClock())
    engine.register(failing)
    run_id = engine.start("failing")
    engine.run_until_idle()
    try:
        with browser_kit.serving(engine, token="tok") as url, httpx.Client(base_url=url) as client:
            for path in ("/", f"/runs/{run_id}", "/functions", "/events", "/static/app.js"):
                answer = client.get(path)
                assert answer.status_code == 200, path
                assert "script-src 'self'" in answer.headers["content-security-policy"]
            assert client.get("/static/../app.py").status_code in (401, 404)
            assert client.get("/static/nothing.js").status_code == 404
            # "/" is public as itself, not as a prefix of every path.
            for path in ("/api/runs", "/api/view/events", "/api/view/workers", "/metrics"):
                assert client.get(path).status_code == 401, path
            assert client.get("/api/view/run", params={"id": run_id}).status_code == 401
            bearer = {"Authorization": "Bearer tok"}
            found = client.get("/api/view/run", params={"id": run_id}, headers=bearer)
            assert found.status_code == 200
            assert found.json()["run"]["status"] == "failed"
            missing = client.get("/api/view/run", params={"id": "nope"}, headers=bearer)
            assert missing.status_code == 404
            assert "nope" in missing.json()["error"]["message"]
            bad = client.get("/api/view/events", params={"limit": 0}, headers=bearer)
            assert bad.status_code == 400
    finally:
        engine.close()


def test_a_missing_browser_skips_locally_and_fails_under_ci(monkeypatch: Any) -> None:
    monkeypatch.setattr(browser_kit, "CHROMIUM", "/nonexistent/chromium")
    monkeypatch.setattr(browser_kit, "skipped", 0)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no Chromium at /nonexistent/chromium"):
        browser_kit.require_browser()
    assert browser_kit.skipped == 1  # counted for the summary's one line
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="need Chromium under CI=true"):
        browser_kit.require_browser()
