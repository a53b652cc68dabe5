"""The engine's metrics in Prometheus text: for ``ironflow worker --metrics-port`` and the
server's ``/metrics``.

Built on ``opentelemetry-exporter-prometheus`` (``pip install "ironflow[prometheus]"``): the
metrics go through the OpenTelemetry metrics API like any other export, and the exporter's
reader hands them to ``prometheus_client``, the Prometheus project's own client, which writes
the text format and serves it. ``install`` sets that up once per process; ``render`` gives the
text (and its content type) for any HTTP server to answer with.
"""

from __future__ import annotations

import threading
from typing import Any

INSTALL_HINT = (
    'Prometheus metrics need the OpenTelemetry SDK and its Prometheus exporter: pip install "'
    'ironflow[prometheus]" (opentelemetry-sdk, opentelemetry-exporter-prometheus)'
)

_lock = threading.Lock()
_installed = False


def install() -> None:
    """Make the global meter provider feed ``prometheus_client`` (once per process).

    With no meter provider set, one is set with the exporter's reader. An application that
    set its own provider keeps it: give it a ``PrometheusMetricReader`` to see its metrics
    here. ``RuntimeError`` with the install command if the packages are missing."""
    global _installed
    with _lock:
        if _installed:
            return
        try:
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from opentelemetry.metrics import _internal, set_meter_provider
            from opentelemetry.sdk.metrics import MeterProvider
        except ImportError as exc:
            raise RuntimeError(f"{INSTALL_HINT} ({exc})") from None
        if getattr(_internal, "_METER_PROVIDER", None) is None:
            set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
        _installed = True


def render() -> tuple[bytes, str]:
    """The metrics in Prometheus text exposition format, and the content type to serve it
    with (call ``install`` first)."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def serve(port: int, host: str = "0.0.0.0") -> Any:
    """Serve ``render()`` at ``http://host:port/metrics`` on a daemon thread."""
    install()
    from prometheus_client import start_http_server

    return start_http_server(port, addr=host)
