"""A NUL byte (or another character no id holds) in the API's input, on both stores.

PostgreSQL text cannot hold NUL: its driver refuses such a parameter outright. Every place a
request's text reaches the database is checked first, so that a NUL in a path parameter, a
query parameter or a JSON body is a 404 (no run has that id) or a 400 naming the value, the
same on SQLite and PostgreSQL, and never a 500. NUL inside event or run *data* is JSON,
escaped as ``\\u0000``, and is stored and given back as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("litestar")

from litestar.testing import TestClient

import ironflow
from ironflow import Engine, step
from ironflow.runtime.paging import encode_cursor
from ironflow.server import create_app


@ironflow.function(id="nul-wait", on="nul.*")
def nul_wait(ctx: Any) -> Any:
    got = yield step.wait_for_event("got", "nul.reply", timeout="1d")
    return got.data


@pytest.fixture
def api(engine: Engine) -> Iterator[TestClient[Any]]:
    engine.register(nul_wait)
    with TestClient(create_app(engine)) as client:
        yield client


def _error(response: Any, status: int, *needles: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
    message = str(body["error"]["message"])
    for needle in needles:
        assert needle in message, message
    return message


RUN_ROUTES = [
    ("get", "/api/runs/{}", None),
    ("get", "/api/runs/{}/history", None),
    ("post", "/api/runs/{}/cancel", {}),
    ("post", "/api/runs/{}/resume", None),
    ("post", "/api/runs/{}/rerun", None),
    ("post", "/api/runs/{}/fork", {"from_step": "got"}),
    ("get", "/api/view/run?id={}", None),
]


@pytest.mark.parametrize(("method", "route", "body"), RUN_ROUTES)
def test_a_nul_in_a_run_id_is_a_404_naming_it(
    api: TestClient[Any], method: str, route: str, body: Any
) -> None:
    path = route.format("bad%00id")
    sent = {} if body is None else {"json": body}
    _error(getattr(api, method)(path, **sent), 404, r"no run with id 'bad\x00id'")


def test_a_nul_in_a_function_id_is_a_404_or_400_naming_it(api: TestClient[Any]) -> None:
    _error(api.post("/api/functions/nul-wait%00/runs", json={}), 404, r"'nul-wait\x00'")
    listed = api.get("/api/runs", params={"function": "nul-wait\x00"})
    _error(listed, 400, r"function id 'nul-wait\x00' holds the control character '\x00'")


def test_a_nul_in_query_parameters_is_a_400_naming_it(api: TestClient[Any]) -> None:
    _error(api.get("/api/runs", params={"status": "fail\x00ed"}), 400, r"'fail\x00ed'")
    _error(api.get("/api/runs", params={"cursor": "ab\x00"}), 400, r"cursor 'ab\x00'")
    # A well-formed cursor holding a run id with a NUL is not one this listing gave.
    forged = encode_cursor(1, "run\x00")
    _error(api.get("/api/runs", params={"cursor": forged}), 400, f"cursor {forged!r}")
    when = "2024-01-01T00:00:00+00:00\x00"
    _error(api.get("/api/runs", params={"created_after": when}), 400, "created_after")


def test_a_nul_in_a_json_bodys_names_and_ids_is_a_400_naming_it(api: TestClient[Any]) -> None:
    emitted = api.post("/api/events", json={"name": "nul.\x00"})
    _error(emitted, 400, r"event name 'nul.\x00' holds the control character '\x00'")
    keyed = api.post("/api/events", json={"name": "nul.go", "idempotency_key": "k\x00"})
    _error(keyed, 400, r"idempotency key 'k\x00'")
    started = api.post("/api/functions/nul-wait/runs", json={"run_id": "r\x00"})
    _error(started, 400, r"run id 'r\x00' holds the control character '\x00'")


def test_a_nul_in_data_and_free_text_is_kept_as_sent(api: TestClient[Any], engine: Engine) -> None:
    sent = {"name": "nul.go", "data": {"k\x00": "v\x00"}}
    emitted = api.post("/api/events", json=sent)
    assert emitted.status_code == 200, emitted.text
    (run_id,) = emitted.json()["run_ids"]
    engine.run_until_idle()
    assert api.get(f"/api/runs/{run_id}").json()["status"] == "waiting"
    fork = api.post(f"/api/runs/{run_id}/fork", json={"from_step": "got\x00"})
    _error(fork, 400, r"no step 'got\x00'")
    cancelled = api.post(f"/api/runs/{run_id}/cancel", json={"reason": "stop\x00now"})
    assert cancelled.status_code == 200, cancelled.text
    engine.run_until_idle()
    run = api.get(f"/api/runs/{run_id}").json()
    assert run["status"] == "cancelled"
    assert "stop\x00now" in run["error"]["message"]
    replied = api.post("/api/functions/nul-wait/runs", json={"data": "a\x00b"})
    assert replied.status_code == 200, replied.text
    started = api.get(f"/api/runs/{replied.json()['run_id']}/history").json()
    assert started[0]["event"]["data"] == "a\x00b"
