"""The server's handlers use no style Litestar has deprecated (it removes them in 3.0).

Litestar warns when an app is built: a dependency, path or query parameter, or request body
not marked explicitly, or a deprecated OpenAPI setting. Building ours warns of none, and the
suite's pytest configuration turns such a warning into an error wherever a test builds an app.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

pytest.importorskip("litestar")

from litestar import Litestar, get
from litestar.exceptions import LitestarDeprecationWarning
from litestar.testing import TestClient

from ironflow import Engine
from ironflow.server import create_app


def test_building_the_app_warns_of_no_litestar_deprecation(engine: Engine) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app = create_app(engine, token="t0ken")
        with TestClient(app) as client:  # the app's startup, and a request to each kind
            headers = {"Authorization": "Bearer t0ken"}
            assert client.get("/api/runs", headers=headers).status_code == 200
            assert client.get("/api/openapi.json", headers=headers).status_code == 200
            assert client.get("/api/view/events", headers=headers).status_code == 200
    deprecations = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if issubclass(w.category, LitestarDeprecationWarning)
    ]
    assert deprecations == []


def test_the_suite_fails_a_test_that_triggers_a_litestar_deprecation() -> None:
    # The old inferred style of a path parameter, which Litestar deprecates: under the suite's
    # filterwarnings (pyproject.toml) building an app from it is an error, not a printed line.
    @get("/old/{name:str}", sync_to_thread=False)
    def old_style(name: str) -> dict[str, Any]:
        return {"name": name}

    with pytest.raises(LitestarDeprecationWarning, match="path parameter 'name'"):
        Litestar(route_handlers=[old_style])


def test_the_openapi_document_is_served_and_paths_below_it_are_json_404s(engine: Engine) -> None:
    with TestClient(create_app(engine)) as client:
        document = client.get("/api/openapi.json")
        assert document.status_code == 200
        assert document.headers["content-type"].startswith("application/json")
        assert "/api/runs/{run_id}" in document.json()["paths"]
        # Litestar's OpenAPI router answers paths below its own with an HTML page: not ours.
        for path in ("/api/openapi.json/nothing", "/api/openapi.json/x.yaml"):
            below = client.get(path)
            assert below.status_code == 404
            assert below.headers["content-type"].startswith("application/json")
            assert below.json()["error"]["type"] == "not_found"
