"""The HTTP API (issue 14): every route of the contract, its errors and its security, on both
stores, through Litestar's test client (the real ASGI app, no network)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("litestar")

from litestar.testing import TestClient

import ironflow
from ironflow import Engine, step
from ironflow.history import dumps
from ironflow.server import create_app
from ironflow.testing import VirtualClock

TOKEN = "s3cret-token"
FIXED = {"on": False}


def fail_unless_fixed(x: int) -> int:
    if not FIXED["on"]:
        raise ironflow.NonRetryableError("not fixed yet")
    return x * 2


@ironflow.function(id="greet", on="user.created")
def greet(ctx):
    name = yield step.run("name", lambda n: f"hello {n}", (ctx.event.data or {}).get("name"))
    return name


@ironflow.function(id="fragile")
def fragile(ctx):
    value = yield step.run("double", fail_unless_fixed, 21)
    return value


@ironflow.function(id="napper")
def napper(ctx):
    yield step.sleep("nap", "1h")
    return "rested"


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient[Any]]:
    FIXED["on"] = False
    for fn in (greet, fragile, napper):
        engine.register(fn)
    with TestClient(create_app(engine)) as client:
        yield client


def error_of(response: Any, status: int) -> dict[str, str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    assert body["error"]["message"]
    return dict(body["error"])


def test_emit_starts_the_triggered_functions_and_a_repeated_key_is_one_event(
    api: TestClient[Any], engine: Engine
) -> None:
    sent = {"name": "user.created", "data": {"name": "ada"}, "idempotency_key": "k-1"}
    first = api.post("/api/events", json=sent)
    assert first.status_code == 200, first.text
    body = first.json()
    assert set(body) == {"event_id", "run_ids"} and len(body["run_ids"]) == 1
    again = api.post("/api/events", json=sent).json()
    assert again == body  # the same event: same id, the runs it started, none new
    engine.run_until_idle()
    run = api.get(f"/api/runs/{body['run_ids'][0]}").json()
    assert (run["status"], run["output"], run["function"]) == ("completed", "hello ada", "greet")
    assert api.post("/api/events", json={"name": "nobody.listens"}).json()["run_ids"] == []


def test_start_get_and_history(api: TestClient[Any], engine: Engine) -> None:
    started = api.post("/api/functions/greet/runs", json={"data": {"name": "bo"}, "run_id": "r-1"})
    assert started.status_code == 200 and started.json() == {"run_id": "r-1"}
    assert api.post("/api/functions/greet/runs", json={"run_id": "r-1"}).json() == {
        "run_id": "r-1"
    }  # idempotent
    assert "run_id" in api.post("/api/functions/greet/runs").json()  # no body at all
    engine.run_until_idle()
    run = api.get("/api/runs/r-1").json()
    assert run["id"] == "r-1" and run["status"] == "completed" and run["output"] == "hello bo"
    assert run["error"] is None and run["created_at"].endswith("+00:00")
    history = api.get("/api/runs/r-1/history")
    assert history.status_code == 200
    assert history.json() == json.loads(dumps(engine.history("r-1")))
    assert history.json()[0]["type"] == "RunStarted"


def test_start_errors_are_400_404_and_409(api: TestClient[Any]) -> None:
    assert error_of(api.post("/api/functions/nope/runs", json={}), 404)["message"].startswith(
        "unknown function 'nope'"
    )
    api.post("/api/functions/greet/runs", json={"run_id": "taken"})
    conflict = error_of(api.post("/api/functions/napper/runs", json={"run_id": "taken"}), 409)
    assert "already belongs to a run of 'greet'" in conflict["message"]
    bad = error_of(api.post("/api/functions/greet/runs", json={"run_id": "a/b"}), 400)
    assert "'a/b'" in bad["message"]
    assert (
        error_of(api.post("/api/functions/greet/runs", json={"run_id": 7}), 400)["type"]
        == "bad_request"
    )
    assert error_of(api.post("/api/functions/greet/runs", content=b"{not json"), 400)
    assert error_of(api.post("/api/events", json={"data": 1}), 400)["message"]  # no name
    assert "event name" in error_of(api.post("/api/events", json={"name": ""}), 400)["message"]


def test_unknown_runs_and_routes_are_404(api: TestClient[Any]) -> None:
    assert error_of(api.get("/api/runs/missing"), 404)["message"] == "no run with id 'missing'"
    for path in ("/api/runs/missing/history", "/api/nothing", "/nothing"):
        assert error_of(api.get(path), 404)["type"] == "not_found"
    for verb in ("cancel", "resume", "rerun"):
        error_of(api.post(f"/api/runs/missing/{verb}"), 404)
    error_of(api.post("/api/runs/missing/fork", json={"from_step": "x"}), 404)


def test_state_changes_are_post_only(api: TestClient[Any]) -> None:
    for path in ("/api/events", "/api/runs/x/cancel", "/api/runs/x/resume", "/api/runs/x/fork"):
        assert error_of(api.get(path), 405)["type"] == "method_not_allowed"
    error_of(api.delete("/api/runs/x"), 405)


def test_cancel_and_its_conflict(api: TestClient[Any], engine: Engine) -> None:
    run_id = api.post("/api/functions/napper/runs").json()["run_id"]
    engine.run_until_idle()
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "waiting"
    cancelled = api.post(f"/api/runs/{run_id}/cancel", json={"reason": "by hand"})
    assert cancelled.status_code == 200 and cancelled.json()["id"] == run_id
    engine.run_until_idle()
    run = api.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "cancelled" and "by hand" in run["error"]["message"]
    again = error_of(api.post(f"/api/runs/{run_id}/cancel"), 409)
    assert again["type"] == "conflict" and "cancelled" in again["message"]


def test_resume_rerun_and_fork(api: TestClient[Any], engine: Engine) -> None:
    run_id = api.post("/api/functions/fragile/runs").json()["run_id"]
    engine.run_until_idle()
    failed = api.get(f"/api/runs/{run_id}").json()
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "ironflow.errors.NonRetryableError"
    assert "not fixed yet" in failed["error"]["message"]
    rerun = api.post(f"/api/runs/{run_id}/rerun")
    fork = api.post(f"/api/runs/{run_id}/fork", json={"from_step": "double"})
    assert rerun.status_code == fork.status_code == 200
    assert set(rerun.json()) == set(fork.json()) == {"run_id"}
    unknown = error_of(api.post(f"/api/runs/{run_id}/fork", json={"from_step": "nope"}), 400)
    assert "has no step 'nope'" in unknown["message"]
    error_of(api.post(f"/api/runs/{run_id}/fork", json={}), 400)
    FIXED["on"] = True
    assert api.post(f"/api/runs/{run_id}/resume").status_code == 200
    engine.run_until_idle()
    for rid in (run_id, rerun.json()["run_id"], fork.json()["run_id"]):
        run = api.get(f"/api/runs/{rid}").json()
        assert (run["status"], run["output"]) == ("completed", 42)
    assert api.get(f"/api/runs/{fork.json()['run_id']}").json()["source_run_id"] == run_id
    conflict = error_of(api.post(f"/api/runs/{run_id}/resume"), 409)
    assert "is completed" in conflict["message"]


def test_functions(api: TestClient[Any]) -> None:
    listed = api.get("/api/functions").json()["functions"]
    by_id = {item["id"]: item for item in listed}
    assert sorted(by_id) == ["fragile", "greet", "napper"]
    assert by_id["greet"]["triggers"] == ["user.created"]
    assert by_id["greet"]["code_version"] and "retry" in by_id["greet"]["settings"]


def test_runs_list_pages_newest_first_with_filters(
    api: TestClient[Any], engine: Engine, clock: VirtualClock
) -> None:
    made = []
    for i in range(5):
        made.append(api.post("/api/functions/greet/runs", json={"run_id": f"g-{i}"}).json())
        clock.advance("1s")
    api.post("/api/functions/napper/runs", json={"run_id": "n-0"})
    engine.run_until_idle()
    seen, cursor, pages = [], None, 0
    while True:
        params: dict[str, Any] = {"function": "greet", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("/api/runs", params=params).json()
        seen += [run["id"] for run in page["runs"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ["g-4", "g-3", "g-2", "g-1", "g-0"] and pages == 3
    waiting = api.get("/api/runs", params={"status": "waiting"}).json()
    assert [run["id"] for run in waiting["runs"]] == ["n-0"] and waiting["next_cursor"] is None
    created = api.get("/api/runs/g-2").json()["created_at"]
    newer = api.get("/api/runs", params={"created_after": created, "function": "greet"}).json()
    assert [run["id"] for run in newer["runs"]] == ["g-4", "g-3", "g-2"]
    older = api.get("/api/runs", params={"created_before": created}).json()
    assert [run["id"] for run in older["runs"]] == ["g-1", "g-0"]
    assert "'bogus'" in error_of(api.get("/api/runs", params={"status": "bogus"}), 400)["message"]
    assert "cursor" in error_of(api.get("/api/runs", params={"cursor": "zz"}), 400)["message"]
    error_of(api.get("/api/runs", params={"limit": 0}), 400)
    error_of(api.get("/api/runs", params={"limit": "many"}), 400)
    naive = error_of(api.get("/api/runs", params={"created_after": "2024-01-01T00:00:00"}), 400)
    assert "no UTC offset" in naive["message"]


def test_health_metrics_and_openapi(api: TestClient[Any], engine: Engine) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    api.post("/api/functions/greet/runs", json={"data": {"name": "m"}})
    engine.run_until_idle()
    metrics = api.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'ironflow_runs{function="greet",status="completed"} 1.0' in metrics.text
    route = "/api/functions/{function_id}/runs"
    started = f'ironflow_http_requests_total{{method="POST",route="{route}",status="200"}} 1.0'
    assert started in metrics.text
    spec = api.get("/api/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert {
        "/api/events",
        "/api/functions/{function_id}/runs",
        "/api/functions",
        "/api/runs",
        "/api/runs/{run_id}",
        "/api/runs/{run_id}/history",
        "/api/runs/{run_id}/cancel",
        "/api/runs/{run_id}/resume",
        "/api/runs/{run_id}/rerun",
        "/api/runs/{run_id}/fork",
        "/healthz",
        "/metrics",
    } <= set(spec["paths"])


@pytest.mark.sqlite_only
def test_a_token_guards_every_path_but_healthz(engine: Engine) -> None:
    engine.register(greet)
    with TestClient(create_app(engine, TOKEN)) as client:
        assert client.get("/healthz").status_code == 200
        for method, path in (
            ("GET", "/api/runs"),
            ("GET", "/api/openapi.json"),
            ("GET", "/metrics"),
            ("GET", "/api/no-such-route"),  # no probing for what exists
            ("POST", "/api/events"),
        ):
            denied = client.request(method, path, json={"name": "user.created"})
            assert error_of(denied, 401)["type"] == "unauthorized"
            assert denied.headers["www-authenticate"].startswith("Bearer")
        wrong = {"Authorization": "Bearer nope"}
        error_of(client.get("/api/runs", headers=wrong), 401)
        right = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/api/runs", headers=right).status_code == 200
        assert client.post("/api/events", json={"name": "x.y"}, headers=right).status_code == 200
        # The browser's cookie reads, but cannot change anything (CSRF: POST needs the header).
        client.cookies.set("ironflow_token", TOKEN)
        assert client.get("/api/runs").status_code == 200
        error_of(client.post("/api/events", json={"name": "x.y"}), 401)
    assert len(engine.list_runs()) == 0


@pytest.mark.sqlite_only
def test_a_body_past_the_limit_is_413(engine: Engine) -> None:
    engine.register(greet)
    with TestClient(create_app(engine, max_body=1000)) as client:
        big = {"name": "user.created", "data": {"blob": "x" * 2000}}
        assert error_of(client.post("/api/events", json=big), 413)["type"] == "payload_too_large"
        assert client.post("/api/events", json={"name": "user.created"}).status_code == 200
    assert len(engine.list_runs()) == 1


@pytest.mark.sqlite_only
def test_create_app_refuses_an_empty_token(engine: Engine) -> None:
    with pytest.raises(ValueError, match="token must be a non-empty string"):
        create_app(engine, "")


@ironflow.function(id="one-at-a-time", concurrency=ironflow.Concurrency(1))
def one_at_a_time(ctx):
    yield step.sleep("nap", "1h")
    return "done"


def test_a_run_held_back_by_flow_control_pages_as_pending(engine: Engine) -> None:
    engine.register(one_at_a_time)
    first = engine.start("one-at-a-time", run_id="first")
    held = engine.start("one-at-a-time", run_id="held")
    engine.run_until_idle()
    assert engine.get_run(first).status == "waiting"
    page = engine.list_runs_page(status="pending")
    assert [(run.id, run.status) for run in page.runs] == [(held, "pending")]
    assert page.runs[0].waiting_for == "concurrency: 1 of 1"
    everything = {run.id: run.status for run in engine.list_runs_page().runs}
    assert everything == {first: "waiting", held: "pending"}
    with TestClient(create_app(engine)) as client:
        shown = client.get("/api/runs", params={"status": "pending"}).json()["runs"]
        assert [(run["id"], run["status"]) for run in shown] == [(held, "pending")]
        assert client.get(f"/api/runs/{held}").json()["status"] == "pending"
