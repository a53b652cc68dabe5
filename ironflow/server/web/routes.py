"""The web view's routes: its pages, its static files, and the JSON its pages read.

Every page is the same small HTML shell (``static/index.html``); its script (``app.js``)
reads the path, fetches JSON with the bearer token when the server has one, and puts every
value into the page as text. So the shell and its static files hold no data and need no
token (a browser cannot send a bearer header when it loads a page); every JSON route does.
A strict Content-Security-Policy (scripts and styles from this server only, no inline code)
is a second wall behind the escaping.

The JSON routes under ``/api/view/`` are the pages' own reads (the run page's steps with
attempts and tracebacks, recent events, live workers); everything else the pages use is the
public API of the contract. Run ids go in a query parameter: a child run's id holds ``/``.
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, QueryParameter

from ironflow.runtime import Engine
from ironflow.server.errors import ApiError, ErrorBody
from ironflow.server.web import views

# The files the shell loads; nothing else is served from the package (no path walking).
STATIC = {
    "app.js": "text/javascript",
    "app.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
# The page paths (the shell serves each; the script picks the page by its path).
PAGES = ["/", "/runs/{run_id:path}", "/functions", "/events"]


POSITION_MAX = 2**62  # an events position fits a BIGINT with room; past it, a 400 not a 500


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    """The error answers an operation documents (401 for all: a server may have a token)."""
    return {
        code: ResponseSpec(data_container=ErrorBody, description="error") for code in (*codes, 401)
    }


def _file(name: str) -> bytes:
    return resources.files("ironflow.server.web").joinpath("static", name).read_bytes()


@get(PAGES, include_in_schema=False, sync_to_thread=False)
def page() -> Response[bytes]:
    """The shell of every page (it holds no data: the token is not needed to load it)."""
    return Response(_file("index.html"), media_type="text/html", headers=HEADERS)


@get("/static/{name:str}", include_in_schema=False, sync_to_thread=False)
def static(name: FromPath[str]) -> Response[bytes]:
    media_type = STATIC.get(name)
    if media_type is None:
        raise ApiError(404, f"no static file {name!r}")
    return Response(_file(name), media_type=media_type, headers=HEADERS)


@get("/api/view/run", sync_to_thread=True, tags=["web view"], responses=_errors(400, 404))
def view_run(
    engine: NamedDependency[Engine],
    run_id: Annotated[str, QueryParameter(name="id", min_length=1)],
) -> dict[str, Any]:
    """The run page: the run, its trigger, its steps with attempts and tracebacks, its
    run-level markers and, when blocked, the recorded-vs-current diff."""
    try:
        return views.run_page(engine, run_id)
    except KeyError as exc:
        raise ApiError(404, str(exc.args[0])) from None


@get("/api/view/events", sync_to_thread=True, tags=["web view"], responses=_errors(400))
def view_events(
    engine: NamedDependency[Engine],
    limit: Annotated[int, QueryParameter(ge=1, le=views.EVENTS_MAX)] = views.EVENTS_SHOWN,
    before: Annotated[int | None, QueryParameter(ge=1, le=POSITION_MAX)] = None,
) -> dict[str, Any]:
    """Recent events, newest first, with the runs each one started or woke."""
    return views.events_page(engine, limit, before)


@get("/api/view/workers", sync_to_thread=True, tags=["web view"], responses=_errors())
def view_workers(engine: NamedDependency[Engine]) -> dict[str, Any]:
    """The workers alive now and the code version of each function they run."""
    return views.workers_page(engine)


ROUTES = [page, static, view_run, view_events, view_workers]
# Served without the token: the shell and its files hold no data (``app.py`` checks these
# paths exactly, and a trailing ``/`` as a prefix).
PUBLIC = ("/", "/functions", "/events", "/runs/", "/static/")
