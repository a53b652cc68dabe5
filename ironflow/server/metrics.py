"""``GET /metrics``: Prometheus text, written by prometheus_client.

prometheus_client is the Prometheus project's own Python client (well kept, no dependencies):
it gets the exposition format's escaping, ``# HELP``/``# TYPE`` lines and content type right.
Each app has its own registry (no process-global state: two apps in one process, as in
tests, do not share counters). Run counts are read from the store at scrape time, so they
hold across every worker on the database, not just this process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ironflow.runtime.models import STATUSES

# Engine counters exported as ``ironflow_worker_<name>_total`` (this process's work).
WORKER_STATS = ("runs_started", "runs_ended", "runs_failed", "runs_blocked", "steps_executed")


class EngineCollector(Collector):
    """Runs by status (from the database) and this engine's work counters."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Any]:
        runs = GaugeMetricFamily(
            "ironflow_runs", "Runs in the database by status", labels=["status"]
        )
        for status in STATUSES:
            runs.add_metric([status], self.engine.store.count_runs(status, None))
        yield runs
        for name in WORKER_STATS:
            counter = CounterMetricFamily(
                f"ironflow_worker_{name}", f"{name.replace('_', ' ')} by this server's worker"
            )
            counter.add_metric([], self.engine.stats.get(name, 0))
            yield counter


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

    def observe(self, method: str, route: str, status: int, started: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(route).observe(time.perf_counter() - started)

    def text(self) -> bytes:
        return generate_latest(self.registry)
