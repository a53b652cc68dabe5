"""The ASGI application: the API's routes, the web view's, and what stands in front of both.

``ServerApp`` is a thin ASGI layer around the Litestar app. It checks the bearer token before
anything is routed, so that without the token every path but ``/healthz`` is a 401 (an unknown
route included: no probing for what exists), compares it in constant time
(``hmac.compare_digest``), and counts requests for ``/metrics``.

The token comes in ``Authorization: Bearer <token>``. For the web view, a ``GET`` may carry it
in the ``ironflow_token`` cookie instead (a page load or an ``EventSource`` cannot set the
header); a state-changing request (every one is a ``POST``) must use the header, which a
cross-site form cannot send: that is the CSRF protection.

The web view mounts itself: if the package ``ironflow.server.web`` exists, its ``routes`` list
(Litestar route handlers, routers or static-file routers) is served beside the API, and the
paths in its optional ``PUBLIC`` tuple (a login page, static assets holding no data) are
served without a token.
"""

from __future__ import annotations

import hmac
import importlib
import importlib.util
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from litestar import Litestar, MediaType, Response, Router, get
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin

from ironflow.server import api
from ironflow.server.errors import body, handlers
from ironflow.server.metrics import Metrics

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

MAX_BODY = 1024 * 1024  # bytes: a request body past this is a 413
TOKEN_COOKIE = "ironflow_token"
OPEN_PATHS = ("/healthz",)  # served without a token


class ServerApp:
    """The ASGI app ``ironflow server`` serves: token check, metrics, then Litestar."""

    def __init__(
        self, inner: Litestar, token: str | None, public: tuple[str, ...], metrics: Metrics
    ):
        self.litestar = inner
        self.token = None if token is None else token.encode()
        self.public = OPEN_PATHS + public
        self.metrics = metrics

    @property
    def state(self) -> Any:
        return self.litestar.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):  # lifespan
            await self.litestar(scope, receive, send)  # type: ignore[arg-type]
            return
        started = time.perf_counter()
        status = 500

        async def counted(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if self.token is not None and not self._allowed(scope):
                await _answer(
                    send, 401, "missing or wrong token: send Authorization: Bearer <token>"
                )
                status = 401
                return
            await self.litestar(scope, receive, counted)  # type: ignore[arg-type]
        finally:
            if scope["type"] == "http":
                # The route's template, not the path: run ids would make a series each.
                route = scope.get("path_template") or "unmatched"
                self.metrics.observe(scope.get("method", "?"), route, status, started)

    def _allowed(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        # A public path ending in "/" is a prefix, except "/" itself (the web view's runs
        # list): as a prefix it would open every path.
        if path in self.public or any(
            p != "/" and p.endswith("/") and path.startswith(p) for p in self.public
        ):
            return True
        assert self.token is not None
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        scheme, _, value = given.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(value.strip(), self.token):
            return True
        if scope.get("method") in ("GET", "HEAD"):
            cookie = _cookie(headers.get(b"cookie", b""), TOKEN_COOKIE)
            if cookie is not None and hmac.compare_digest(cookie, self.token):
                return True
        return False


def _cookie(header: bytes, name: str) -> bytes | None:
    for part in header.split(b";"):
        key, _, value = part.strip().partition(b"=")
        if key == name.encode():
            return value
    return None


async def _answer(send: Send, status: int, message: str) -> None:
    payload = json.dumps(body(status, message)).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="ironflow"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


# ``GET /api/openapi.json``: the document, made from the types, served by Litestar's JSON
# render plugin at its router's root. Its router lives at that path and nowhere else: at
# ``/api`` its catch-all (an HTML 404 page for ``/api/<anything>``) would shadow the JSON
# errors of unknown API routes; below it, that page is turned into the JSON error too.
OPENAPI_PATH = "/api/openapi.json"


def _json_not_found(response: Response[Any]) -> Response[Any]:
    if response.status_code != 404:
        return response
    message = "no such route; the API is under /api (see GET /api/openapi.json)"
    payload = json.dumps(body(404, message)).encode()
    return Response(payload, status_code=404, media_type=MediaType.JSON)


def _web() -> tuple[list[Any], tuple[str, ...]]:
    """The web view's routes and public paths, if the web view is installed."""
    if importlib.util.find_spec("ironflow.server.web") is None:
        return [], ()
    web = importlib.import_module("ironflow.server.web")
    return list(getattr(web, "routes", [])), tuple(getattr(web, "PUBLIC", ()))


def create_app(
    engine: Any,
    token: str | None = None,
    *,
    max_body: int = MAX_BODY,
    web: bool = True,
) -> ServerApp:
    """The ASGI app serving ``engine``'s API (and the web view when ``web`` and installed).

    ``token``: every request but ``/healthz`` must carry it (``None``: no check; only for a
    server on loopback). ``max_body``: the largest request body accepted, in bytes."""
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError(f"token must be a non-empty string or None, got {token!r}")
    metrics = Metrics(engine)

    @get("/metrics", sync_to_thread=True, media_type="text/plain")
    def metrics_route() -> Response[bytes]:
        """Prometheus metrics (text exposition format 0.0.4)."""
        return Response(metrics.text(), media_type="text/plain; version=0.0.4")

    web_routes, public = _web() if web else ([], ())
    inner = Litestar(
        route_handlers=[*api.ROUTES, metrics_route, *web_routes],
        dependencies={"engine": Provide(lambda: engine, use_cache=True, sync_to_thread=False)},
        exception_handlers=handlers(),
        openapi_config=OpenAPIConfig(
            title="ironflow",
            version="1",
            description="The HTTP API of an ironflow server (see docs/server.md).",
            openapi_router=Router(
                OPENAPI_PATH,
                route_handlers=[],
                include_in_schema=False,
                after_request=_json_not_found,
            ),
            render_plugins=[
                JsonRenderPlugin(path=["/", "/openapi.json"], media_type=MediaType.JSON)
            ],
        ),
        request_max_body_size=max_body,
        state=None,
        logging_config=None,
    )
    inner.state.engine = engine
    inner.state.token = token
    return ServerApp(inner, token, public, metrics)
