"""The server's ``GET /metrics`` (issues 14 and 15): the engine's OpenTelemetry metrics in
Prometheus text next to the server's own, with or without an OpenTelemetry SDK."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("litestar")
pytest.importorskip("opentelemetry.exporter.prometheus")

from litestar.testing import TestClient
from orders_kit import orders
from otel_kit import _reset
from prometheus_client.parser import text_string_to_metric_families

from ironflow import Engine
from ironflow.runtime import telemetry
from ironflow.server import create_app

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> tuple[Samples, list[str]]:
    """The samples (name, labels without the OpenTelemetry scope) -> value, and the names
    of the metric families in order (a family written twice would be invalid text)."""
    found: Samples = {}
    families = []
    for family in text_string_to_metric_families(text):
        families.append(family.name)
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope")}
            found[(sample.name, tuple(sorted(labels.items())))] = sample.value
    return found, families


@pytest.fixture
def prometheus_exporter() -> Iterator[None]:
    """What ``ironflow server APP`` sets up: the global meter provider feeding the
    Prometheus exporter (taken down after the test)."""
    from ironflow.runtime import prometheus

    _reset()
    prometheus._installed = False
    prometheus.install()
    try:
        yield
    finally:
        from opentelemetry.metrics import _internal

        provider = _internal._METER_PROVIDER
        _reset()
        telemetry.refresh()  # off again for the tests that follow
        prometheus._installed = False
        provider.shutdown()  # its reader leaves prometheus_client's registry


def test_metrics_of_a_server_with_an_app_after_a_known_workload(
    prometheus_exporter: None, engine: Engine
) -> None:
    engine.register(orders)
    with TestClient(create_app(engine)) as api:
        for n in (1, 2, 3, -1):
            answer = api.post("/api/functions/orders/runs", json={"data": {"n": n}})
            assert answer.status_code == 200, answer.text
        engine.run_until_idle()
        scraped = api.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"] == CONTENT_TYPE
    found, families = samples(scraped.text)
    assert len(families) == len(set(families)), families
    fn = ("function", "orders")
    assert found[("ironflow_runs_started_total", (fn,))] == 4
    assert found[("ironflow_runs_ended_total", (fn, ("status", "completed")))] == 3
    assert found[("ironflow_runs_ended_total", (fn, ("status", "failed")))] == 1
    done = ("ironflow_steps_executed_total", (fn, ("kind", "run"), ("outcome", "completed")))
    failed = ("ironflow_steps_executed_total", (fn, ("kind", "run"), ("outcome", "failed")))
    assert (found[done], found[failed]) == (7, 1)
    assert found[("ironflow_step_duration_seconds_count", (fn, ("kind", "run")))] == 8
    assert found[("ironflow_queue_lag_seconds_count", (fn,))] == 4
    # Runs by function and status, from the database (written once, by the server).
    assert found[("ironflow_runs", (fn, ("status", "completed")))] == 3
    assert found[("ironflow_runs", (fn, ("status", "failed")))] == 1
    assert found[("ironflow_runs", (fn, ("status", "running")))] == 0
    route = ("route", "/api/functions/{function_id}/runs")
    key = ("ironflow_http_requests_total", (("method", "POST"), route, ("status", "200")))
    assert found[key] == 4


def test_metrics_of_a_read_only_server_without_an_sdk(engine: Engine) -> None:
    """No meter provider (as without the SDK): 200, runs by function and status from the
    database, the server's own metrics, and no run or step counters."""
    assert telemetry.ON is False
    engine.register(orders)
    for n in (1, -1):
        engine.start("orders", {"n": n})
    engine.run_until_idle()
    with TestClient(create_app(engine)) as api:
        scraped = api.get("/metrics")
    assert scraped.status_code == 200
    assert scraped.headers["content-type"] == CONTENT_TYPE
    found, families = samples(scraped.text)
    fn = ("function", "orders")
    assert found[("ironflow_runs", (fn, ("status", "completed")))] == 1
    assert found[("ironflow_runs", (fn, ("status", "failed")))] == 1
    assert "ironflow_runs_started" not in families
    assert "ironflow_steps_executed" not in families
    assert found[("ironflow_worker_runs_ended_total", ())] == 2


def test_metrics_without_opentelemetry_installed(tmp_path: Any) -> None:
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if not installed: importing it fails
        import ironflow
        from ironflow import Engine, step
        from ironflow.server import create_app
        from ironflow.server.serve import install_metrics
        from litestar.testing import TestClient

        @ironflow.function(id="one")
        def one(ctx):
            return (yield step.run("a", lambda: 3))

        engine = Engine("x.db")
        engine.register(one)
        print(install_metrics())
        engine.wait(engine.start("one"))
        with TestClient(create_app(engine)) as api:
            scraped = api.get("/metrics")
        print(scraped.status_code, scraped.headers["content-type"])
        print(scraped.text)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    hint, status, text = done.stdout.split("\n", 2)
    assert hint.startswith("Prometheus metrics need the OpenTelemetry SDK")
    assert status == f"200 {CONTENT_TYPE}"
    found, families = samples(text)
    assert found[("ironflow_runs", (("function", "one"), ("status", "completed")))] == 1
    assert "ironflow_runs_started" not in families
