"""``GET /metrics``: Prometheus text, written by prometheus_client.

prometheus_client is the Prometheus project's own Python client (well kept, no dependencies):
it gets the exposition format's escaping, ``# HELP``/``# TYPE`` lines and content type right.
Each app has its own registry for what is its own (two apps in one process, as in tests, do
not share HTTP counters): run counts read from the store at scrape time (so they hold across
every worker on the database, not just this process), its HTTP requests, and its engine's work
counters. The engine's OpenTelemetry metrics (``ironflow_runs_started``, ``_ended``,
``ironflow_steps_executed``, ``ironflow_step_duration``, ``ironflow_queue_lag``) are the
process's: the OpenTelemetry Prometheus exporter writes them into prometheus_client's global
registry (``ironflow.runtime.prometheus.install``, done by ``ironflow server APP``), and they
are passed through from there when present.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ironflow.runtime.telemetry import runs_by_status

# Engine counters exported as ``ironflow_worker_<name>_total`` (this process's work).
WORKER_STATS = ("runs_started", "runs_ended", "runs_failed", "runs_blocked", "steps_executed")


class EngineCollector(Collector):
    """Runs by function and status (from the database) and this engine's work counters."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        runs = GaugeMetricFamily(
            "ironflow_runs",
            "Runs in the database by function and status",
            labels=["function", "status"],
        )
        for function_id, status, count in runs_by_status(self.engine.store):
            runs.add_metric([function_id, status], count)
        yield runs
        for name in WORKER_STATS:
            counter = CounterMetricFamily(
                f"ironflow_worker_{name}", f"{name.replace('_', ' ')} by this server's worker"
            )
            counter.add_metric([], self.engine.stats.get(name, 0))
            yield counter


class OtelCollector(Collector):
    """The engine's OpenTelemetry metrics (``ironflow_*``) from prometheus_client's global
    registry, where the OpenTelemetry Prometheus exporter writes them; nothing if no exporter
    is installed. ``ironflow_runs`` is left out: this app writes its own, from its store."""

    OWN = frozenset({"ironflow_runs"})

    def describe(self) -> list[Metric]:
        return []  # registered without a collect (which would read the store)

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            if family.name.startswith("ironflow_") and family.name not in self.OWN:
                yield family


class Metrics:
    """The registry of one app: HTTP request counts and latencies, and the engine's numbers."""

    def __init__(self, engine: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "ironflow_http_requests",
            "HTTP requests answered, by method, route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ironflow_http_request_duration_seconds",
            "Time to answer an HTTP request, by route",
            ["route"],
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))
        self.registry.register(OtelCollector())

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)

    def text(self) -> bytes:
        return generate_latest(self.registry)
