"""Serving the app: uvicorn in a thread, the engine's worker (with an APP) in another, and
the main thread waiting for SIGTERM or Ctrl-C.

The main thread owns the signals (uvicorn, off the main thread, installs none; on it, uvicorn
would re-raise the signal once stopped and end the process before the worker let go of its
runs). On a signal, uvicorn stops taking connections and finishes the requests in flight,
the worker commits or releases what it holds, and only then does ``serve`` return.
"""

from __future__ import annotations

import ipaddress
import signal
import threading
from typing import Any

from ironflow.server.app import create_app

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only takes connections from this machine."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def install_metrics() -> str | None:
    """Have the engine's OpenTelemetry metrics written where ``/metrics`` reads them (for a
    server that is also a worker): None, or why not (the packages to install)."""
    from ironflow.runtime import prometheus

    try:
        prometheus.install()
    except RuntimeError as exc:
        return str(exc)
    return None


class ServeError(Exception):
    """The server could not start (the port is taken, the address is not this host's)."""


def serve(
    engine: Any,
    *,
    host: str,
    port: int,
    token: str | None,
    worker: bool,
    log_level: str = "info",
) -> None:
    """Serve ``engine`` until SIGTERM/SIGINT; with ``worker`` also drive its runs."""
    import uvicorn

    app = create_app(engine, token)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, lifespan="on", access_log=False
    )
    server = uvicorn.Server(config)
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()
        server.should_exit = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    http = threading.Thread(target=server.run, name="ironflow-http")
    work = None
    try:
        http.start()
        if worker:
            work = threading.Thread(
                target=engine.serve, kwargs={"install_signals": False}, name="ironflow-worker"
            )
            work.start()
        while http.is_alive():
            http.join(0.2)  # short waits: the main thread must stay free to take signals
        if not server.started and not stopping.is_set():
            raise ServeError(f"cannot listen on {host}:{port} (see the log line above)")
    finally:
        server.should_exit = True
        if work is not None:
            engine.stop()
            while work.is_alive():
                work.join(0.2)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
