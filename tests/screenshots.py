"""Write the web view's screenshots for the docs: ``python -m tests.screenshots [DIR]``.

Runs an order workflow whose charge step fails twice and then succeeds on a retry, and one
whose charge is declined for good, on a fresh database in a temp dir; serves them on a free
loopback port and saves ``web-runs.png`` (the runs list) and ``web-run.png`` (the failed run's
page, its charge step unfolded) into DIR (default ``docs/``), with Debian's Chromium.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import ironflow
from ironflow import Engine, NonRetryableError, RetryPolicy, step
from ironflow.testing import VirtualClock
from tests import browser_kit

tries: dict[str, int] = {}


def lookup(order: dict[str, Any]) -> dict[str, Any]:
    return {"order": order["id"], "total": 42, "card": order["card"]}


def reserve(item: str) -> str:
    return f"reserved {item}"


def charge(order: dict[str, Any]) -> dict[str, Any]:
    if order["card"] == "expired":
        raise NonRetryableError(f"card {order['card']} declined for order {order['order']}")
    tries[order["order"]] = tries.get(order["order"], 0) + 1
    if tries[order["order"]] < 3:
        raise ConnectionError("payment gateway timed out")
    return {"charged": order["total"]}


@ironflow.function(id="checkout", on="order.placed", retry=RetryPolicy(initial_delay="1s"))
def checkout(ctx: Any) -> Any:
    order = yield step.run("lookup", lookup, ctx.event.data)
    yield step.parallel(
        "reserve",
        [lambda s: s.run("book", reserve, "book"), lambda s: s.run("pen", reserve, "pen")],
    )
    yield step.sleep("cool-off", "2s")
    paid = yield step.run("charge", charge, order)
    return paid


def main(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    why = browser_kit.unavailable()
    if why is not None:
        raise SystemExit(f"cannot take screenshots: {why}; {browser_kit.INSTALL_HINT}")
    clock = VirtualClock()
    with tempfile.TemporaryDirectory() as tmp:
        engine = Engine(str(Path(tmp) / "shots.db"), clock=clock)
        engine.register(checkout)
        engine.emit("order.placed", {"id": "o-1", "card": "visa"})
        [failed] = engine.emit("order.placed", {"id": "o-2", "card": "expired"})
        for _ in range(8):
            engine.run_until_idle()
            clock.advance("1s")
        engine.run_until_idle()
        written = [out / "web-runs.png", out / "web-run.png"]
        try:
            with browser_kit.serving(engine) as url, browser_kit.chromium() as browser:
                page = browser.new_page(viewport={"width": 1200, "height": 760})
                page.goto(url + "/")
                page.wait_for_selector("#runs tr[data-run]")
                page.screenshot(path=str(written[0]))
                page.goto(f"{url}/runs/{failed}")
                page.locator('[data-step="charge"] .g-name').click()
                page.wait_for_selector(".g-detail")
                page.screenshot(path=str(written[1]), full_page=True)
        finally:
            engine.close()
    return written


if __name__ == "__main__":
    for path in main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs")):
        print(path)
