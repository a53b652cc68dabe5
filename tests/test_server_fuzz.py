"""Fuzzing the HTTP API against its own OpenAPI document with schemathesis (issue 14).

Every operation of ``/api/openapi.json`` gets generated requests, valid and invalid
(``max_examples`` each, bounded so the suite stays quick), on an engine with functions and
runs of every kind in it, once per store (SQLite, and PostgreSQL, whose text refuses what
SQLite takes, such as a NUL: ``test_server_nul`` checks those inputs by hand). No answer may
be a 5xx, every error is the JSON error shape, and every answer conforms to the document
(status codes, content types, bodies).
"""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("schemathesis")
pytest.importorskip("litestar")

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

import ironflow
from ironflow import Engine, step
from ironflow.server import create_app
from ironflow.testing import VirtualClock

# Not ``positive_data_acceptance``: the document cannot say every rule of the engine (an
# event name's characters, a run id's, which step ids a run has), so a request valid by the
# document may still be refused, with a 400 naming the value; that is what we want.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
MAX_EXAMPLES = 40  # per operation (15 operations: about 450 requests per store)


@ironflow.function(id="fuzz-ok", on="fuzz.*")
def fuzz_ok(ctx):
    yield step.run("one", lambda: 1)
    yield step.sleep("nap", "1h")
    return "done"


@ironflow.function(id="fuzz-bad")
def fuzz_bad(ctx):
    yield step.run("boom", _boom)


def _boom() -> None:
    raise ironflow.NonRetryableError("boom")


@pytest.fixture
def api_schema(store_url: str) -> Any:
    engine = Engine(store_url, clock=VirtualClock())
    engine.register(fuzz_ok)
    engine.register(fuzz_bad)
    engine.emit("fuzz.go", {"n": 1})
    engine.start("fuzz-bad", run_id="known-run")
    engine.run_until_idle()
    yield schemathesis.openapi.from_asgi("/api/openapi.json", create_app(engine))
    engine.close()


def test_the_api_never_answers_5xx_and_conforms_to_its_document(api_schema: Any) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 12  # every route of the contract is in the document
    answered: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            response = case.call()
            status = response.status_code
            answered[status] = answered.get(status, 0) + 1
            assert status < 500, (case.method, case.formatted_path, response.text)
            if status >= 400:
                body = response.json()
                assert set(body) == {"error"} and set(body["error"]) == {"type", "message"}
            case.validate_response(response, checks=CHECKS)

        check()
    total, by_status = sum(answered.values()), dict(sorted(answered.items()))
    print(f"fuzzed {len(operations)} operations: {total} requests, by status {by_status}")
    assert sum(answered.values()) >= len(operations) * 5  # the fuzzing really ran
    assert any(code < 300 for code in answered) and any(code >= 400 for code in answered)
