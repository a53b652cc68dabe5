"""The HTTP server: a JSON API over an ``Engine`` and, when installed, the web view at ``/``.

Needs the ``server`` extra (``pip install "ironflow[server]"``: Litestar, uvicorn,
prometheus_client). Nothing in the core imports this package: it sits above the runtime.

``create_app(engine, token=None)`` returns the ASGI application; ``ironflow server`` serves
it with uvicorn. The web view lives in ``ironflow.server.web`` (if present): its ``routes``
list is mounted beside the API (see ``app.py``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ironflow.server.app import ServerApp


def create_app(engine: Any, token: str | None = None, **options: Any) -> ServerApp:
    """The ASGI application serving ``engine`` (see ``ironflow.server.app.create_app``)."""
    from ironflow.server.app import create_app as make

    return make(engine, token, **options)


__all__ = ["create_app"]
