"""The web view's browser tests' kit: Debian's Chromium driven by Playwright for Python, and an
``ironflow server`` app served by uvicorn on a free loopback port in a thread.

Playwright never downloads a browser here: it launches ``/usr/bin/chromium`` (Debian's
``chromium`` package; ``.ci/run`` installs it when missing). Without it the browser tests are
skipped with one line in the summary, and under ``CI=true`` they fail instead.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
INSTALL_HINT = (
    "install Debian's chromium package (apt-get install chromium) and pip install playwright"
)
SERVER_START_S = 15.0
skipped = 0


def unavailable() -> str | None:
    """Why the browser tests cannot run here, or ``None`` if they can."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}"
    return None


def require_browser() -> None:
    """Skip (fail under CI=true) when Chromium or Playwright is missing."""
    why = unavailable()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests need Chromium under CI=true: {why}; {INSTALL_HINT}", False)
    global skipped
    skipped += 1
    pytest.skip(why)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium browser (Debian's, never one Playwright downloads)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        # --no-sandbox: the suite may run as root (CI containers), where Chromium's sandbox
        # refuses to start.
        browser = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def serving(engine: Any, token: str | None = None) -> Iterator[str]:
    """Serve ``engine``'s API and web view on a free 127.0.0.1 port; yield its base URL."""
    import uvicorn

    from ironflow.server.app import create_app

    app = create_app(engine, token)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    waited = threading.Event()
    for _ in range(int(SERVER_START_S / 0.02)):
        if server.started or not thread.is_alive():
            break
        waited.wait(0.02)
    if not server.started:
        raise AssertionError(f"the server did not start on port {port} in {SERVER_START_S}s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "the server thread did not stop within 10s"


@contextmanager
def working(engine: Any) -> Iterator[None]:
    """The engine as a worker in a thread, stopped (bounded) on exit."""
    thread = threading.Thread(target=lambda: engine.serve(install_signals=False), daemon=True)
    thread.start()
    try:
        yield
    finally:
        engine.stop()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the worker thread did not stop within 10s"


def pixel_colours(browser: Any, png: bytes) -> int:
    """How many distinct colours the PNG has, counted by the browser (no imaging library)."""
    page = browser.new_page()
    try:
        return int(
            page.evaluate(
                """async (url) => {
                    const image = new Image();
                    image.src = url;
                    await image.decode();
                    const canvas = document.createElement("canvas");
                    canvas.width = image.width;
                    canvas.height = image.height;
                    const context = canvas.getContext("2d");
                    context.drawImage(image, 0, 0);
                    const data = context.getImageData(0, 0, image.width, image.height).data;
                    const seen = new Set();
                    for (let i = 0; i < data.length; i += 4) {
                        seen.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
                    }
                    return seen.size;
                }""",
                "data:image/png;base64," + base64.b64encode(png).decode(),
            )
        )
    finally:
        page.close()
