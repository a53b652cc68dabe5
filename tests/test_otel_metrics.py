"""Metrics through the OpenTelemetry API after a known workload (on both stores), their
Prometheus text, and the log records' run attributes."""

from __future__ import annotations

import json
import logging

import pytest

pytest.importorskip("opentelemetry.sdk")

from orders_kit import add, orders
from otel_kit import otel  # noqa: F401 - the fixture
from prometheus_client.parser import text_string_to_metric_families

import ironflow
from ironflow import step
from ironflow.cli.logjson import JsonLogFormatter


def test_metric_values_after_a_known_workload(otel, engine):  # noqa: F811
    engine.register(orders)
    for n in (1, 2, 3, -1):
        engine.start("orders", {"n": n})
    engine.run_until_idle()

    assert otel.points("ironflow_runs_started") == {(("function", "orders"),): 4}
    assert otel.points("ironflow_runs_ended") == {
        (("function", "orders"), ("status", "completed")): 3,
        (("function", "orders"), ("status", "failed")): 1,
    }
    assert otel.points("ironflow_steps_executed") == {
        (("function", "orders"), ("kind", "run"), ("outcome", "completed")): 7,
        (("function", "orders"), ("kind", "run"), ("outcome", "failed")): 1,
    }
    # A histogram's count per label set; never labelled by the step name.
    assert otel.points("ironflow_step_duration") == {(("function", "orders"), ("kind", "run")): 8}
    assert otel.points("ironflow_queue_lag") == {(("function", "orders"),): 4}
    runs = otel.points("ironflow_runs")
    assert runs[(("function", "orders"), ("status", "completed"))] == 3
    assert runs[(("function", "orders"), ("status", "failed"))] == 1
    assert runs[(("function", "orders"), ("status", "running"))] == 0


def test_prometheus_text_names_start_with_ironflow(engine):
    pytest.importorskip("opentelemetry.exporter.prometheus")
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from otel_kit import _reset

    from ironflow.runtime import prometheus, telemetry

    _reset()
    reader = PrometheusMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    from opentelemetry.metrics import set_meter_provider

    set_meter_provider(provider)
    try:
        engine.register(orders)
        engine.start("orders", {"n": 1})
        engine.run_until_idle()
        text, content_type = prometheus.render()
    finally:
        _reset()
        telemetry.refresh()
        provider.shutdown()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope")}
            samples[(sample.name, tuple(sorted(labels.items())))] = sample.value
    orders_ = ("function", "orders")
    assert samples[("ironflow_runs_started_total", (orders_,))] == 1
    assert samples[("ironflow_runs_ended_total", (orders_, ("status", "completed")))] == 1
    key = ("ironflow_steps_executed_total", (orders_, ("kind", "run"), ("outcome", "completed")))
    assert samples[key] == 2
    assert samples[("ironflow_step_duration_seconds_count", (orders_, ("kind", "run")))] == 2
    assert samples[("ironflow_runs", (orders_, ("status", "completed")))] == 1
    assert all(
        name.startswith(("ironflow_", "python_", "process_", "target_")) for name, _ in samples
    )


def test_json_log_lines_carry_the_run_and_the_active_span(otel, engine, caplog):  # noqa: F811
    @ironflow.function(id="logs")
    def logs(ctx):
        yield step.run("one", add, 1, 2)
        ctx.log.info("after one")
        return 3

    def in_step() -> int:
        logging.getLogger("app").info("inside the step")
        return 1

    @ironflow.function(id="steplog")
    def steplog(ctx):
        return (yield step.run("body", in_step))

    engine.register(logs)
    engine.register(steplog)
    formatter = JsonLogFormatter()
    lines: list[dict] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(json.loads(formatter.format(record)))

    handler = Capture()
    for name in ("ironflow.workflow", "app"):
        logging.getLogger(name).addHandler(handler)
        logging.getLogger(name).setLevel(logging.INFO)
    try:
        run_id = engine.start("logs")
        step_run = engine.start("steplog")
        engine.run_until_idle()
    finally:
        for name in ("ironflow.workflow", "app"):
            logging.getLogger(name).removeHandler(handler)
            logging.getLogger(name).setLevel(logging.NOTSET)
    by_message = {line["message"]: line for line in lines}
    ctx_line = by_message["after one"]
    assert (ctx_line["run_id"], ctx_line["function_id"], ctx_line["step_id"]) == (
        run_id,
        "logs",
        "one",
    )
    assert ctx_line["level"] == "INFO" and ctx_line["logger"] == "ironflow.workflow.logs"
    step_line = by_message["inside the step"]
    (span,) = otel.named("step steplog/body")
    assert step_line["trace_id"] == f"{span.context.trace_id:032x}"
    assert step_line["span_id"] == f"{span.context.span_id:016x}"
    assert step_run
