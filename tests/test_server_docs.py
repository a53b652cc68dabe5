"""docs/server.md's API reference is the API: its table names exactly the operations of the
OpenAPI document, and each documented body field is one the document declares."""

from __future__ import annotations

import re
from typing import Any

import pytest

pytest.importorskip("litestar")

from docs_runner import ROOT
from litestar.testing import TestClient

from ironflow import Engine
from ironflow.server import create_app

PAGE = ROOT / "docs" / "server.md"
ROW = re.compile(r"^\| `(GET|POST) (/[^`]*)` \|\s*([^|]*?)\s*\|", re.MULTILINE)
OPENAPI = ("GET", "/api/openapi.json")  # the document itself, not an operation in it


def _document() -> dict[str, Any]:
    engine = Engine(":memory:")
    try:
        with TestClient(create_app(engine)) as client:
            return dict(client.get("/api/openapi.json").json())
    finally:
        engine.close()


def test_the_api_reference_table_is_the_openapi_document() -> None:
    spec = _document()
    documented = {(method, path): body for method, path, body in ROW.findall(PAGE.read_text())}
    served = {
        (method.upper(), path)
        for path, item in spec["paths"].items()
        for method in item
        if method in ("get", "post")
    }
    assert set(documented) == served | {OPENAPI}
    del documented[OPENAPI]
    schemas = spec["components"]["schemas"]
    for (method, path), body in documented.items():
        fields = re.findall(r'"(\w+)"', body)
        operation = spec["paths"][path][method.lower()]
        if not fields:
            assert (
                method == "GET"
                or "requestBody" not in operation
                or not _properties(operation, schemas)
            ), (method, path)
            continue
        assert set(fields) == set(_properties(operation, schemas)), (method, path)


def _properties(operation: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    for option in schema.get("oneOf", [schema]):  # an optional body: the class or null
        if "$ref" in option:
            return dict(schemas[option["$ref"].rsplit("/", 1)[1]]["properties"])
    return {}
