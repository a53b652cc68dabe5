"""The web view of runs: pages served at ``/``, a small script and stylesheet of our own
(package data: no build step, nothing fetched from outside this server), and the JSON reads
its pages need beyond the public API. See docs/server.md, "The web view".

``routes`` and ``PUBLIC`` are what ``ironflow.server.app`` mounts: the route handlers, and
the paths served without a token (the page shell and static files, which hold no data).
"""

from __future__ import annotations

from ironflow.server.web.routes import PUBLIC, ROUTES

routes = ROUTES

__all__ = ["PUBLIC", "routes"]
